"""The model: the network (``network``: ResNet50, preprocessing inside, the head), its weights
(``weights``), the feature cache of frozen layers (``features``), inference engines
(``engines``: TensorFlow or OpenVINO; ``openvino``: conversion, telemetry off), the model folder
(``folder``: its one writer and reader), loading a model to predict (``predictor``), Grad-CAM
(``gradcam``) and ``busi-job export``. Uses TensorFlow, imported inside functions: importing
the package does not import it."""
