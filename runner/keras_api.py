"""What `keras.layers`, `keras.optimizers` and `keras.losses` accept, without importing Keras.

Importing Keras imports TensorFlow (about 4 s), so configs are checked against an
index of the public classes' constructor signatures: `keras_api.json` ships with
the package for the Keras version it was generated from; any other installed
version gets its own index, generated once and cached under
`$XDG_CACHE_HOME/runner/`. Nothing here is a registry of our own: the index is
Keras' own names, read off Keras.

    python -m runner.keras_api   # regenerate keras_api.json for the installed Keras
"""

import functools
import inspect
import json
import os
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from omegaconf import OmegaConf

SHIPPED = Path(__file__).with_name("keras_api.json")

# Public classes a config may not name, and why (STYLE: no code in config).
EXCLUDED_LAYERS = {
    "Lambda": "it runs arbitrary Python code",
    "TFSMLayer": "it loads a SavedModel graph from a path",
    "TorchModuleWrapper": "it wraps a Python object",
    "JaxLayer": "it wraps a Python function",
    "FlaxLayer": "it wraps a Python object",
    "Layer": "it is the abstract base class",
    "Wrapper": "it is an abstract base class",
    "InputLayer": "model inputs come from `model.inputs` and the data set",
}
# The excluded layers that run code: refused by any path, a custom module that re-exports them included.
CODE_RUNNING = ("Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer")
EXCLUDED_OPTIMIZERS = {
    "Optimizer": "it is the abstract base class",
    "LossScaleOptimizer": "it wraps another optimizer object; use loop.precision",
    "MultiOptimizer": "it wraps optimizer objects",
    "OptimizerMap": "it wraps optimizer objects",
}
EXCLUDED_LOSSES = {"Loss": "it is the abstract base class"}
# The runner drives these itself, or they run code, reach the network or write outside the record.
EXCLUDED_CALLBACKS = {
    "Callback": "it is the abstract base class",
    "CallbackList": "the loops make it",
    "History": "every run has one",
    "ProgbarLogger": "loop.verbose controls it",
    "LambdaCallback": "it runs arbitrary Python code",
    "LearningRateScheduler": "it takes a Python function; use a schedule in optimizer.learning_rate",
    "RemoteMonitor": "it sends the logs over the network; MLflow records them",
    "BackupAndRestore": "every run checkpoints each epoch; resume=<run id> continues it",
    "OrbaxCheckpoint": "every run checkpoints each epoch",
    "TensorBoard": "MLflow records the metrics",
    "CSVLogger": "MLflow records the same metrics",
}
EXCLUDED = {"layers": EXCLUDED_LAYERS, "optimizers": EXCLUDED_OPTIMIZERS, "losses": EXCLUDED_LOSSES,
            "callbacks": EXCLUDED_CALLBACKS,
            "schedules": {"LearningRateSchedule": "it is the abstract base class"},
            "regularizers": {"Regularizer": "it is the abstract base class"},
            "initializers": {"Initializer": "it is the abstract base class"},
            "constraints": {"Constraint": "it is the abstract base class"}}
MODULES = {"schedules": "optimizers.schedules"}  # where a kind's classes live under `keras.`
# Layer arguments that take a Keras object of another kind, by their name's ending.
NESTED_KINDS = {"_regularizer": "regularizers", "_initializer": "initializers", "_constraint": "constraints"}


def _cache_path(keras_version):
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "runner" / f"keras-{keras_version}.json"


@functools.cache
def index():
    """The signature index for the installed Keras: {kind: {class name: entry}}."""
    keras_version = version("keras")
    for path in (SHIPPED, _cache_path(keras_version)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("keras") == keras_version:
            return data
    data = generate()
    try:
        cache = _cache_path(keras_version)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(data))
    except OSError:
        pass  # a read-only home only costs the next run the same 4 s
    return data


def _arguments(cls):
    """Keyword arguments `cls(...)` accepts: its own, then each base's while `**kwargs` passes them on."""
    args, required = {}, []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in args:
                if p.default is p.empty and klass is cls:
                    required.append(p.name)
                args[p.name] = p.default if _is_plain(p.default) else None
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return args, required


def _is_plain(value):
    return value is None or isinstance(value, (bool, int, float, str))


def _entry(cls):
    args, required = _arguments(cls)
    return {"args": args, "required": required}


def generate():
    """Read the index off the installed Keras (imports TensorFlow)."""
    import keras

    def public(module, base, excluded):
        return {
            name: getattr(module, name)
            for name in dir(module)
            if isinstance(getattr(module, name), type)
            and issubclass(getattr(module, name), base)
            and name not in excluded
        }

    merge_base = keras.layers.Add.__mro__[1]  # keras' Merge base class is not public
    layers = {}
    for name, cls in public(keras.layers, keras.layers.Layer, EXCLUDED_LAYERS).items():
        entry = _entry(cls)
        entry["args"].pop("input_shape", None)
        entry["args"].pop("input_dim", None)
        call = list(inspect.signature(cls.call).parameters.values())[1:]
        # Several inputs go to `call` as one list (Add, Concatenate, Attention)
        # or as positional arguments (MultiHeadAttention(query, value, key)).
        entry["list_input"] = bool(call) and call[0].name in ("inputs", "x")
        entry["merge"] = issubclass(cls, merge_base)
        layers[name] = entry
    optimizers = {
        name: _entry(cls)
        for name, cls in public(keras.optimizers, keras.optimizers.Optimizer, EXCLUDED_OPTIMIZERS).items()
    }
    losses = {
        name: _entry(cls) for name, cls in public(keras.losses, keras.losses.Loss, EXCLUDED_LOSSES).items()
    }
    bases = {
        "callbacks": (keras.callbacks, keras.callbacks.Callback),
        "schedules": (keras.optimizers.schedules, keras.optimizers.schedules.LearningRateSchedule),
        "regularizers": (keras.regularizers, keras.regularizers.Regularizer),
        "initializers": (keras.initializers, keras.initializers.Initializer),
        "constraints": (keras.constraints, keras.constraints.Constraint),
    }
    others = {
        kind: {name: _entry(cls) for name, cls in public(module, base, EXCLUDED[kind]).items() if name[0].isupper()}
        for kind, (module, base) in bases.items()
    }
    others["callbacks"]["EarlyStopping"]["args"]["min_delta"] = 0.0  # Keras' default is the int 0 for a float
    return {"keras": keras.__version__, "layers": layers, "optimizers": optimizers, "losses": losses, **others}


