"""The `callbacks` group: Keras callbacks from YAML, checked before TensorFlow, their state kept across resume.

Each entry is `{class_name: <a class in keras.callbacks>, **its arguments}`
under a name of the user's choosing (`callbacks.early_stopping.patience=3`).
The checks here need no TensorFlow; building and the state helpers import it
only when called.
"""

from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.keras_api import class_args

# What every run logs per epoch, by the name a `monitor` uses (validation_split is always > 0).
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
# Keras state each callback keeps between epochs, saved in the checkpoint manifest.
STATE = {
    "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
    "ReduceLROnPlateau": ("wait", "cooldown_counter", "best"),
    "ModelCheckpoint": ("best", "best_epoch"),
}
BEST_WEIGHTS = "best.weights.h5"  # best_checkpoint's file, inside the run's checkpoint directory


def validate(callbacks, schedule):
    """Check every configured callback; `schedule` is the optimizer's schedule class, or None."""
    for name, spec in (OmegaConf.to_container(callbacks, resolve=True) or {}).items():
        where = f"callbacks.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected {{class_name: <a class in keras.callbacks>, ...}}, got {spec!r}.")
        if "filepath" in spec:
            raise ConfigError(f"{where}: remove `filepath`: the runner keeps the best weights in the run's own "
                              "checkpoint directory and logs them as the run's model.")
        if spec.get("class_name") == "ModelCheckpoint":
            spec["filepath"] = BEST_WEIGHTS
        cls, kwargs = class_args("callbacks", where, spec)
        if cls in STATE:
            _check_monitor(where, kwargs.get("monitor", "val_loss"), kwargs.get("mode", "auto"))
        if cls == "ModelCheckpoint" and not (kwargs.get("save_best_only") and kwargs.get("save_weights_only")):
            raise ConfigError(f"{where}: set save_best_only: true and save_weights_only: true; every epoch is "
                              "checkpointed already (resume=<run id>), this one keeps the best weights.")
        if cls == "ReduceLROnPlateau" and schedule:
            raise ConfigError(
                f"{where}: ReduceLROnPlateau cannot change a learning rate that optimizer.learning_rate's "
                f"{schedule} computes each step. Use one of them: a number as optimizer.learning_rate, "
                "or drop this callback."
            )


def _check_monitor(where, monitor, mode):
    if monitor not in EPOCH_METRICS:
        raise ConfigError(f"{where}.monitor: {monitor!r} is not a metric this run logs per epoch; "
                          f"choose one of {list(EPOCH_METRICS)}.")
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"{where}.mode: {mode!r}; choose auto, min or max.")
    fits = monitor_mode(monitor)
    if mode not in ("auto", fits):
        raise ConfigError(f"{where}.mode: {mode!r} would keep the worst {monitor}; a lower loss or a higher "
                          f"accuracy is better: use mode: {fits} (or auto).")


def monitor_mode(monitor):
    """min for a loss, max for an accuracy: what Keras' `mode: auto` picks for the metrics a run logs."""
    return "min" if monitor.endswith("loss") else "max"


def build(callbacks, directory):
    """The configured callbacks, in config order, as Keras objects; best_checkpoint writes into `directory`."""
    import keras

    made = {}
    for name, spec in (OmegaConf.to_container(callbacks, resolve=True) or {}).items():
        if spec.get("class_name") == "ModelCheckpoint":
            spec["filepath"] = str(directory / BEST_WEIGHTS)
        cls, kwargs = class_args("callbacks", f"callbacks.{name}", spec)
        if cls == "ModelCheckpoint":
            made[name] = _best_checkpoint()(**kwargs)
        else:
            made[name] = getattr(keras.callbacks, cls)(**kwargs)
    return made


def _best_checkpoint():
    import keras

    class BestCheckpoint(keras.callbacks.ModelCheckpoint):
        """ModelCheckpoint that remembers its best epoch and puts the best weights back at the end, so
        the test metrics and the logged model are those of the best epoch."""

        best_epoch = None

        def on_epoch_end(self, epoch, logs=None):
            before = self.best
            super().on_epoch_end(epoch, logs)
            if self.best != before:
                self.best_epoch = epoch

        def on_train_end(self, logs=None):
            if self.best_epoch is not None:
                self.model.load_weights(self.filepath)

    return BestCheckpoint


def state(made):
    """{name: {attribute: value}} of the callbacks' between-epoch state, JSON-ready."""
    return {name: {a: _plain(getattr(cb, a, None)) for a in STATE.get(_keras_class(cb), ())} for name, cb in made.items()}


def _keras_class(cb):
    return "ModelCheckpoint" if type(cb).__name__ == "BestCheckpoint" else type(cb).__name__


def _plain(value):
    if value is None or isinstance(value, (int, str)):
        return value
    return float(value)


def restorer(made, saved, best_weights):
    """A callback that, after the others reset themselves in on_train_begin, puts back their saved state
    (and EarlyStopping's best weights, from `best_weights`: {name: list of arrays})."""
    import keras

    class Restore(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            for name, values in (saved or {}).items():
                cb = made.get(name)
                for attribute, value in values.items():
                    if cb is not None:
                        setattr(cb, attribute, value)
                if name in best_weights and cb is not None:
                    cb.best_weights = best_weights[name]

    return Restore()


def outcome(made, epochs_done):
    """(metrics, description of the weights the test metrics come from) once training ended."""
    metrics, weights = {}, f"the last epoch ({epochs_done})"
    for name, cb in made.items():
        cls = _keras_class(cb)
        if cls == "EarlyStopping":
            metrics["stopped_epoch"] = cb.stopped_epoch + 1 if cb.stopped_epoch else 0  # 0: ran every epoch
            if cb.restore_best_weights and cb.best_weights is not None:
                metrics["restored_epoch"] = cb.best_epoch + 1
                weights = f"epoch {cb.best_epoch + 1}, the best {cb.monitor} ({name} restored them)"
        if cls == "ModelCheckpoint" and cb.best_epoch is not None:
            metrics["restored_epoch"] = cb.best_epoch + 1
            weights = f"epoch {cb.best_epoch + 1}, the best {cb.monitor} ({name} restored them)"
    return metrics, weights


def learning_rate_logger():
    """Adds `learning_rate` (the rate the epoch's last step used) and, when the model has penalties
    (kernel_regularizer...), `regularization_loss` to every epoch's logs, in both loops."""
    import keras

    class LearningRate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)
            if self.model.losses:
                logs["regularization_loss"] = float(sum(float(keras.ops.convert_to_numpy(p)) for p in self.model.losses))

    return LearningRate()


def schedule_driven(optimizer):
    import keras

    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # mixed_float16's LossScaleOptimizer
    return isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule)


def current_learning_rate(optimizer):
    import keras

    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    rate = optimizer._learning_rate
    if schedule_driven(optimizer):
        # The last batch's rate: a schedule is evaluated at the batch count (`_iterations`), which
        # `iterations` divides by the optimizer's gradient_accumulation_steps.
        rate = rate(keras.ops.maximum(getattr(optimizer, "_iterations", optimizer.iterations) - 1, 0))
    return float(keras.ops.convert_to_numpy(rate))
