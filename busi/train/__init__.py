"""Training: the job in named stages (``job``, ``busi-job train``), the loop (``loop``) and its
compiled steps (``steps``), checkpoints (``checkpoint``), the learning rate (``lr``), TensorBoard
logs (``tensorboard``) and cross-validation runs (``cv``)."""
