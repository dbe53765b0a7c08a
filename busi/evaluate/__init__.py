"""What a model is worth: metrics (``metrics``), bootstrap intervals (``bootstrap``),
calibration (``calibration``), malignant vs the rest (``screening``), Grad-CAM against the
lesion masks (``explain``), plots (``plots``), the one evaluation writer (``writer``), overlap
with training images (``leakage``), external evaluation (``external``, ``busi-job evaluate``)
and cross-validation reports (``crossval``)."""
