"""The evaluation forward pass over a split's input pipeline, on TensorFlow or an engine."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from busi.model.predictor import forward_batches
from busi.model.tracing import one_trace


def predict_probs(model: Any, pipeline: Any, batch_size: int, engine: Any = None) -> np.ndarray:
    """The evaluation forward pass: class probabilities for every image of a pipeline
    (``busi.data.pipeline.Pipeline``), in its file order; by ``engine`` (``busi.model.engines``)
    where given, else by the Keras ``model`` on TensorFlow."""
    run = engine.run if engine is not None else _keras_forward(model)
    out = [p for _, p in forward_batches(run, pipeline.eval_dataset(batch_size), lambda b: b[0].numpy())
           if p is not None]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def _keras_forward(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``model``'s inference-mode forward pass on TensorFlow, traced once for every batch size."""

    @one_trace
    def forward(x: Any) -> Any:
        return model(x, training=False)

    return lambda x: forward(x).numpy()