if __name__ == "__main__":
    SHIPPED.write_text(json.dumps(generate(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SHIPPED}")


def check(kind, class_name, kwargs, where):
    """Check `class_name(**kwargs)` against the index; return Keras' spelling of the class name.

    `kind` is a key of EXCLUDED ("layers", "optimizers", "callbacks", ...); `where` prefixes every message.
    """
    from runner.errors import ConfigError

    classes, module = index()[kind], MODULES.get(kind, kind)
    excluded = EXCLUDED[kind]
    if kind in ("layers", "callbacks", "schedules"):
        name = class_name if class_name in classes else None  # keras.layers names are case-sensitive
    else:  # keras.optimizers.get("adam") and keras.losses.get accept any case
        name = {n.lower(): n for n in classes}.get(str(class_name).lower())
    if name is None:
        if class_name in excluded:
            raise ConfigError(f"{where}: keras.{module}.{class_name} is not allowed here: {excluded[class_name]}.")
        hint = did_you_mean(str(class_name), classes)
        raise ConfigError(f"{where}: unknown type {class_name!r}: not a class in keras.{module}.{hint}")
    entry = classes[name]
    for arg in kwargs:
        if arg not in entry["args"]:
            hint = did_you_mean(arg, entry["args"])
            raise ConfigError(f"{where}: unknown argument {arg!r} for keras.{module}.{name}.{hint}")
    for arg, value in kwargs.items():
        default = entry["args"][arg]
        if kind not in ("layers", "optimizers", "losses") and type(default) is int and isinstance(value, float):
            default = float(default)  # MaxNorm(max_value=2), decay_rate=1: Keras' int defaults of real numbers
        expected = _expected_type(default, value)
        if expected:
            raise ConfigError(
                f"{where}: argument {arg!r} of keras.{module}.{name} expects {expected} "
                f"(its default is {entry['args'][arg]!r}), got {value!r} ({type(value).__name__})."
            )
    for arg in entry["required"]:
        if arg not in kwargs:
            raise ConfigError(f"{where}: missing required argument {arg!r} for keras.{module}.{name}.")
    if kind == "layers":
        for arg, value in kwargs.items():
            nested = next((k for end, k in NESTED_KINDS.items() if arg.endswith(end)), None)
            if nested and value is not None:
                check_object(nested, value, f"{where}.{arg}")
    return name


def check_object(kind, value, where):
    """A Keras object given by name (`he_normal`, `l2`) or as `{class_name: ..., **arguments}`."""
    from runner.errors import ConfigError

    if isinstance(value, Mapping):
        return class_args(kind, where, value)[0]
    classes = index()[kind]
    if not isinstance(value, str) or _plain_name(value) not in {_plain_name(c) for c in classes}:
        hint = did_you_mean(str(value), classes)
        raise ConfigError(
            f"{where}: unknown {kind[:-1]} {value!r}: name a class in keras.{kind} (or its snake_case name, "
            f"as `he_normal`), or write {{class_name: ..., **arguments}}.{hint}"
        )
    return value


def _plain_name(name):
    return name.replace("_", "").lower()


def _expected_type(default, value):
    """What `value` should be, judged by the type of the argument's default, or None when it fits.

    Lenient where Keras is: an int argument may take a tuple (strides: [2, 2]),
    and any argument may take a serialized Keras object ({class_name: ...}).
    """
    if value is None or default is None or isinstance(value, Mapping):
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(value, bool):
        return "a number" if isinstance(default, (int, float)) else "a string"
    if isinstance(default, int):
        ints = value if isinstance(value, (list, tuple)) else [value]
        return None if all(isinstance(v, int) for v in ints) else "an integer (or a list of integers)"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


def did_you_mean(word, choices):
    from difflib import get_close_matches

    close = get_close_matches(word, list(choices), n=1) or get_close_matches(
        word.lower(), [c.lower() for c in choices], n=1
    )
    if not close:
        return ""
    match = next(c for c in choices if c.lower() == close[0].lower())
    return f" Did you mean {match!r}?"


def class_args(kind, key, section):
    """(Keras class name, its keyword arguments) of a `{class_name: ..., **arguments}` section, checked."""
    section = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else dict(section)
    if "class_name" not in section:
        from runner.errors import ConfigError

        raise ConfigError(f"{key}.class_name: missing; name a class in keras.{MODULES.get(kind, kind)}.")
    name = section.pop("class_name")
    return check(kind, name, section, key), section
