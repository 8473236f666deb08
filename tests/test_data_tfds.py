"""dataset=tfds: a data set prepared in a local data_dir (here a tiny one, built by a real TFDS builder)."""

import numpy as np
import pytest

from runner import data
from runner.errors import ConfigError
from runner.train import run
from test_data import cli, dataset_cfg


def tfds_cfg(data_dir, **overrides):
    return dataset_cfg(data_dir, name="tfds", tfds="tiny_shapes", validation_split=0.25, **overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        """40 training and 10 test 8x8 grey images: dark (0) or light (1)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(names=["dark", "light"])}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                         supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40), "test": self._generate_examples(10)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((8, 8, 1), 200 if i % 2 else 30, np.uint8), "label": i % 2}

    root = tmp_path_factory.mktemp("tfds")
    TinyShapes(data_dir=str(root)).download_and_prepare()
    return root


def test_inspect_reads_the_prepared_folder(data_dir):
    info = data.inspect(tfds_cfg(data_dir))
    assert info.num_classes == 2 and info.class_names == ["dark", "light"] and info.input_shape == (8, 8, 1)
    assert info.examples == {"train": 30, "validation": 10, "test": 10} and len(info.digest) == 64


def test_a_data_set_that_is_not_prepared(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.tfds: 'mnist' is not prepared in '.*' \(no mnist/<version>/"
                                          r"dataset_info.json\); the runner never downloads. Prepare it on a machine"):
        data.inspect(dataset_cfg(tmp_path, name="tfds", tfds="mnist"))


def test_cli_not_prepared_exits_2(tmp_path):
    err = cli(["dataset=tfds", "dataset.tfds=mnist", "dataset.path=tfds_data"], tmp_path)
    assert err.startswith("runner: config error: dataset.tfds: 'mnist' is not prepared in ")


def test_each_epoch_order_depends_only_on_seed_and_epoch(data_dir):
    splits = data.load(tfds_cfg(data_dir))
    full, steps = data.train_pipeline(*splits.train, 8, seed=3, first_epoch=0, epochs=2)
    resumed, _ = data.train_pipeline(*splits.train, 8, seed=3, first_epoch=1, epochs=2)
    labels = [b[1].numpy().tolist() for b in full]
    assert steps == 4 and [len(b) for b in labels] == [8, 8, 8, 6] * 2
    assert [b[1].numpy().tolist() for b in resumed] == labels[4:]
    assert labels[:4] != labels[4:]
    x, _ = next(iter(full))
    assert x.dtype == "float32" and float(np.max(x)) <= 1.0


def test_tfds_trains_with_nothing_but_its_name_and_folder(make_cfg, store, data_dir, tmp_path):
    cfg = make_cfg("dataset=tfds", "dataset.tfds=tiny_shapes", f"dataset.path={data_dir}", "model=mlp",
                   "loop.epochs=3", "loop.batch_size=4", "loop.verbose=0", f"mlflow.tracking_uri={store}")
    assert run(cfg, cwd=tmp_path)["test_accuracy"] == 1.0
