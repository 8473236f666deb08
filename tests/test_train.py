"""End to end: a real Keras model trained on the bundled digits, recorded in a real (temporary) MLflow store."""


import pytest

from runner.errors import ConfigError
from runner.train import run

from conftest import cli, family, only_run, per_epoch

EPOCH_METRICS = {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_one_epoch_on_digits_is_fully_recorded(make_cfg, store, tmp_path):
    cfg = make_cfg("loop.epochs=2", f"mlflow.tracking_uri={store}")
    results = run(cfg, cwd=tmp_path, output_root=tmp_path / "out", choices={"model": "seed_cnn"}, overrides=["x=1"])
    client, found = only_run(store)
    assert found.info.status == "FINISHED"
    assert found.data.params["model.layers.1.filters"] == "64"
    assert found.data.params["optimizer.class_name"] == "Adam"
    assert found.data.tags["model"] == "seed_cnn" and found.data.tags["overrides"] == "x=1"
    for key in EPOCH_METRICS:
        history = client.get_metric_history(found.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key  # one point per epoch
    assert found.data.metrics["test_accuracy"] == pytest.approx(results["test_accuracy"])
    assert found.data.metrics["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert found.data.metrics["num_params"] == 151_306
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "model_summary.txt"} <= artifacts
    assert [o.step for o in found.outputs.model_outputs] == [2]  # an MLflow model (tests/test_record.py)


@pytest.mark.slow
def test_same_seed_same_metrics(make_cfg, store, tmp_path):
    cfg = make_cfg("loop.epochs=1", "dataset.limit=300", f"mlflow.tracking_uri={store}", "mlflow.log_model=false")
    assert run(cfg, cwd=tmp_path) == run(cfg, cwd=tmp_path)


def test_a_missing_data_file_is_a_config_error_before_the_run(make_cfg, store, tmp_path):
    cfg = make_cfg("dataset.path=missing.npz", f"mlflow.tracking_uri={store}")
    with pytest.raises(ConfigError, match=r"dataset.path: no file at '.*/missing.npz'"):
        run(cfg, cwd=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()  # found by data.fill, before TensorFlow and MLflow


def test_config_error_before_training_creates_no_run(make_cfg, store, tmp_path):
    with pytest.raises(ConfigError):
        run(make_cfg("+model.layers.3.unit=3", f"mlflow.tracking_uri={store}"), cwd=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()  # the store is not even opened


@pytest.mark.slow  # a subprocess CLI run: the fast suite keeps the in-process twin
def test_cli_multirun_three_styles_same_parameters(tmp_path):
    done = cli(
        "-m", "model-style=sequential,functional,subclass", "loop.epochs=1", "dataset.limit=400", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    _, families, _ = family(tmp_path)
    ((_, runs),) = families.items()  # the jobs, not the sweep's parent run
    assert sorted(r.data.tags["model-style"] for r in runs) == ["functional", "sequential", "subclass"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.metrics["num_params"] for r in runs}) == 1
    assert len({r.data.metrics["val_loss"] for r in runs}) == 1  # one seed: identical training in every style
    assert done.stdout.count("MLflow run ") == 3


@pytest.mark.slow  # a subprocess CLI run: the fast suite keeps the in-process twin
def test_users_config_dir_adds_a_model(tmp_path):
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "tiny.yaml").write_text(
        "layers:\n  - {type: Flatten}\n  - {type: Dense, units: '${dataset.num_classes}', activation: softmax}\n"
    )
    done = cli("--config-dir", "my_conf", "model=tiny", "loop.epochs=1", "mlflow.log_model=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _, found = only_run(tmp_path)
    assert found.data.tags["model"] == "tiny"
    assert found.data.metrics["num_params"] == 8 * 8 * 10 + 10


def test_secret_looking_values_are_not_logged(make_cfg):
    from runner import record

    flat = record.params(make_cfg("+mlflow.api_token=abc", "+dataset.password=hunter2"))
    assert flat["mlflow.api_token"] == "***" and flat["dataset.password"] == "***"
    assert flat["optimizer.learning_rate"] == 0.001


def test_seed_cifar100_trains_on_generated_100_class_images(make_cfg, store, tmp_path):
    # No CIFAR-100 is reachable offline: random 32x32x3 uint8 images with 100 classes check the wiring
    # (shapes, the 100-wide output, the schedule, early stopping), not the accuracy.
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (400, 32, 32, 3), dtype=np.uint8), "y_train": rng.integers(0, 100, (400, 1)),
              "x_test": rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8), "y_test": rng.integers(0, 100, (100, 1))}
    np.savez(tmp_path / "cifar100.npz", **arrays)
    cfg = make_cfg("experiment=seed_cifar100", f"dataset.path={tmp_path / 'cifar100.npz'}", "loop.epochs=2",
                   "loop.verbose=0", "mlflow.log_model=false", f"mlflow.tracking_uri={store}")
    assert cfg.model.layers[-1].units == 100
    run(cfg, cwd=tmp_path)
    client, found = only_run(store)
    rates = per_epoch(client, found, "learning_rate")
    assert len(rates) == 2 and rates[1] < rates[0] and "stopped_epoch" in found.data.metrics
