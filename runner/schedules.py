"""Learning-rate schedules: `optimizer.learning_rate` as a number or a `keras.optimizers.schedules` spec.

    learning_rate: {class_name: CosineDecay, initial_learning_rate: 0.0, warmup_target: 3e-3,
                    warmup_steps: 10%, decay_steps: auto}

A step count may be `auto` (the run's training steps left after any
warm-up) or a percentage of the run's training steps (`10%`): the number of
steps is known only once the data set is loaded.
"""

from collections.abc import Mapping

from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.keras_api import class_args

STEP_ARGS = ("decay_steps", "first_decay_steps", "warmup_steps")


def spec(optimizer_cfg):
    """The schedule section of an optimizer config as a plain dict, or None for a constant rate."""
    rate = OmegaConf.select(optimizer_cfg, "learning_rate") if OmegaConf.is_config(optimizer_cfg) else optimizer_cfg.get("learning_rate")
    if OmegaConf.is_config(rate):
        rate = OmegaConf.to_container(rate, resolve=True)
    return dict(rate) if isinstance(rate, Mapping) else None


def validate(optimizer_cfg):
    """Check the schedule (if any) against keras.optimizers.schedules; return its class name or None."""
    section = spec(optimizer_cfg)
    if section is None:
        return None
    where = "optimizer.learning_rate"
    for arg in STEP_ARGS:
        if arg in section:
            _steps(section[arg], 1000, 0, f"{where}.{arg}", allow_auto=arg != "warmup_steps")
            section[arg] = 1  # a placeholder of the right type for the signature check
    return class_args("schedules", where, section)[0]


def build(section, total_steps):
    """The Keras schedule object for `section`, its step counts resolved against `total_steps`."""
    import keras

    kwargs = dict(section)
    warmup = _steps(kwargs.get("warmup_steps", 0), total_steps, 0, "optimizer.learning_rate.warmup_steps")
    if "warmup_steps" in kwargs:
        kwargs["warmup_steps"] = warmup
    for arg in ("decay_steps", "first_decay_steps"):
        if arg in kwargs:
            kwargs[arg] = _steps(kwargs[arg], total_steps, warmup, f"optimizer.learning_rate.{arg}")
    name, kwargs = class_args("schedules", "optimizer.learning_rate", kwargs)
    return getattr(keras.optimizers.schedules, name)(**kwargs)


def _steps(value, total, warmup, where, allow_auto=True):
    if value == "auto" and allow_auto:
        return max(1, total - warmup)
    if isinstance(value, str) and value.endswith("%"):
        try:
            return max(1, round(total * float(value[:-1]) / 100))
        except ValueError:
            pass
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    choices = "an integer, `auto` (the run's training steps after warm-up) or a percentage such as `10%`"
    raise ConfigError(f"{where}: expected {choices if allow_auto else 'an integer or a percentage such as `10%`'}, "
                      f"got {value!r}.")
