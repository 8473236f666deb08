"""The training stage: compile, train with the configured loop, evaluate on the test split.

`fit` and `custom` are two drivers of one contract: the same Keras callbacks,
the metric names `loss`, `accuracy`, `val_loss`, `val_accuracy` per epoch, and
`test_loss`, `test_accuracy` at the end.
"""

import keras
import tensorflow as tf

from runner import step
from runner.config import class_args


def compile_model(model, optimizer_cfg, loss_cfg, jit_compile):
    """Compile with the configured optimizer and loss (both through Keras' own deserialisation)."""
    optimizer, optimizer_kwargs = class_args("optimizers", "optimizer", optimizer_cfg)
    loss, loss_kwargs = class_args("losses", "model.loss", loss_cfg)
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer, "config": optimizer_kwargs}),
        loss=keras.losses.get({"class_name": loss, "config": loss_kwargs}),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def train(model, train_ds, val_ds, test_ds, cfg, callbacks):
    """Train with `cfg.name`'s loop; return the test metrics {"test_loss": ..., "test_accuracy": ...}."""
    loop = fit if cfg.name == "fit" else custom
    return loop(model, train_ds, val_ds, test_ds, cfg, callbacks)


def fit(model, train_ds, val_ds, test_ds, cfg, callbacks):
    """`model.fit`, then `model.evaluate` on the test split."""
    model.fit(
        train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, verbose=cfg.verbose, shuffle=False
    )  # shuffle=False: the pipeline shuffles
    results = model.evaluate(test_ds, return_dict=True, verbose=0)
    return {f"test_{name}": float(value) for name, value in results.items()}


def custom(model, train_ds, val_ds, test_ds, cfg, callbacks):
    """Epochs of `runner.step`'s train_step (compiled with tf.function unless loop.eager), with
    Keras callbacks and a progress bar as `fit` drives them."""
    metrics = step.metrics()
    train_step, test_step = step.make_steps(model, model.loss, model.optimizer, metrics)
    if not cfg.eager:
        jit = model.jit_compile  # compile() resolved "auto"
        train_step, test_step = (tf.function(f, jit_compile=jit, reduce_retracing=True) for f in (train_step, test_step))
    verbose = 1 if cfg.verbose == "auto" else cfg.verbose
    steps = int(train_ds.cardinality())
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=cfg.epochs, steps=steps
    )
    model.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    for epoch in range(cfg.epochs):
        callbacks.on_epoch_begin(epoch)
        logs = _run(train_step, train_ds, metrics, callbacks.on_train_batch_begin, callbacks.on_train_batch_end, model)
        val = _run(test_step, val_ds, metrics)
        logs.update({f"val_{name}": value for name, value in val.items()})
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    return {f"test_{name}": value for name, value in _run(test_step, test_ds, metrics).items()}


def _run(step_fn, dataset, metrics, on_batch_begin=None, on_batch_end=None, model=None):
    """One pass of `step_fn` over `dataset`; returns the metrics' results as floats."""
    for metric in metrics.values():
        metric.reset_state()
    for batch, (x, y) in enumerate(dataset):
        if on_batch_begin:
            on_batch_begin(batch)
        step_fn(x, y)
        if on_batch_end:
            on_batch_end(batch, {name: m.result() for name, m in metrics.items()})
            if model.stop_training:
                break
    return {name: float(m.result()) for name, m in metrics.items()}
