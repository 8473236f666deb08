"""The data stage on arrays: shapes and classes read from the data, wrong data refused with one
message naming the array, what was found and the fix (in-process and through the command line)."""

import gc
import os
import re
import subprocess
import sys
import weakref

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner import data
from runner.errors import ConfigError


def dataset_cfg(path, **overrides):
    """A dataset config typed by the schema (every key, defaults included), as a run's `cfg.dataset`."""
    from runner.config import DatasetConfig

    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), {
        "name": "npz", "path": str(path), "num_classes": None, "input_shape": None, "validation_split": 0.25,
        "test_split": 0.2, "seed": 0, **overrides})


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


def good_arrays(n=8):
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 255, (n, 4, 4), dtype=np.uint8), "y_train": np.arange(n) % 3,
            "x_test": rng.integers(0, 255, (4, 4, 4), dtype=np.uint8), "y_test": np.arange(4) % 3}


def test_npz_in_the_keras_layout_loads_and_gains_a_channel_axis(tmp_path):
    splits = data.load(dataset_cfg(write(tmp_path / "d.npz", **good_arrays())))
    assert splits.train[0].shape == (6, 4, 4, 1) and splits.val[0].shape == (2, 4, 4, 1)
    assert splits.train[0].dtype == np.uint8  # scaled to [0, 1] only per batch, in the pipeline
    assert splits.info.examples == {"train": 6, "validation": 2, "test": 4}


def test_inspect_reads_classes_shape_counts_and_digest(tmp_path):
    info = data.inspect(dataset_cfg(write(tmp_path / "d.npz", **good_arrays())))
    assert info.num_classes == 3 and info.input_shape == (4, 4, 1)
    assert sum(info.class_counts["train"]) == 6 and info.class_counts["test"] == [2, 1, 1]
    assert info.source == str(tmp_path / "d.npz") and len(info.digest) == 64
    assert set(info.as_dict()) >= {"name", "source", "digest", "num_classes", "input_shape", "examples", "class_counts"}


def test_a_changed_file_changes_the_digest(tmp_path):
    path = write(tmp_path / "d.npz", **good_arrays())
    before = data.inspect(dataset_cfg(path)).digest
    arrays = good_arrays()
    arrays["x_train"][0, 0, 0] ^= 1
    assert data.inspect(dataset_cfg(write(path, **arrays))).digest != before


def test_fill_sets_num_classes_and_input_shape_from_the_data(make_cfg, tmp_path):
    path = write(tmp_path / "d.npz", **good_arrays(20))
    cfg = make_cfg("dataset=npz", f"dataset.path={path}", "model=mlp")
    assert cfg.dataset.num_classes is None
    filled = data.fill(cfg)
    assert filled.dataset.num_classes == 3 and list(filled.dataset.input_shape) == [4, 4, 1]
    assert filled.model.layers[-1].units == 3  # the model's `${dataset.num_classes}` follows
    assert cfg.dataset.num_classes is None  # a copy


