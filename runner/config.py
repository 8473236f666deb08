"""The config schema (Hydra structured configs) and the checks that run before TensorFlow is imported.

The schema makes OmegaConf reject an unknown or mistyped key at compose time;
`validate` checks what a schema cannot: layer, optimizer and loss names and
arguments against Keras' own signatures, the layer graph, and value ranges.
"""

import hashlib
import posixpath
import re
import importlib.util
import uuid
import json
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import callbacks, class_weights, export, keras_api, schedules
from runner.sweep import objective, prune
from runner import data
from runner.data import augment, checks, digest
from runner.errors import ConfigError
from runner.graph import STYLES, Graph
from runner.keras_api import class_args

LOOPS = ("fit", "custom")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = (None, "mirrored", "multi_worker")
DATASETS = tuple(data.SOURCES)
CACHES = ("none", "memory", "disk")


@dataclass
class ModelConfig:
    layers: List[Any] = MISSING  # each: {type: <keras.layers class>, name?, inputs?, **its arguments}
    name: Optional[str] = None  # the Keras model's name (a Keras Applications export starts with it)
    description: Optional[str] = None  # one line on what the model is: joins the run's description
    inputs: Optional[List[Any]] = None  # [{name, shape}]; default: one input of dataset.input_shape
    outputs: Optional[Any] = None  # a layer name or a list; default: the last layer
    custom_layers: List[str] = field(default_factory=list)  # opt-in: modules whose layers `type: module.Class` names
    style: str = "functional"  # set by the model-style group
    loss: Dict[str, Any] = field(
        default_factory=lambda: {"class_name": "SparseCategoricalCrossentropy", "from_logits": False}
    )
    # > 0: one-hot labels and the loss's categorical twin, CategoricalCrossentropy(label_smoothing=...)
    label_smoothing: float = 0.0


@dataclass
class DatasetConfig:
    name: str = MISSING  # one of DATASETS
    path: Optional[str] = None  # a local .npz (x_train, y_train, x_test, y_test), a .csv, or a folder of class folders
    test_path: Optional[str] = None  # csv, image_folder: a test file or folder; null: dataset.test_split of path
    num_classes: Optional[int] = None  # null: from the data (labels, class folders, the label column)
    input_shape: Optional[List[int]] = None  # null: from the data; image_folder: the size images are resized to
    validation_split: float = 0.1  # of the training examples, after one fixed shuffle
    test_split: float = 0.2  # csv, image_folder without test_path: held out for testing, fixed shuffle
    limit: Optional[int] = None  # keep only N training examples (quick runs)
    seed: int = "${seed}"  # shuffling order
    scale: str = "auto"  # auto: uint8 / 255, other dtypes must say | "255": divide by 255 | none: as they are
    label: str = "label"  # csv: the column with the classes
    categorical: List[str] = field(default_factory=list)  # csv: columns of numbers that are categories
    cache: str = "none"  # image_folder: none (decode per batch) | memory | disk (~/.cache/runner)
    on_bad_file: str = "error"  # image_folder: a file that is not a readable image: error (named, exit 2) | skip
    tfds: Optional[str] = None  # tfds: a TensorFlow Datasets name ("mnist", "mnist:3.0.1"); path is its data_dir
    class_weight: Any = None  # `auto` (balanced from the training labels) or {label: weight}; runner/class_weights.py
    # Keras preprocessing layers on the training batches only, spelled like model layers:
    # [{type: RandomFlip, mode: horizontal}, {type: MixUp}]; runner/data/augment.py
    augment: List[Any] = field(default_factory=list)


@dataclass
class LoopConfig:
    name: str = "fit"  # fit: model.fit | custom: a tf.GradientTape step
    epochs: int = 5  # the tutorial's
    batch_size: int = 32  # the tutorial's, and Keras' default
    jit_compile: Any = "auto"  # Keras' "auto" is XLA off on CPU-only machines
    verbose: Any = "auto"  # Keras' progress output: "auto", 0, 1 or 2
    precision: str = "float32"  # or mixed_bfloat16 / mixed_float16 (Keras' mixed-precision policies)
    strategy: Optional[str] = None  # tf.distribute: null (one device), mirrored (this machine's GPUs), multi_worker
    deterministic: bool = False  # TF op determinism: bit-exact reruns on GPUs, at some speed
    eager: bool = False  # loop=custom: run the step eagerly (no tf.function), to step through it in a debugger
    log_every_n_steps: Optional[int] = None  # also log the batch loss to MLflow every N steps
    # loop=custom: your own training step, `module.function` (see runner/step.py for the contract), from a
    # module listed in step_modules: the same explicit opt-in as model.custom_layers
    step: Optional[str] = None
    step_modules: List[str] = field(default_factory=list)
    # apply the mean gradient of N batches (an N times larger batch): loop=custom in its own step,
    # loop=fit through the optimizer's gradient_accumulation_steps
    accumulate_steps: int = 1


