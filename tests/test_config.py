"""Every option of every group composes and validates, before TensorFlow is imported."""

import subprocess
import sys
from pathlib import Path

import pytest

from hydra.errors import ConfigCompositionException

from runner import config, data
from runner.errors import ConfigError

CONF = Path(config.__file__).with_name("conf")
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("__pycache__", "hydra"))
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def test_groups_are_the_documented_ones():
    assert GROUPS == ["callbacks", "dataset", "experiment", "loop", "model", "model-style", "optimizer"]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(make_cfg, group, option):
    overrides = [f"{group}={option}"]
    if group == "dataset" and option in ("npz", "csv", "image_folder", "tfds"):  # your own data: given here
        overrides += ["dataset.path=x", "dataset.num_classes=10", "dataset.input_shape=[28,28,1]"]
    if group == "dataset" and option in ("wine", "breast_cancer", "iris"):  # tables: a vector per example
        overrides += ["model=mlp"]
    if (group, option) == ("model-style", "sequential"):
        overrides += ["model=seed_cnn"]
    cfg = make_cfg(*overrides)
    if cfg.dataset.num_classes is None:
        cfg = data.fill(cfg)  # the bundled tables: classes and shapes from the data
    if group == "model" and option == "resnet_small":
        assert cfg.model.style == "functional"
    graph = config.validate(cfg)
    assert graph.nodes[-1].kwargs.get("units") == cfg.dataset.num_classes


def test_model_style_sets_model_style(make_cfg):
    assert make_cfg("model-style=subclass").model.style == "subclass"


def test_output_width_follows_the_dataset(make_cfg):
    cfg = make_cfg("dataset=cifar100", "model=seed_cifar_cnn")
    assert cfg.model.layers[-1].units == 100


def test_misspelled_key_fails_at_compose_time(make_cfg):
    with pytest.raises(ConfigCompositionException, match="Could not override .loop.epoch."):
        make_cfg("loop.epoch=3")


def test_experiment_preset_overlays_groups(make_cfg):
    cfg = make_cfg("experiment=seed_mnist")
    assert (cfg.dataset.name, cfg.loop.epochs, cfg.loop.batch_size) == ("mnist", 5, 32)


