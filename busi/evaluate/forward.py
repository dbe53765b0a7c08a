"""The evaluation forward pass over a split's input pipeline, on TensorFlow or an engine."""

from __future__ import annotations

from typing import Any

import numpy as np

from busi.model.tracing import one_trace


def predict_probs(model: Any, pipeline: Any, batch_size: int, engine: Any = None) -> np.ndarray:
    """The evaluation forward pass: class probabilities for every image of a pipeline
    (``busi.data.pipeline.Pipeline``), in its file order; by ``engine`` (``busi.model.engines``)
    where given, else by the Keras ``model`` on TensorFlow."""
    if engine is not None:
        out = [engine.run(x.numpy()) for x, _ in pipeline.eval_dataset(batch_size)]
        return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)

    @one_trace
    def forward(x: Any) -> Any:
        return model(x, training=False)

    out = [forward(x).numpy() for x, _ in pipeline.eval_dataset(batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)