@dataclass
class MlflowConfig:
    experiment_name: str = "runner"
    tracking_uri: Optional[str] = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<launch dir>/mlflow.db
    log_model: bool = True  # the trained model as an MLflow model (Keras flavour): loads with mlflow.pyfunc
    log_datasets: bool = True  # train / validation / test as MLflow datasets (name, source, digest, shapes)
    log_figures: bool = True  # learning curves, confusion matrix, misclassified images, per-class table
    log_environment: bool = True  # git commit / branch / diff, versions, devices, pip freeze
    system_metrics: bool = True  # MLflow's CPU / memory / GPU monitor, sampled every system_metrics_interval s
    system_metrics_interval: float = 1.0  # seconds: MLflow's default (10) leaves a short run without a point


@dataclass
class SweepConfig:
    # What "better" means (runner/sweep/objective.py): a metric every run logs and its direction, never a
    # test metric: val_accuracy (max), val_loss (min), params (min), or {val_accuracy: max, params: min}
    objective: Any = "val_accuracy"
    seeds: int = 1  # runs per point, seeds seed, seed+1, ...: the leaderboard ranks points by their mean
    points: Optional[str] = None  # a YAML list of points (override sets): run exactly those, not a grid
    max_failures: Optional[int] = None  # stop launching jobs once this many failed: the rest are NOT RUN
    max_params: Optional[int] = None  # the preflight refuses a point whose model has more parameters
    register: Optional[str] = None  # a registered model's name: the best job's model becomes its @champion
    register_if: Optional[float] = None  # only when the best point's objective reaches this (in its direction)
    preflight: bool = True  # validate every point and build its model before the first job trains
    skip_finished: bool = False  # skip points whose identical config already has a FINISHED run
    # One id per sweep, the same in every job (Hydra copies the resolver cache into each job's
    # config, as for ${now:}): jobs find their parent run by it, on any launcher and any store.
    id: str = "${runner_uid:}"
    # Stop a job whose validation metric is worse than its siblings' at the same epoch (runner/sweep/prune.py):
    prune: Optional[str] = None  # null | median | successive_halving
    prune_monitor: Optional[str] = None  # an epoch metric (a loss is minimised); null: the objective, else val_loss
    prune_warmup: int = 2  # epochs every job trains before the first decision (at the end of this epoch)
    prune_min_siblings: int = 2  # siblings that must have reached the epoch before any job is stopped there
    prune_eta: int = 3  # successive_halving: rungs at warmup * eta^k epochs keep the top 1/eta


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: Dict[str, Any] = field(default_factory=dict)  # {class_name: <keras.optimizers class>, **its arguments}
    # {any name: {class_name: <keras.callbacks class>, **its arguments}}: the callbacks group, any number of them
    callbacks: Dict[str, Any] = field(default_factory=dict)
    loop: LoopConfig = field(default_factory=LoopConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 42  # weights, dropout and shuffling: one seed, one result
    resume: Optional[str] = None  # an MLflow run id: continue it from its last checkpoint
    tags: List[str] = field(default_factory=list)  # your labels, as MLflow tags: tags=[baseline,ablation]
    note: Optional[str] = None  # one line of your own: the start of the run's description
    export: List[str] = field(default_factory=list)  # at the end: [tf_saved_model, onnx, litert], each checked against Keras


def load(path, **values):
    """A config saved as YAML (a run's config.yaml), typed by the schema again, with `values` set."""
    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path), values)


ConfigStore.instance().store(name="schema", node=Config)
OmegaConf.register_new_resolver("runner_uid", lambda: uuid.uuid4().hex[:12], use_cache=True, replace=True)
OmegaConf.register_new_resolver("runner_directions", objective.optuna_directions, replace=True)  # tune.yaml


