"""What busi writes and how: atomic writes and the one temp-name convention (``atomic``),
the text and CSV rules (``text``), the run directory's layout and its only writer (``rundir``),
its manifest (``manifest``), the cross-validation folder's layout (``cvdir``) and file
hashes (``digest``). Never imports TensorFlow."""
