"""Compiled functions traced once for every batch size.

A plain ``tf.function`` traces again for each new input shape, and a data pipeline's last batch
is almost always smaller than the others: one more trace of the whole network per phase (about
7.5 s for ResNet50's training step at 64 px on 2 cores, as long as twenty steps), in every
training, evaluation and feature extraction. ``one_trace`` fixes the signature at the first call
with the batch dimension left open, so each function traces once.
"""

from __future__ import annotations

from typing import Any, Callable


def one_trace(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as a ``tf.function`` whose input signature is taken from its first call (tensors or
    arrays, positional only) with the leading (batch) dimension open: one trace for every batch
    size. Later calls must keep the other dimensions and the dtypes."""
    import tensorflow as tf

    compiled: Any = None

    def call(*args: Any) -> Any:
        nonlocal compiled
        if compiled is None:
            signature = [tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype)) for a in args]
            compiled = tf.function(fn, input_signature=signature)
        return compiled(*args)

    return call