def resolvable(cfg: DictConfig):
    """Every value resolves (interpolations, ${oc.env:...}, nothing missing), or one ConfigError naming the key."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        env = re.search(r"Environment variable '([^']+)' not found", str(error))
        if env:
            raise ConfigError(f"{key}: the environment variable {env[1]} is not set (${{oc.env:{env[1]}}}); set it, or "
                              f"give a default: ${{oc.env:{env[1]},<default>}}.") from error
        raise ConfigError(f"{key}: {str(error).splitlines()[0]}") from error


# What MLflow 3 accepts (mlflow.utils.validation), checked here before TensorFlow and MLflow are imported
MLFLOW_NAME = re.compile(r"^[/\w.\- :]*$")  # tag keys: alphanumerics, _ - . space : /
MLFLOW_KEY_LENGTH, MLFLOW_TAG_VALUE_LENGTH, MLFLOW_EXPERIMENT_NAME_LENGTH = 250, 8000, 500


def mlflow_limits(cfg):
    """The user's tags, note and experiment name are what MLflow will store: else one ConfigError now,
    not a FAILED run after TensorFlow loaded and the model built."""
    for tag in cfg.tags:
        tag = str(tag)
        problem = ("is empty" if not tag else f"is {len(tag)} characters, over MLflow's {MLFLOW_KEY_LENGTH}"
                   if len(tag) > MLFLOW_KEY_LENGTH else None if MLFLOW_NAME.match(tag) and _plain_path(tag)
                   else "has a character MLflow refuses in a tag name (it takes letters, digits, _ - . : / and spaces, "
                        "and no leading / or ..)")
        if problem:
            fixed = re.sub(r"[^/\w.\- :]", "-", tag).strip("/.")[:MLFLOW_KEY_LENGTH] or "tag"
            raise ConfigError(f"tags: {tag[:80]!r} {problem}; for example tags=[{fixed}].")
    if len(",".join(map(str, cfg.tags))) > MLFLOW_TAG_VALUE_LENGTH:
        raise ConfigError(f"tags: together over MLflow's {MLFLOW_TAG_VALUE_LENGTH} characters; use fewer or shorter tags.")
    if cfg.note is not None and len(str(cfg.note)) > MLFLOW_TAG_VALUE_LENGTH // 2:
        raise ConfigError(f"note: {len(str(cfg.note))} characters; keep it under {MLFLOW_TAG_VALUE_LENGTH // 2} (it "
                          "starts the run's description, an MLflow tag of at most 8000).")
    name = cfg.mlflow.experiment_name
    if not name or len(name) > MLFLOW_EXPERIMENT_NAME_LENGTH:
        raise ConfigError(f"mlflow.experiment_name: {'empty' if not name else f'{len(name)} characters'}; MLflow "
                          f"takes 1 to {MLFLOW_EXPERIMENT_NAME_LENGTH}.")


def _plain_path(name):
    norm = posixpath.normpath(name)
    return norm == name and norm != "." and not norm.startswith(("..", "/"))


def validate(cfg: DictConfig) -> Graph:
    """Check a composed config without TensorFlow; return its layer graph."""
    resolvable(cfg)
    mlflow_limits(cfg)
    _one_of("model.style", cfg.model.style, STYLES, "model-style")
    _one_of("loop.name", cfg.loop.name, LOOPS, "loop")
    _one_of("dataset.name", cfg.dataset.name, DATASETS, "dataset")
    _one_of("loop.precision", cfg.loop.precision, PRECISIONS, "loop.precision")
    _one_of("loop.strategy", cfg.loop.strategy, STRATEGIES, "loop.strategy")
    if cfg.loop.strategy == "multi_worker" and cfg.loop.name == "fit":
        raise ConfigError(  # Keras 3.15: "Attempt to convert a value (PerReplica...) to a Tensor" before step 1
            "loop.strategy: multi_worker does not work with loop=fit in this Keras; use loop=custom "
            "(the same callbacks, metrics and record)."
        )
    _one_of("dataset.cache", cfg.dataset.cache, CACHES, "dataset.cache")
    _one_of("dataset.on_bad_file", cfg.dataset.on_bad_file, ("error", "skip"), "dataset.on_bad_file")
    for key in ("loop.epochs", "loop.batch_size", "dataset.num_classes"):
        value = OmegaConf.select(cfg, key)
        if value < 1:
            raise ConfigError(f"{key}: must be a positive integer, got {value}.")
    if not 0 < cfg.dataset.validation_split < 1:
        raise ConfigError(f"dataset.validation_split: must be between 0 and 1, got {cfg.dataset.validation_split}.")
    if cfg.loop.log_every_n_steps is not None and cfg.loop.log_every_n_steps < 1:
        raise ConfigError(f"loop.log_every_n_steps: must be a positive integer or null, got {cfg.loop.log_every_n_steps}.")
    if cfg.dataset.limit is not None and cfg.dataset.limit < 2:
        raise ConfigError(f"dataset.limit: must be at least 2 (or null for all), got {cfg.dataset.limit}.")
    class_args("optimizers", "optimizer", cfg.optimizer)
    callbacks.validate(cfg.callbacks, schedules.validate(cfg.optimizer))
    class_weights.validate(cfg.dataset)
    objective.validate(cfg)
    export.validate(cfg.export)
    prune.validate(cfg)
    step_check(cfg.loop, cfg.optimizer)
    class_args("losses", "model.loss", cfg.model.loss)
    augment.validate(cfg)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    graph = Graph.parse(
        model["layers"], list(cfg.dataset.input_shape), model["inputs"], model["outputs"], model["custom_layers"]
    )
    checks.head(graph, cfg.model.loss, cfg.dataset.num_classes)
    if cfg.model.style == "sequential":
        problem = graph.sequential_error()
        if problem:
            raise ConfigError(problem)
    return graph


def step_check(loop, optimizer):
    """loop.step: only with loop=custom, the step's module opted in by name; loop.accumulate_steps: a
    positive count, not beside the user's step or the optimizer's own gradient_accumulation_steps."""
    if loop.accumulate_steps < 1:
        raise ConfigError(f"loop.accumulate_steps: must be a positive integer, got {loop.accumulate_steps}.")
    own = optimizer.get("gradient_accumulation_steps")
    if loop.accumulate_steps > 1 and own:
        raise ConfigError(
            f"loop.accumulate_steps: {loop.accumulate_steps}, and optimizer.gradient_accumulation_steps: {own} "
            "accumulates too (loop=fit would drop it, loop=custom would multiply the two). Keep "
            "loop.accumulate_steps (it works with both loops) and remove the optimizer's.")
    if loop.step is not None and loop.name != "custom":
        raise ConfigError("loop.step: sets the training step of loop=custom; add `loop=custom`.")
    if loop.step is None:
        return
    if loop.accumulate_steps > 1:
        raise ConfigError("loop.accumulate_steps: the runner's own step accumulates; with loop.step, your step "
                          "decides how it applies gradients. Use one of them.")
    module, _, function = loop.step.rpartition(".")
    if not module or not function:
        raise ConfigError(f"loop.step: expected `module.function`, got {loop.step!r}.")
    if module not in loop.step_modules:
        raise ConfigError(f"loop.step: {loop.step!r} runs your code from module {module!r}, so the loop must allow it "
                          f"by name: loop.step_modules=[{module}].")
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"loop.step: no module {module!r} on the Python path (sys.path); run from its folder or "
                          "install it.")


def _one_of(key, value, choices, group):
    if value not in choices:
        hint = keras_api.did_you_mean(str(value), [c for c in choices if c])
        raise ConfigError(f"{key}: unknown value {value!r}; choose one of {list(choices)} ({group}=...).{hint}")


def fingerprint(cfg, info=None, point=False):
    """A hash of what determines a run's result: the resolved config (less where it is logged and
    how it prints), the data's content (`info.digest`, the digest its check read; without `info`, the
    digest of dataset.path and test_path), the runner's version and the code of its custom layers."""
    if point:  # the sweep point: the same for all its seeds (and what follows the seed, ${seed})
        cfg = cfg.copy()
        cfg.seed = 0
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in ("mlflow", "sweep", "resume", "tags", "note", "export"):
        plain.pop(key, None)
    plain["loop"].pop("verbose", None)
    plain["dataset"].pop("on_bad_file", None)  # how bad files are met: the data's digest says what was read
    plain["model"].pop("description", None)
    plain["_runner"] = version("runner")
    plain["_data"] = info.digest if info is not None else digest.of(plain["dataset"]["path"], plain["dataset"]["test_path"])
    plain["_code"] = {m: digest.of(_module_file(m)) for m in plain["model"].get("custom_layers") or ()}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _module_file(module):
    """The source file of an importable module, found without importing it (its code would run)."""
    spec = importlib.util.find_spec(module)
    return spec.origin if spec and spec.origin and spec.origin.endswith(".py") else None