def test_inspect_and_fill_do_not_import_tensorflow(tmp_path):
    path = write(tmp_path / "d.npz", **good_arrays())
    code = (
        "import sys\nfrom hydra import compose, initialize_config_module\nimport runner.config\nfrom runner import data\n"
        "with initialize_config_module(config_module='runner.conf', version_base='1.3'):\n"
        f"    cfg = compose(config_name='config', overrides=['dataset=npz', 'dataset.path={path}', 'model=mlp'])\n"
        "info = data.inspect(cfg.dataset)\nfilled = data.fill(cfg, info)\n"
        "assert (info.num_classes, info.input_shape) == (3, (4, 4, 1)), info\n"
        "assert filled.dataset.num_classes == 3 and list(filled.dataset.input_shape) == [4, 4, 1], filled.dataset\n"
        "assert cfg.dataset.num_classes is None  # fill returns a copy\n"
        "from runner.train import checked\nchecked(cfg, '.')  # data.checked, config.validate: the model against the data\n"
        "assert not {'tensorflow', 'keras', 'mlflow'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_sorted_labels_are_shuffled_before_the_validation_split(tmp_path):
    arrays = good_arrays(60)
    arrays["y_train"] = np.sort(np.arange(60) % 3)  # sorted by class: the last 10 % would all be class 2
    splits = data.load(dataset_cfg(write(tmp_path / "d.npz", **arrays), validation_split=0.2))
    assert set(splits.val[1].tolist()) == {0, 1, 2}
    again = data.load(dataset_cfg(tmp_path / "d.npz", validation_split=0.2, seed=7))
    np.testing.assert_array_equal(again.val[1], splits.val[1])  # fixed: every run validates on the same examples


def test_a_sweep_process_reads_its_data_once_and_again_when_it_changes(tmp_path):
    path = write(tmp_path / "d.npz", **good_arrays())
    first = data.load(dataset_cfg(path), keep=True)
    assert data.load(dataset_cfg(path), keep=True) is first  # the next job of a sweep in this process
    assert data.load(dataset_cfg(path, seed=5), keep=True) is first  # the seed orders the pipeline, not the splits
    assert data.load(dataset_cfg(path, limit=4), keep=True) is not first  # another config of the same file
    again = data.load(dataset_cfg(path), keep=True)
    arrays = good_arrays()
    arrays["x_train"][0, 0, 0] ^= 1
    write(path, **arrays)
    os.utime(path, ns=(1, 1))  # even a rewrite within the clock's resolution is seen: size or mtime differ
    changed = data.load(dataset_cfg(path))
    assert changed is not again and changed.train[0].sum() != again.train[0].sum()
    assert data.load(dataset_cfg(path)) is not changed  # a single run keeps nothing


def test_each_data_set_name_chooses_its_source_once(tmp_path, monkeypatch):
    from runner import config

    assert config.DATASETS == tuple(data.SOURCES)
    assert all(callable(m.inspect) and callable(m.load) for m in data.SOURCES.values())
    seen = []

    class Source:  # answers for npz: the name alone chooses, and the load takes the check's DataInfo
        inspect = staticmethod(lambda cfg: seen.append(("inspect", cfg.name)) or "info")
        load = staticmethod(lambda cfg, info: seen.append(("load", info)) or "splits")

    monkeypatch.setitem(data.SOURCES, "npz", Source)
    cfg = dataset_cfg(tmp_path / "none.npz")
    assert data.inspect(cfg) == "info" and data.load(cfg, "info") == "splits"
    assert seen == [("inspect", "npz"), ("load", "info")]
    with pytest.raises(ConfigError, match=r"^dataset.name: unknown data set 'npy'.$"):
        data.inspect(dataset_cfg(tmp_path, name="npy"))


def test_the_fingerprint_takes_the_digest_the_check_read(make_cfg, tmp_path):
    import dataclasses

    from runner import config

    path = write(tmp_path / "d.npz", **good_arrays(20))
    cfg, info = data.checked(make_cfg("dataset=npz", f"dataset.path={path}", "model=mlp"))
    assert config.fingerprint(cfg, info) == config.fingerprint(cfg)  # one digest: the check's is the file's
    assert config.fingerprint(cfg, dataclasses.replace(info, digest="0" * 64)) != config.fingerprint(cfg, info)


def test_a_run_digests_its_data_once_and_reads_it_twice(make_cfg, store, tmp_path, monkeypatch):
    """The check reads and digests the file; the fingerprint, the record's datasets and the load carry
    its DataInfo; only the load reads the arrays again."""
    from conftest import only_run
    from runner.data import arrays, digest
    from runner.train import run

    path = write(tmp_path / "d.npz", **good_arrays(40))
    digested, read, of, read_npz = [], [], digest.of, arrays.read_npz
    monkeypatch.setattr(digest, "of", lambda *paths: digested.append(paths) or of(*paths))
    monkeypatch.setattr(arrays, "read_npz", lambda p: read.append(p) or read_npz(p))
    run(make_cfg("dataset=npz", f"dataset.path={path}", "model=mlp", "loop.epochs=1", "loop.verbose=0",
                 "mlflow.log_model=false", "mlflow.log_figures=false", f"mlflow.tracking_uri={store}"), cwd=tmp_path)
    assert len(digested) == 1 and len(read) == 2, (digested, read)
    assert len(only_run(store)[1].inputs.dataset_inputs) == 3  # the record's datasets, from the carried DataInfo


def test_limit_caps_the_training_examples(tmp_path):
    splits = data.load(dataset_cfg(write(tmp_path / "d.npz", **good_arrays()), limit=4))
    assert len(splits.train[0]) + len(splits.val[0]) == 4


def test_float_data_follows_an_explicit_scale(tmp_path):
    arrays = good_arrays()
    arrays["x_train"], arrays["x_test"] = arrays["x_train"] / 255.0, arrays["x_test"] / 255.0
    splits = data.load(dataset_cfg(write(tmp_path / "d.npz", **arrays), scale="none"))
    assert splits.train[0].dtype == np.float32 and splits.train[0].max() <= 1.0
    arrays["x_train"], arrays["x_test"] = arrays["x_train"] * 255.0, arrays["x_test"] * 255.0
    splits = data.load(dataset_cfg(write(tmp_path / "d.npz", **arrays), scale=255))
    assert splits.train[0].dtype == np.float32 and 0.5 < splits.train[0].max() <= 1.0


def bad(arrays_change=None, **cfg):
    def arrays():
        a = good_arrays(20)
        if arrays_change:
            arrays_change(a)
        return a

    return arrays, cfg


def set_(key, value):
    return lambda a: a.__setitem__(key, value(a) if callable(value) else value)


# (wrong data, config overrides) -> the message; each also through the command line (exit status 2).
WRONG = {
    "one-hot": (bad(set_("y_train", lambda a: np.eye(3, dtype=np.uint8)[a["y_train"]])),
                r"dataset: y_train is one-hot encoded \(shape \[20, 3\]\).*Save y_train.argmax\(axis=1\)"),
    "half": (bad(set_("y_train", lambda a: np.where(np.arange(20) == 5, 0.5, a["y_train"]))),
             r"dataset: y_train\[5\] is .*0.5.*labels must be whole class indices"),
    "nan": (bad(set_("y_test", np.array([0.0, np.nan, 1.0, 2.0]))), r"dataset: y_test\[1\] is .*nan"),
    "unit floats": (bad(set_("x_train", lambda a: a["x_train"] / 255.0)),
                    r"x_train is float64 with values in \[0, 0.99\d*\], already in \[0, 1\]: set dataset.scale=none"),
    "wide floats": (bad(set_("x_train", lambda a: a["x_train"] * 4.0 - 300)),
                    r"outside \[0, 255\], so not pixels: set dataset.scale=none"),
    "pixel floats": (bad(set_("x_train", lambda a: a["x_train"] * 1.0)), r"set dataset.scale=255 to divide it by 255"),
    "channels first": (bad(lambda a: a.update(x_train=np.zeros((20, 3, 8, 8), np.uint8),
                                              x_test=np.zeros((4, 3, 8, 8), np.uint8))),
                       r"x_train has shape \[20, 3, 8, 8\], channels first.*np.transpose\(x_train, \(0, 2, 3, 1\)\)"),
    "limit": (bad(limit=500), r"dataset.limit: 500 is more than the 20 training examples"),
    "num_classes": (bad(num_classes=2),
                    r"dataset.num_classes: the config says 2, but .* has labels up to 2, so 3 classes"),
    "input_shape": (bad(input_shape=[16]),
                    r"dataset.input_shape: the config says \[16\], but .* has examples of shape \[4, 4, 1\]"),
}


@pytest.mark.parametrize("case", WRONG)
def test_wrong_data_is_refused_before_training(tmp_path, case):
    (arrays, overrides), message = WRONG[case]
    path = write(tmp_path / "d.npz", **arrays())
    with pytest.raises(ConfigError, match=message):
        data.fill(OmegaConf.create({"seed": 0, "dataset": dataset_cfg(path, **overrides)}))


@pytest.mark.parametrize("case", ["one-hot", "nan", "unit floats", "channels first", "limit", "num_classes"])
def test_cli_wrong_data_exits_2_with_one_line(tmp_path, case):
    (arrays, overrides), message = WRONG[case]
    write(tmp_path / "d.npz", **arrays())
    args = ["dataset=npz", "dataset.path=d.npz", *(f"dataset.{k}={v}" for k, v in overrides.items())]
    err = cli(args, tmp_path)
    assert len(err.splitlines()) == 1 and err.startswith("runner: config error: ")
    assert re.search(message, err), err


def cli(args, cwd, status=2):
    import conftest

    proc = conftest.cli(*args, cwd=cwd, timeout=120)  # the developer's MLFLOW_TRACKING_URI dropped
    assert proc.returncode == status, proc.stderr
    return proc.stderr.strip()


def test_cli_missing_data_file_is_the_first_error(tmp_path):
    # model.layers would fail too (units: ${dataset.num_classes} is null without data): the path comes first
    assert cli(["dataset=npz", "dataset.path=nope.npz"], tmp_path) == \
        f"runner: config error: dataset.path: no file at '{tmp_path / 'nope.npz'}'."
    assert cli(["dataset=npz"], tmp_path) == \
        "runner: config error: dataset.path: dataset 'npz' reads local data; set dataset.path=/path/to/file.npz."


@pytest.mark.parametrize("overrides, message", [
    (["model.loss.class_name=CategoricalCrossentropy"],
     r"model.loss.class_name: CategoricalCrossentropy expects one-hot labels, but the runner's labels are integer "
     r"class indices. Use SparseCategoricalCrossentropy"),
    (["+model.inputs=[{name: a, shape: [8, 8, 1]}, {name: b, shape: [8, 8, 1]}]"],
     r"model.inputs: the model has 2 inputs, but dataset 'digits' gives one x per example"),
    (["+model.inputs=[{name: a, shape: [28, 28, 1]}]"],
     r"model.inputs\[0\].shape: \[28, 28, 1\], but the data's examples have shape \[8, 8, 1\]"),
    (["model.outputs=[dense, dense_1]"], r"model.outputs: the model has 2 outputs \['dense', 'dense_1'\], but dataset "),
    (["seed=-1"], r"^seed: -1 is outside \[0, 2\*\*32 - 1\], the seeds NumPy accepts."),
    (["seed=4294967296"], r"^seed: 4294967296 is outside"),
    (["dataset.seed=-3"], r"^dataset.seed: -3 is outside"),
])
def test_a_model_or_seed_that_does_not_fit_the_data(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        data.fill(make_cfg(*overrides))


def test_cli_loss_that_does_not_fit_the_labels_exits_2(tmp_path):
    err = cli(["model.loss.class_name=CategoricalCrossentropy"], tmp_path)
    assert err.startswith("runner: config error: model.loss.class_name: CategoricalCrossentropy expects one-hot")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.path: no file at '.*/nope.npz'"):
        data.load(dataset_cfg(tmp_path / "nope.npz"))


def test_file_without_the_four_arrays(tmp_path):
    arrays = good_arrays()
    del arrays["y_test"]
    with pytest.raises(ConfigError, match=r"lacks the arrays \['y_test'\]"):
        data.inspect(dataset_cfg(write(tmp_path / "d.npz", **arrays)))


def test_pickled_arrays_are_refused(tmp_path):
    arrays = good_arrays()
    arrays["x_train"] = np.array([object()] * 8, dtype=object)
    with pytest.raises(ConfigError, match="cannot read"):
        data.inspect(dataset_cfg(write(tmp_path / "d.npz", **arrays)))


def test_train_pipeline_order_depends_only_on_seed_and_epoch():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1)
    y = np.arange(10, dtype=np.int32)
    full, steps = data.train_pipeline(x, y, 5, seed=1, first_epoch=0, epochs=3)
    resumed, _ = data.train_pipeline(x, y, 5, seed=1, first_epoch=2, epochs=3)
    labels = [b[1].numpy().tolist() for b in full]
    assert steps == 2 and len(labels) == 6
    assert [b[1].numpy().tolist() for b in resumed] == labels[4:]
    assert labels[0:2] != labels[2:4]  # a new order every epoch
    assert sorted(sum(labels[0:2], [])) == list(range(10))


def test_the_train_pipeline_holds_its_own_copy_not_the_arrays_it_was_given():
    """The pipeline copies the examples into TensorFlow; the NumPy arrays go once the caller drops
    them, so a run does not hold its training set twice while it trains (47 MB more on MNIST)."""
    # a view one byte into its buffer: never aligned as TensorFlow needs to share it (it copies, as it
    # does with a large array loaded from a file)
    x = np.arange(41, dtype=np.uint8)[1:].reshape(10, 2, 2, 1)
    y = np.arange(10, dtype=np.int32)
    given = weakref.ref(x)
    ds, _ = data.train_pipeline(x, y, 5, seed=1, first_epoch=0, epochs=1)
    del x
    gc.collect()
    assert given() is None
    assert sorted(int(v) for batch in ds for v in batch[0].numpy()[:, 0, 0, 0] * 255 + 0.5) == list(range(1, 41, 4))


@pytest.mark.slow  # a subprocess CLI run: the fast suite keeps the in-process twin
def test_cli_trains_an_npz_given_only_its_path(tmp_path):
    arrays = good_arrays(40)
    arrays["x_train"] = np.kron(arrays["x_train"], np.ones((1, 2, 2), np.uint8))  # 8x8: room for seed_cnn's convolutions
    arrays["x_test"] = np.kron(arrays["x_test"], np.ones((1, 2, 2), np.uint8))
    write(tmp_path / "d.npz", **arrays)
    import conftest

    out = conftest.cli("dataset=npz", "dataset.path=d.npz", "loop.epochs=1", "loop.verbose=0", "mlflow.log_model=false",
                       cwd=tmp_path, timeout=300)  # its run goes to tmp_path/mlflow.db, not the developer's store
    assert out.returncode == 0, out.stderr
    assert "(seed_cnn-functional-npz-adam-fit)" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("style", ["sequential", "functional", "subclass"])
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_an_npz_trains_in_every_style_and_loop_from_its_path_alone(make_cfg, store, tmp_path, style, loop):
    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    x = (rng.normal(60, 20, (120, 8, 8)) + 120 * y[:, None, None]).clip(0, 255).astype(np.uint8)
    write(tmp_path / "d.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    cfg = make_cfg("dataset=npz", "dataset.path=d.npz", f"model-style={style}", f"loop={loop}", "model=mlp",
                   "loop.epochs=3", "loop.batch_size=8", "loop.verbose=0", f"mlflow.tracking_uri={store}")
    from runner.train import run

    assert run(cfg, cwd=tmp_path)["test_accuracy"] >= 0.9
