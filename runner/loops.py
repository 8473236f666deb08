"""The training stage: compile, train with the configured loop, evaluate on the test split.

`fit` and `custom` are two drivers of one contract: the same Keras callbacks,
the metric names `loss`, `accuracy`, `val_loss`, `val_accuracy` per epoch, and
`test_loss`, `test_accuracy` at the end.
"""

import itertools
import math

import keras
import tensorflow as tf

from runner import schedules, step
from runner.data import augment
from runner.keras_api import class_args
from runner.errors import TrainingDiverged


def compile_model(model, optimizer_cfg, loss_cfg, jit_compile, total_steps=None, accumulate_steps=1):
    """Compile with the configured optimizer and loss (both through Keras' own deserialisation); a
    learning-rate schedule's `auto` steps resolve to `total_steps` (1 when unknown: a preflight build).
    `accumulate_steps` > 1 is loop=fit's gradient accumulation, the optimizer's own."""
    optimizer, optimizer_kwargs = class_args("optimizers", "optimizer", optimizer_cfg)
    if accumulate_steps > 1:
        optimizer_kwargs["gradient_accumulation_steps"] = accumulate_steps
    schedule = schedules.spec(optimizer_kwargs)
    if schedule is not None:
        optimizer_kwargs["learning_rate"] = schedules.build(schedule, total_steps or 1)
    loss, loss_kwargs = class_args("losses", "model.loss", loss_cfg)
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer, "config": optimizer_kwargs}),
        loss=keras.losses.get({"class_name": loss, "config": loss_kwargs}),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def train(model, train, val_ds, test_ds, cfg, callbacks, initial_epoch=0, class_weight=None):
    """Train with `cfg.name`'s loop from `initial_epoch`; return {"test_loss": ..., "test_accuracy": ...}.

    `train` is (dataset, steps per epoch) from `data.train_pipeline`: the
    batches of every remaining epoch in one dataset.
    """
    loop = fit if cfg.name == "fit" else custom
    return loop(model, train, val_ds, test_ds, cfg, callbacks, initial_epoch, class_weight)


def fit(model, train, val_ds, test_ds, cfg, callbacks, initial_epoch=0, class_weight=None):
    """`model.fit`, then `model.evaluate` on the test split."""
    train_ds, steps = train
    if cfg.accumulate_steps > 1 and model.distribute_strategy.num_replicas_in_sync == 1:
        callbacks = [FlushAccumulation(), *callbacks]  # replicas' accumulators: left to Keras (work.build_model)
    built(model, train_ds.element_spec)
    if initial_epoch < cfg.epochs:
        model.fit(
            train_ds,
            steps_per_epoch=steps,
            validation_data=val_ds,
            epochs=cfg.epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=cfg.verbose,
            class_weight=class_weight,
            shuffle=False,  # the pipeline shuffles
        )
    results = model.evaluate(test_ds, return_dict=True, verbose=0)
    return {f"test_{name}": float(value) for name, value in results.items()}


def built(model, element_spec):
    """Build the model's optimizer, loss and metric state before `fit` traces its train step. Without a
    distribution strategy Keras defers that to the first trace, which then creates variables, and
    TensorFlow traces a function that creates variables twice (measured: two traces of train_step,
    0.35 s each on seed_cnn); under a strategy Keras does this itself. Keras' own `_symbolic_build`
    (keras<4), given the batch's spec; where it is missing or fails, fit builds as before."""
    if getattr(model, "_distribute_strategy", None) is not None:  # Keras builds under its strategy itself
        return
    try:
        model._symbolic_build(data_batch=element_spec)
    except Exception:  # noqa: BLE001  (an odd input structure: Keras builds it in the trace)
        pass


