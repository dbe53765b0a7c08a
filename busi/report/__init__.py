"""Reports for people: report.html (``html``), the model card (``modelcard``), terminal text
(``text``) and number formatting (``format``). Never imports TensorFlow."""
