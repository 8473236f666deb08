"""The data stage: local .npz files, shapes and labels checked against the dataset config."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner import data
from runner.errors import ConfigError


def dataset_cfg(path, **overrides):
    return OmegaConf.create({"name": "npz", "path": str(path), "num_classes": 3, "input_shape": [4, 4, 1],
                             "validation_split": 0.25, "limit": None, "seed": 0, **overrides})


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
    np.testing.assert_array_equal(splits.val[1], [0, 1])  # the last examples, as keras' validation_split


def test_limit_caps_the_training_examples(tmp_path):
    splits = data.load(dataset_cfg(write(tmp_path / "d.npz", **good_arrays()), limit=4))
    assert len(splits.train[0]) + len(splits.val[0]) == 4


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.path: no file at '.*/nope.npz'"):
        data.load(dataset_cfg(tmp_path / "nope.npz"))


def test_file_without_the_four_arrays(tmp_path):
    arrays = good_arrays()
    del arrays["y_test"]
    with pytest.raises(ConfigError, match=r"lacks the arrays \['y_test'\]"):
        data.load(dataset_cfg(write(tmp_path / "d.npz", **arrays)))


def test_labels_outside_num_classes(tmp_path):
    arrays = good_arrays()
    arrays["y_train"][0] = 7
    with pytest.raises(ConfigError, match=r"dataset.num_classes: y_train has labels in \[0, 7\], outside \[0, 3\)"):
        data.load(dataset_cfg(write(tmp_path / "d.npz", **arrays)))


def test_input_shape_that_does_not_fit(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.input_shape: \[5, 5, 1\] does not match x_train"):
        data.load(dataset_cfg(write(tmp_path / "d.npz", **good_arrays()), input_shape=[5, 5, 1]))


def test_pickled_arrays_are_refused(tmp_path):
    arrays = good_arrays()
    arrays["x_train"] = np.array([object()] * 8, dtype=object)
    with pytest.raises(ConfigError, match="cannot read"):
        data.load(dataset_cfg(write(tmp_path / "d.npz", **arrays)))


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
