"""The hand-written training step (loop=custom). Edit here to change what one step does.

A second loss, gradient clipping, a GAN's two optimizers: they all go in
`train_step`. The loop that drives epochs, metrics, callbacks and MLflow is
`runner.loops.custom`, and does not need to change.
"""

import keras
import tensorflow as tf


def make_steps(model, loss_fn, optimizer, metrics):
    """The (train_step, test_step) pair for one model; `metrics` are updated in place.

    `metrics["loss"]` is a keras.metrics.Mean, the others are called as
    `metric.update_state(y, y_pred)`.
    """
    loss_metric, *others = metrics.values()

    def train_step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = loss_fn(y, y_pred) + _regularization(model)
            scaled = optimizer.scale_loss(loss)  # mixed precision: no underflowing float16 gradients
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        _update(loss_metric, others, loss, y, y_pred)
        return loss

    def test_step(x, y):
        y_pred = model(x, training=False)
        loss = loss_fn(y, y_pred) + _regularization(model)
        _update(loss_metric, others, loss, y, y_pred)
        return loss

    return train_step, test_step


def _regularization(model):
    # The penalties of kernel_regularizer and friends, as model.fit adds them.
    return tf.add_n(model.losses) if model.losses else 0.0


def _update(loss_metric, others, loss, y, y_pred):
    loss_metric.update_state(loss, sample_weight=tf.shape(y)[0])  # weighted by batch size, as fit does
    for metric in others:
        metric.update_state(y, y_pred)


def metrics():
    """Fresh metric objects named as model.fit names them."""
    return {"loss": keras.metrics.Mean(name="loss"), "accuracy": keras.metrics.SparseCategoricalAccuracy(name="accuracy")}