@pytest.mark.parametrize(
    "override,message",
    [
        ("+model.layers.3.unit=3", r"model.layers\[3\] \(Dense\): unknown argument 'unit' .*Did you mean 'units'\?"),
        ("model.layers.0.type=Conv2d", r"model.layers\[0\] \(Conv2d\): unknown type 'Conv2d'.*Did you mean 'Conv2D'\?"),
        ("+optimizer.learning_rat=0.1", r"optimizer: unknown argument 'learning_rat' .*Did you mean 'learning_rate'"),
        ("optimizer.class_name=Adamm", r"optimizer: unknown type 'Adamm'.*Did you mean 'Adam'"),
        ("loop.epochs=0", r"loop.epochs: must be a positive integer, got 0"),
        ("loop.batch_size=-1", r"loop.batch_size: must be a positive integer, got -1"),
        ("loop.name=tape", r"loop.name: unknown value 'tape'"),
        ("model.style=sequentail", r"model.style: unknown value 'sequentail'.*Did you mean 'sequential'"),
        ("dataset.validation_split=1.5", r"dataset.validation_split: must be between 0 and 1"),
        ("model.layers.0.type=Lambda", r"keras.layers.Lambda is not allowed here: it runs arbitrary Python code"),
        ("+model.layers.3.use_bias=1", r"argument 'use_bias' of keras.layers.Dense expects true or false .*got 1 \(int\)"),
        ("+model.layers.0.padding=3", r"argument 'padding' of keras.layers.Conv2D expects a string"),
        ("+optimizer.beta_1=fast", r"optimizer: argument 'beta_1' of keras.optimizers.Adam expects a number"),
        ("model.layers.4.units=7", r"model.layers\[4\] \(Dense 'dense_1'\): units=7, but dataset.num_classes is 10"),
        ("model.loss.from_logits=true", r"ends in softmax, but model.loss.from_logits is true"),
        ("model.layers.4.activation=null", r"outputs logits \(no activation\), but model.loss expects probabilities"),
        ("+model.loss.reduction=3", r"model.loss: argument 'reduction' of keras.losses.SparseCategoricalCrossentropy"),
        ("dataset.num_classes=0", r"dataset.num_classes: must be a positive integer, got 0"),
        ("loop.strategy=mirored", r"loop.strategy: unknown value 'mirored'.*Did you mean 'mirrored'"),
        ("loop.strategy=multi_worker", r"loop.strategy: multi_worker does not work with loop=fit .*use loop=custom"),
        ("loop.precision=bf16", r"loop.precision: unknown value 'bf16'; choose one of \['float32', 'mixed_bfloat16'"),
        # what MLflow would refuse only after TensorFlow loaded and the model built (issue 21)
        ("tags=[v1+aug]", r"tags: 'v1\+aug' has a character MLflow refuses in a tag name .*for example tags=\[v1-aug\]"),
        ("tags=[\"it's\"]", r"tags: \"it's\" has a character MLflow refuses .*tags=\[it-s\]"),
        ("tags=[../up]", r"tags: '../up' has a character MLflow refuses .*no leading / or \.\."),
        (f"tags=[{'t' * 251}]", r"tags: 'tttt.*' is 251 characters, over MLflow's 250"),
        (f"mlflow.experiment_name={'e' * 501}", r"mlflow.experiment_name: 501 characters; MLflow takes 1 to 500"),
        (f"note={'n' * 4001}", r"note: 4001 characters; keep it under 4000"),
        ("dataset.on_bad_file=ignore", r"dataset.on_bad_file: unknown value 'ignore'; choose one of \['error', 'skip'\]"),
        ("dataset.path=${oc.env:RUNNER_TEST_NEVER_SET}", r"dataset.path: the environment variable RUNNER_TEST_NEVER_SET "
                                                          r"is not set"),
        ("loop.epochs=${loop.nope}", r"loop.epochs: .*nope"),
    ],
)
def test_bad_values_are_named(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(make_cfg(override))


def test_validation_does_not_import_tensorflow():
    # A Keras version other than the shipped index's gets its index built (importing Keras) once.
    subprocess.run([sys.executable, "-c", "from runner import keras_api; keras_api.index()"], check=True)
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_module\n"
        "from runner import config\n"
        "with initialize_config_module(config_module='runner.conf', version_base='1.3'):\n"
        "    cfg = compose(config_name='config', overrides=['model=resnet_small'])\n"
        "config.validate(cfg)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_fingerprint_follows_the_data_content_not_its_name(make_cfg, tmp_path):
    import numpy as np

    from runner import config as config_module

    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros(3))
    cfg = make_cfg("dataset=npz", f"dataset.path={path}", "dataset.num_classes=3", "dataset.input_shape=[1]")
    before = config_module.fingerprint(cfg)
    assert config_module.fingerprint(make_cfg("dataset=npz", f"dataset.path={path}", "dataset.num_classes=3",
                                              "dataset.input_shape=[1]", "loop.verbose=0", "mlflow.log_model=false")) == before
    np.savez(path, x=np.ones(3))
    assert config_module.fingerprint(cfg) != before


@pytest.mark.parametrize("overrides,message", [
    (["loop=custom", "loop.step=my_steps.make_train_step"],
     r"loop.step: 'my_steps.make_train_step' runs your code from module 'my_steps', so the loop must allow it by "
     r"name: loop.step_modules=\[my_steps\]"),
    (["loop.step=my_steps.make_train_step", "loop.step_modules=[my_steps]"],
     r"loop.step: sets the training step of loop=custom; add `loop=custom`"),
    (["loop=custom", "loop.step=nowhere_steps.make", "loop.step_modules=[nowhere_steps]"],
     r"loop.step: no module 'nowhere_steps' on the Python path"),
    (["loop.accumulate_steps=0"], r"loop.accumulate_steps: must be a positive integer, got 0"),
    (["loop.accumulate_steps=2", "+optimizer.gradient_accumulation_steps=4"],
     r"loop.accumulate_steps: 2, and optimizer.gradient_accumulation_steps: 4 accumulates too \(loop=fit would drop"),
])
def test_step_misuse_is_refused_before_tensorflow(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(make_cfg(*overrides))


def test_the_optimizers_own_accumulation_alone_is_keras_own(make_cfg):
    config.validate(make_cfg("+optimizer.gradient_accumulation_steps=4"))
    config.validate(make_cfg("loop.accumulate_steps=2", "+optimizer.gradient_accumulation_steps=0"))  # Keras: off
