"""The hand-written training step (loop=custom). Edit here to change what one step does.

A second loss, gradient clipping, a GAN's two optimizers: they all go in
`train_step`. The loop that drives epochs, metrics, callbacks and MLflow is
`runner.loops.custom`, and does not need to change.
"""

import keras
import tensorflow as tf


def make_steps(model, loss_fn, optimizer, metrics, class_weight=None):
    """The (train_step, test_step) pair for one model; `metrics` are updated in place.

    With `class_weight` ({label: weight}), training examples are weighted by
    their class in the loss (not in the accuracy), as model.fit(class_weight=...) does.

    `metrics["loss"]` is a keras.metrics.Mean, the others are called as
    `metric.update_state(y, y_pred)`. Each step sees one replica's batch: the
    driver runs it with `strategy.run` (one replica without a strategy).
    """
    loss_metric, *others = metrics.values()
    table = tf.constant([class_weight[c] for c in sorted(class_weight)], tf.float32) if class_weight else None

    def train_step(x, y):
        weights = tf.gather(table, tf.cast(y, tf.int32)) if table is not None else None
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = _loss(model, loss_fn, y, y_pred, weights)
            scaled = optimizer.scale_loss(loss)  # mixed precision: no underflowing float16 gradients
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        _update(loss_metric, others, loss, y, y_pred)
        return loss

    def test_step(x, y):
        y_pred = model(x, training=False)
        loss = _loss(model, loss_fn, y, y_pred)
        _update(loss_metric, others, loss, y, y_pred)
        return loss

    return train_step, test_step


def _loss(model, loss_fn, y, y_pred, sample_weight=None):
    """This replica's share of the loss. Under a tf.distribute strategy the replicas' gradients
    are summed, so Keras' losses already divide by the number of replicas; the penalties of
    kernel_regularizer and friends (which model.fit adds too) are divided the same way."""
    penalties = tf.add_n(model.losses) if model.losses else 0.0
    return loss_fn(y, y_pred, sample_weight=sample_weight) + penalties / _replicas()


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _update(loss_metric, others, loss, y, y_pred):
    # The whole loss, weighted by batch size, as fit reports it.
    loss_metric.update_state(loss * _replicas(), sample_weight=tf.shape(y)[0])
    for metric in others:
        metric.update_state(y, y_pred)  # compile(metrics=...) are unweighted; only weighted_metrics see weights


def metrics():
    """Fresh metric objects named as model.fit names them."""
    return {"loss": keras.metrics.Mean(name="loss"), "accuracy": keras.metrics.SparseCategoricalAccuracy(name="accuracy")}
