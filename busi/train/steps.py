"""busi's compiled steps: the optimizer, the training step (gradient tape, sample-weighted
sparse cross-entropy, loss scaling, gradients averaged across ranks) and the validation step,
shared by the training loop and ``busi-job bench``."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from busi.model.tracing import one_trace


def make_optimizer(learning_rate: float, variables: list[Any], ema: float | None = None) -> Any:
    """Adam at ``learning_rate`` (wrapped for loss scaling under ``mixed_float16``), its slots
    built for ``variables`` outside any ``tf.function`` (Keras 3 needs that before tracing).
    ``ema``: also keep an exponential moving average of ``variables`` with this decay (Keras'
    own ``use_ema``; the averages are optimizer variables, so checkpoints hold them)."""
    import keras

    optimizer: Any = keras.optimizers.Adam(learning_rate=learning_rate, use_ema=ema is not None,
                                           ema_momentum=0.99 if ema is None else ema)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer


def make_train_step(model: Any, optimizer: Any, forward: Callable[..., Any],
                    average_gradients: Callable[[Sequence[Any]], Sequence[Any]] | None = None) -> Callable[..., Any]:
    """busi's training step, a ``tf.function`` traced once for every batch size, ``step(x, y, w) -> (mean weighted loss, correct)``:
    ``forward(x, training=True)`` under a gradient tape, sample-weighted sparse cross-entropy,
    loss scaling where the optimizer does it, ``average_gradients`` across ranks (Horovod) when
    given, then one optimizer update of ``model.trainable_variables``."""
    import keras
    import tensorflow as tf

    @one_trace
    def step(x: Any, y: Any, w: Any) -> tuple[Any, Any]:
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            probs = forward(x, training=True)
            per_sample = keras.losses.sparse_categorical_crossentropy(y, probs)
            loss = tf.reduce_mean(per_sample * w)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        if average_gradients is not None:
            grads = average_gradients(grads)
        optimizer.apply(grads, variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), y), tf.float32))
        return loss, correct

    return step


def make_eval_step(forward: Callable[..., Any]) -> Callable[..., Any]:
    """busi's validation step, a ``tf.function`` traced once, ``evaluate(x, y) -> (summed loss, correct)``."""
    import keras
    import tensorflow as tf

    @one_trace
    def evaluate(x: Any, y: Any) -> tuple[Any, Any]:
        probs = forward(x, training=False)
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probs))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), y), tf.float32))
        return loss, correct

    return evaluate
