"""Tables: a CSV with numeric and categorical columns, and scikit-learn's bundled tables, trained by `mlp`."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner import data
from runner.errors import ConfigError
from runner.train import run
from test_data import cli, dataset_cfg

HEADER = "size,colour,weight,label\n"


def write_csv(path, n=40, colours=("red", "green", "blue"), header=HEADER):
    rng = np.random.default_rng(1)
    rows = [f"{rng.normal(10 * (i % 2), 1):.3f},{colours[i % len(colours)]},{i % 5},{'cat' if i % 2 else 'dog'}\n"
            for i in range(n)]
    path.write_text(header + "".join(rows))
    return path


def csv_cfg(path, **overrides):
    return dataset_cfg(path, name="csv", **overrides)


def test_csv_classes_shape_and_features_come_from_the_table(tmp_path):
    info = data.inspect(csv_cfg(write_csv(tmp_path / "t.csv")))
    assert info.class_names == ["cat", "dog"] and info.num_classes == 2
    assert info.features == ["size", "colour", "weight"]
    assert info.input_shape == (2 + 3 + 1,)  # two numbers, three colours and an unseen-colour slot
    assert info.examples == {"train": 24, "validation": 8, "test": 8}  # test_split 0.2, then validation 0.25


def test_preprocessing_is_adapted_on_the_training_split_only(tmp_path):
    splits = data.load(csv_cfg(write_csv(tmp_path / "t.csv")))
    numbers = splits.train[0][:, :2]
    np.testing.assert_allclose(numbers.mean(axis=0), 0, atol=1e-5)  # normalised with the training rows' statistics
    np.testing.assert_allclose(numbers.std(axis=0), 1, atol=1e-4)
    assert not np.allclose(splits.test[0][:, :2].mean(axis=0), 0, atol=1e-3)  # the test rows were not seen
    colours = splits.train[0][:, 2:]
    assert set(colours.sum(axis=1).tolist()) == {1.0}  # one-hot


def test_a_separate_test_file_with_an_unseen_category(tmp_path):
    write_csv(tmp_path / "train.csv")
    write_csv(tmp_path / "test.csv", n=6, colours=("purple",))
    splits = data.load(csv_cfg(tmp_path / "train.csv", test_path=str(tmp_path / "test.csv")))
    assert len(splits.test[1]) == 6 and splits.info.examples["test"] == 6
    assert (splits.test[0][:, 2] == 1).all() and (splits.test[0][:, 3:] == 0).all()  # StringLookup's OOV slot


def test_categorical_names_numeric_columns_as_categories(tmp_path):
    info = data.inspect(csv_cfg(write_csv(tmp_path / "t.csv"), categorical=["weight"]))
    assert info.input_shape == (1 + 4 + 6,)  # size; 3 colours + 1; 5 weights + 1


@pytest.mark.parametrize("write, overrides, message", [
    (lambda p: write_csv(p, header="size,colour,weight,kind\n"), {},
     r"dataset.label: '.*t.csv' has no column 'label'; its columns are \['size', 'colour', 'weight', 'kind'\]. "
     r"Set dataset.label=<the column with the classes>."),
    (lambda p: p.write_text(HEADER + "1.0,red,,cat\n2.0,red,3,dog\n" * 5), {},
     r"dataset: column 'weight' of '.*t.csv' has 5 empty or NaN values \(first on line 2\)"),
    (lambda p: p.write_text(HEADER + "1.0,red,3\n"), {}, r"line 2 has 3 fields, the header 4"),
    (write_csv, {"categorical": ["wieght"]}, r"dataset.categorical: no columns \['wieght'\]"),
])
def test_tables_that_cannot_train(tmp_path, write, overrides, message):
    write(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match=message):
        data.inspect(csv_cfg(tmp_path / "t.csv", **overrides))


def test_cli_csv_without_its_label_column_exits_2(tmp_path):
    write_csv(tmp_path / "t.csv", header="size,colour,weight,kind\n")
    err = cli(["dataset=csv", "dataset.path=t.csv", "model=mlp"], tmp_path)
    assert err.startswith("runner: config error: dataset.label: ") and "has no column 'label'" in err


def test_the_bundled_wine_table_is_read_without_scikit_learn():
    info = data.inspect(OmegaConf.merge(dataset_cfg(None), {"name": "wine", "path": None}))
    assert info.num_classes == 3 and info.input_shape == (13,) and info.class_names == ["class_0", "class_1", "class_2"]
    assert sum(info.examples.values()) == 178


def test_wine_trains_with_the_mlp(make_cfg, store, tmp_path):
    cfg = make_cfg("dataset=wine", "model=mlp", "loop.epochs=3", "loop.verbose=0", f"mlflow.tracking_uri={store}")
    results = run(cfg, cwd=tmp_path)
    assert results["test_accuracy"] > 0.8  # 3 classes; standardised features separate them easily


@pytest.mark.slow
@pytest.mark.parametrize("style", ["sequential", "functional", "subclass"])
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_a_csv_trains_in_every_style_and_loop(make_cfg, store, tmp_path, style, loop):
    write_csv(tmp_path / "t.csv", n=200)
    cfg = make_cfg("dataset=csv", "dataset.path=t.csv", "model=mlp", f"model-style={style}", f"loop={loop}",
                   "loop.epochs=3", "loop.verbose=0", f"mlflow.tracking_uri={store}")
    results = run(cfg, cwd=tmp_path)
    assert results["test_accuracy"] > 0.9  # the classes differ by 10 standard deviations in `size`


def test_the_json_encoding_is_what_keras_preprocessing_layers_compute():
    import keras

    from runner.data import tables

    rng = np.random.default_rng(0)
    columns = {"a": rng.normal(5, 3, 50), "b": rng.integers(0, 9, 50).astype(np.float64),
               "c": np.array(list("xyz") * 16 + ["x", "w"])}
    train = np.arange(40)
    vocab = tables.vocabularies(columns, train)
    (ours,) = tables.encode(columns, train, vocab)
    norm = keras.layers.Normalization()
    norm.adapt(np.stack([columns["a"], columns["b"]], axis=1)[train].astype(np.float32))
    theirs = np.concatenate([np.asarray(norm(np.stack([columns["a"], columns["b"]], axis=1).astype(np.float32))),
                             np.asarray(keras.layers.StringLookup(vocabulary=vocab["c"], output_mode="one_hot")(columns["c"]))],
                            axis=1)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # "w" never seen in training: the first (OOV) slot
    assert ours[-1, 2] == 1.0
