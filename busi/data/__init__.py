"""The data: sources staged safely (``staging``, ``archives``), scanned into samples (``scan``,
``names``) or read from a label table (``table``), decoded by one function (``images``; DICOM
files through ``dicom``), grouped by duplicates and patients (``dedupe``), split (``split``,
``folds``) and reported (``prepare``); what prediction reads (``inputs``); synthetic BUSI-like
data (``synth``); the tf.data pipeline (``pipeline``, the only module here that uses
TensorFlow, imported inside it). Importing the package never imports TensorFlow."""