def custom(model, train, val_ds, test_ds, cfg, callbacks, initial_epoch=0, class_weight=None):
    """Epochs of `runner.step`'s train_step (compiled with tf.function unless loop.eager), with
    Keras callbacks and a progress bar as `fit` drives them."""
    strategy = model.distribute_strategy  # the one the model was built under (default: one device)
    with strategy.scope():  # variables made inside a replica's step would not be mirrored
        metrics = step.metrics(one_hot=augment.expects_one_hot(model.loss))
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        # A user step may add its own metrics (keras.metrics.Mean...) to `metrics`: logged for training only.
        steps_fns = step.make_steps(model, model.loss, model.optimizer, metrics, class_weight, cfg)
    base = {name: metrics[name] for name in step.BASE}
    pending = getattr(steps_fns[0], "flush", None)  # loop.accumulate_steps: the epoch's last, partial group
    train_step, test_step = (_on_replicas(strategy, f) for f in steps_fns)
    flush = pending and _on_replicas(strategy, lambda *_: pending())
    train_ds, steps = train
    train_ds, val_ds, test_ds = (strategy.experimental_distribute_dataset(d) for d in (train_ds, val_ds, test_ds))
    if not cfg.eager:
        jit = model.jit_compile  # compile() resolved "auto"
        train_step, test_step = (tf.function(f, jit_compile=jit, reduce_retracing=True) for f in (train_step, test_step))
        flush = flush and tf.function(flush)
        # Traced once each, for the datasets' element spec (its batch dimension unknown), as fit traces on its
        # iterator: traced on the first batch, a step traces again for the last, smaller one (0.25 s each here).
        if initial_epoch < cfg.epochs:  # a resumed run whose epochs are all done only tests
            train_step.get_concrete_function(*train_ds.element_spec)
        test_step.get_concrete_function(*val_ds.element_spec)
    verbose = 1 if cfg.verbose == "auto" else cfg.verbose
    batches = iter(train_ds)  # one iterator for all epochs, as fit with steps_per_epoch
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=cfg.epochs, steps=steps
    )
    model.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, cfg.epochs):
        callbacks.on_epoch_begin(epoch)
        logs = _run(train_step, batches, metrics, callbacks.on_train_batch_begin, callbacks.on_train_batch_end, model, steps)
        if flush is not None:
            flush(None, None)
        val = _run(test_step, val_ds, base)
        logs.update({f"val_{name}": value for name, value in val.items()})
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    return {f"test_{name}": value for name, value in _run(test_step, test_ds, base).items()}


class FlushAccumulation(keras.callbacks.Callback):
    """loop=fit with loop.accumulate_steps: Keras' optimizer accumulates across epoch ends, so an epoch
    whose batches are not a multiple of accumulate_steps would hand its last batches to the next epoch's
    first update (30 updates in 3 epochs of the digits where batch 128 makes 33). After an epoch's last
    batch, before validation, this applies the pending group's mean gradient as the optimizer's own
    update step does, and starts the next epoch on a fresh group. Keras weighs the group's batches
    equally (exact when the partial batch is alone in its group, as batch 128's last partial batch).
    Reads the optimizer's accumulators (Keras 3's BaseOptimizer internals; tests/test_step.py checks it)."""

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 != self.params.get("steps"):
            return
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        every = optimizer.gradient_accumulation_steps
        pending = int(optimizer._iterations.numpy()) % every  # batches since the last update (`iterations` counts updates)
        if not pending:
            return
        pairs = [(g / pending, v) for g, v in zip(optimizer._accumulated_gradients, optimizer._trainable_variables)
                 if g is not None]
        grads, variables = optimizer._clip_gradients([g for g, _ in pairs]), [v for _, v in pairs]
        optimizer._apply_weight_decay(variables)
        optimizer._backend_update_step(grads, variables, optimizer.learning_rate)
        optimizer._backend_reset_gradient_accumulators()
        for variable in variables:  # the rest of Keras' own update: constraints, the moving average
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable))
        if optimizer.use_ema:
            optimizer._update_model_variables_moving_average(optimizer._trainable_variables)
        optimizer._iterations.assign_add(every - pending)  # the next batch starts a group


def _on_replicas(strategy, step_fn):
    def run(x, y):
        return strategy.run(step_fn, args=(x, y))

    return run


def _run(step_fn, batches, metrics, on_batch_begin=None, on_batch_end=None, model=None, steps=None):
    """`step_fn` over `steps` batches (default: all); returns the metrics' results as floats."""
    for metric in metrics.values():
        metric.reset_state()
    for batch, (x, y) in zip(range(steps) if steps else itertools.count(), batches):
        if on_batch_begin:
            on_batch_begin(batch)
        step_fn(x, y)
        if on_batch_end:
            on_batch_end(batch, {name: m.result() for name, m in metrics.items()})
            if model.stop_training:
                break
    return {name: float(m.result()) for name, m in metrics.items()}


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, by raising TrainingDiverged.

    Keras' own TerminateOnNaN only sets `stop_training`, so the epoch's
    validation still runs and the run would end as if it had succeeded.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.last = epoch + 1, None

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise TrainingDiverged(self.epoch, batch + 1, self.last)
        self.last = loss
