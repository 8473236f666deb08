"""The training step of loop=custom, and how to bring your own.

A second loss, a GAN's two optimizers, gradient accumulation: they all go in
a training step. The loop that drives epochs, metrics, callbacks and MLflow is
`runner.loops.custom`, and does not change.

Your own step (`loop.step: my_steps.make_train_step`, `loop.step_modules: [my_steps]`)
is a function with this contract:

    def make_train_step(model, loss_fn, optimizer, metrics, loop_cfg):
        ...                        # make any tf.Variable here, not in the step
        def train_step(x, y):      # one replica's batch: float images, int labels
            ...                    # compute, apply gradients with optimizer.apply
            update_metrics(metrics, loss, y, y_pred)
            return loss            # a scalar tensor
        return train_step

`metrics` is {"loss": keras.metrics.Mean, "accuracy": ...}: update them as
`update_metrics` does and the epoch logs keep fit's names. To log a term of
your own (a second loss), add a metric to `metrics` in the factory
(`metrics["consistency"] = keras.metrics.Mean(name="consistency")`) and update
it in the step: it is averaged per epoch and logged beside `loss`, in the
epoch logs, the callbacks and MLflow (training only; validation and test keep
loss and accuracy). `y` is one-hot when the run mixes or smooths labels
(dataset.augment's MixUp/CutMix, model.label_smoothing). Include
`penalties(model)` in the loss to keep kernel_regularizer & co. The
validation and test steps stay the runner's. Examples: `examples/steps/`.
"""

import importlib
import inspect

import keras
import tensorflow as tf

from runner.errors import ConfigError

CONTRACT = ("model", "loss_fn", "optimizer", "metrics", "loop_cfg")
BASE = ("loss", "accuracy")  # the runner's metrics; a user step may add others


def user_train_step(loop_cfg):
    """The factory that loop.step names, imported (config.step_check allowed its module) and its signature checked."""
    module, _, name = loop_cfg.step.rpartition(".")
    factory = getattr(importlib.import_module(module), name, None)
    if not callable(factory):
        raise ConfigError(f"loop.step: module {module!r} has no function {name!r}.")
    params = tuple(inspect.signature(factory).parameters)
    if params != CONTRACT:
        raise ConfigError(f"loop.step: {loop_cfg.step}{inspect.signature(factory)} must take {CONTRACT} "
                          "(see runner/step.py) and return train_step(x, y).")
    return factory


def make_steps(model, loss_fn, optimizer, metrics, class_weight=None, loop_cfg=None):
    """The (train_step, test_step) pair for one model; `metrics` are updated in place.

    With `class_weight` ({label: weight}), training examples are weighted by
    their class in the loss (not in the accuracy), as model.fit(class_weight=...) does.

    `metrics["loss"]` is a keras.metrics.Mean, the others are called as
    `metric.update_state(y, y_pred)`. Each step sees one replica's batch: the
    driver runs it with `strategy.run` (one replica without a strategy).
    """
    loss_metric, *others = (metrics[name] for name in BASE)
    table = tf.constant([class_weight[c] for c in sorted(class_weight)], tf.float32) if class_weight else None

    def train_step(x, y):
        weights = _class_weights(table, y)
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

    if loop_cfg is not None and loop_cfg.step:
        train_step = user_train_step(loop_cfg)(model, loss_fn, optimizer, metrics, loop_cfg)
    elif loop_cfg is not None and loop_cfg.accumulate_steps > 1:
        train_step = accumulating_step(model, loss_fn, optimizer, metrics, loop_cfg.accumulate_steps, table)
    return train_step, test_step


def accumulating_step(model, loss_fn, optimizer, metrics, every, table=None):
    """Adds each batch's gradient weighted by its size, and applies their mean every `every` batches and
    at the end of each epoch (`train_step.flush`, which the loop calls): the gradient of one `every`
    times larger batch, the epoch's last, partial group as the last partial batch of the large batch
    size, in the memory of one small batch."""
    loss_metric, *others = (metrics[name] for name in BASE)
    variables = model.trainable_variables
    sums = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
    count = tf.Variable(0, dtype=tf.int64, trainable=False)
    examples = tf.Variable(0.0, dtype=tf.float32, trainable=False)

    def apply():
        optimizer.apply([t / tf.cast(examples, t.dtype) for t in sums], variables)
        for total in sums:
            total.assign(tf.zeros_like(total))
        examples.assign(0.0)
        count.assign(0)
        return tf.constant(True)

    def train_step(x, y):
        weights = _class_weights(table, y)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = _loss(model, loss_fn, y, y_pred, weights)
            scaled = optimizer.scale_loss(loss)
        size = tf.cast(tf.shape(y)[0], tf.float32)
        for total, gradient in zip(sums, tape.gradient(scaled, variables)):
            total.assign_add(gradient * tf.cast(size, gradient.dtype))
        examples.assign_add(size)
        count.assign_add(1)
        tf.cond(count % every == 0, apply, lambda: tf.constant(False))
        _update(loss_metric, others, loss, y, y_pred)
        return loss

    def flush():
        """The epoch's last group of fewer than `every` batches, applied."""
        return tf.cond(count > 0, apply, lambda: tf.constant(False))

    train_step.flush = flush
    return train_step


def penalties(model):
    """The model's regularisation losses (kernel_regularizer...), this replica's share."""
    return (tf.add_n(model.losses) if model.losses else 0.0) / _replicas()


def update_metrics(metrics, loss, y, y_pred):
    """Update the epoch metrics as fit does (the loss weighted by batch size, accuracy on y_pred)."""
    loss_metric, *others = (metrics[name] for name in BASE)
    _update(loss_metric, others, loss, y, y_pred)


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


def _class_weights(table, y):
    """Each example's class weight, from integer labels or (mixed, smoothed) one-hot ones by their top class."""
    if table is None:
        return None
    classes = tf.argmax(y, axis=-1) if y.shape.rank == 2 else y
    return tf.gather(table, tf.cast(classes, tf.int32))


def metrics(one_hot=False):
    """Fresh metric objects named as model.fit names them; `one_hot` for one-hot or soft labels."""
    accuracy = keras.metrics.CategoricalAccuracy if one_hot else keras.metrics.SparseCategoricalAccuracy
    return {"loss": keras.metrics.Mean(name="loss"), "accuracy": accuracy(name="accuracy")}
