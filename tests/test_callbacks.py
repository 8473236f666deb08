"""The callbacks people configure (`callbacks=`): early stopping and its best weights, reduce-LR-on-plateau,
the best checkpoint, their checks, and their state surviving a kill and a resume."""

import subprocess
import sys

import pytest

from runner import config
from runner.errors import ConfigError
from runner.train import run

from conftest import QUICK, cli, only_run, per_epoch, runs


@pytest.mark.parametrize("overrides,message", [
    (["callbacks=early_stopping", "callbacks.early_stopping.monitor=val_auc"],
     r"callbacks.early_stopping.monitor: 'val_auc' is not a metric this run logs per epoch; choose one of "),
    (["callbacks=early_stopping", "callbacks.early_stopping.monitor=val_accuracy", "+callbacks.early_stopping.mode=min"],
     r"callbacks.early_stopping.mode: 'min' would keep the worst val_accuracy; .* use mode: max"),
    (["callbacks=reduce_lr_on_plateau", "optimizer.learning_rate={class_name: CosineDecay, initial_learning_rate: 0.01,"
      " decay_steps: auto}"],
     r"callbacks.reduce_lr_on_plateau: ReduceLROnPlateau cannot change a learning rate that optimizer.learning_rate's "
     r"CosineDecay computes"),
    (["callbacks=best_checkpoint", "+callbacks.best_checkpoint.filepath=/tmp/x.h5"], r"remove `filepath`"),
])
def test_misuse_is_refused_with_a_message(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(make_cfg(*overrides))


def test_misuse_is_found_before_tensorflow_is_imported(tmp_path):
    code = (
        "import sys\nfrom hydra import compose, initialize_config_module\nfrom runner import config\n"
        "with initialize_config_module(config_module='runner.conf', version_base='1.3'):\n"
        "    cfg = compose(config_name='config', overrides=['callbacks=early_stopping',"
        " 'callbacks.early_stopping.monitor=val_auc'])\n"
        "try:\n    config.validate(cfg)\nexcept config.ConfigError as e:\n    print(e)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'val_auc' is not a metric" in out and out.strip().endswith("False")


def test_the_groups_compose_together(make_cfg):
    cfg = make_cfg("callbacks=[early_stopping,reduce_lr_on_plateau,best_checkpoint]", "callbacks.early_stopping.patience=3")
    config.validate(cfg)
    assert list(cfg.callbacks) == ["early_stopping", "reduce_lr_on_plateau", "best_checkpoint"]
    assert cfg.callbacks.early_stopping.patience == 3


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_early_stopping_stops_records_and_tests_the_restored_epoch(make_cfg, store, tmp_path, loop):
    # An SGD this slow on 270 examples soon stops improving val_loss by min_delta.
    cfg = make_cfg(f"loop={loop}", "callbacks=early_stopping", "callbacks.early_stopping.patience=1",
                   "+callbacks.early_stopping.min_delta=0.05", "loop.epochs=50", *QUICK, f"mlflow.tracking_uri={store}")
    results = run(cfg, cwd=tmp_path)
    client, found = only_run(store)
    metrics = found.data.metrics
    epochs = len(per_epoch(client, found, "loss"))
    assert 2 <= epochs < 50 and metrics["stopped_epoch"] == epochs
    # the test metrics (and the model) sit at the last epoch trained, not at loop.epochs
    assert [m.step for m in client.get_metric_history(found.info.run_id, "test_loss")] == [epochs]
    restored = int(metrics["restored_epoch"])
    best = 0  # Keras' rule: an epoch is better only by more than min_delta
    for epoch, value in enumerate(per_epoch(client, found, "val_loss")):
        if value < per_epoch(client, found, "val_loss")[best] - 0.05:
            best = epoch
    assert restored == best + 1
    assert found.data.tags["runner.test_weights"].startswith(f"epoch {restored}, the best val_loss (early_stopping")
    assert results["test_loss"] == metrics["test_loss"]


def test_best_weights_are_restored_even_when_patience_never_ran_out(make_cfg):
    from runner.train import prepare

    cfg = make_cfg("callbacks=early_stopping", "callbacks.early_stopping.patience=100",
                   "callbacks.early_stopping.monitor=val_accuracy", "optimizer.learning_rate=0.05", "loop.epochs=4", *QUICK)
    work = prepare(cfg, config.validate(cfg))
    seen = []

    import keras

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((logs["val_accuracy"], [w.copy() for w in self.model.get_weights()]))

    results = work.train(callbacks=[Spy()])
    assert results["stopped_epoch"] == 0  # ran every epoch
    best = max(range(4), key=lambda e: (seen[e][0], -e))  # Keras keeps the first of equals
    assert results["restored_epoch"] == best + 1
    for restored, kept in zip(work.model.get_weights(), seen[best][1]):
        assert (restored == kept).all()
    assert work.test_weights.startswith(f"epoch {best + 1}, the best val_accuracy")


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_reduce_lr_on_plateau_lowers_the_logged_rate(make_cfg, store, tmp_path, loop):
    cfg = make_cfg(f"loop={loop}", "callbacks=reduce_lr_on_plateau", "callbacks.reduce_lr_on_plateau.patience=1",
                   "+callbacks.reduce_lr_on_plateau.min_delta=10.0", "loop.epochs=3", *QUICK, f"mlflow.tracking_uri={store}")
    run(cfg, cwd=tmp_path)
    client, found = only_run(store)
    # min_delta 10: no epoch counts as better, so every epoch after the first halves the rate.
    assert per_epoch(client, found, "learning_rate") == pytest.approx([1e-3, 1e-3, 5e-4])


def test_best_checkpoint_restores_the_best_epoch(make_cfg, store, tmp_path):
    cfg = make_cfg("callbacks=best_checkpoint", "loop.epochs=3", "optimizer.learning_rate=0.05", *QUICK,
                   f"mlflow.tracking_uri={store}")
    run(cfg, cwd=tmp_path)
    client, found = only_run(store)
    accuracies = per_epoch(client, found, "val_accuracy")
    assert found.data.metrics["restored_epoch"] == 1 + accuracies.index(max(accuracies))
    assert "(best_checkpoint restored them)" in found.data.tags["runner.test_weights"]


@pytest.mark.slow
def test_the_best_epoch_is_the_logged_model_that_mlflow_finds_by_its_metric(make_cfg, store, tmp_path):
    cfg = make_cfg("callbacks=best_checkpoint", "loop.epochs=4", "optimizer.learning_rate=0.05", "dataset.limit=300",
                   "loop.verbose=0", "mlflow.log_figures=false", f"mlflow.tracking_uri={store}")
    run(cfg, cwd=tmp_path)
    client, found = only_run(store)
    restored = int(found.data.metrics["restored_epoch"])
    (best, *_) = client.search_logged_models([found.info.experiment_id],
                                             order_by=[{"field_name": "metrics.val_accuracy", "ascending": False}])
    linked = {m.key: m for m in best.metrics}
    assert best.source_run_id == found.info.run_id and linked["val_accuracy"].step == restored
    assert linked["val_accuracy"].value == max(per_epoch(client, found, "val_accuracy"))
    _digits_npz(tmp_path / "new.npz")  # and runner predict takes it
    predicted = cli("predict", f"models:/{best.model_id}", "new.npz", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store})
    assert predicted.returncode == 0 and predicted.stdout.count("\n") == 6, predicted.stderr[-2000:]


def _digits_npz(path):
    import numpy as np
    from sklearn.datasets import load_digits

    np.savez(path, x=(load_digits().images[:5] * 255 / 16).astype(np.uint8)[..., None])


def wait_for_epoch(cwd, proc, epoch, timeout=180):
    import json
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for manifest in Path(cwd).glob("outputs/*/*/run-*/checkpoints/state.json"):
            try:
                if json.loads(manifest.read_text())["epoch"] >= epoch:
                    return
            except ValueError:
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint of epoch {epoch} appeared")


RESUMABLE = ["callbacks=[early_stopping,reduce_lr_on_plateau]", "callbacks.early_stopping.patience=3",
             "+callbacks.early_stopping.min_delta=0.02", "callbacks.reduce_lr_on_plateau.patience=1",
             "+callbacks.reduce_lr_on_plateau.min_delta=0.05", "loop.epochs=12", "loop.verbose=0", "mlflow.log_model=false"]


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_kill_after_epoch_2_and_resume_equals_the_uninterrupted_run_with_callbacks(tmp_path, loop):
    (client, found), (reference_client, reference) = killed_and_resumed(tmp_path, [*RESUMABLE, f"loop={loop}"])
    for key in ("loss", "val_loss", "learning_rate"):
        got = per_epoch(client, found, key)
        want = per_epoch(reference_client, reference, key)
        assert [round(v, 5) for v in got] == [round(v, 5) for v in want], key
    lr = per_epoch(reference_client, reference, "learning_rate")
    assert min(lr) < lr[0]  # the plateau callback acted, so its state mattered
    for key in ("stopped_epoch", "restored_epoch", "test_loss"):
        assert round(found.data.metrics[key], 5) == round(reference.data.metrics[key], 5), key


AUGMENTED = ["callbacks=early_stopping", "callbacks.early_stopping.patience=2",
             "+callbacks.early_stopping.min_delta=0.02",
             "optimizer.learning_rate={class_name: CosineDecay, initial_learning_rate: 0.01, decay_steps: auto}",
             "dataset.augment=[{type: RandomTranslation, height_factor: 0.2, width_factor: 0.2}, {type: MixUp}]",
             "loop.epochs=10", "loop.verbose=0", "mlflow.log_model=false"]


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_kill_after_epoch_2_and_resume_equals_the_uninterrupted_run_with_augmentation(tmp_path, loop):
    (client, found), (reference_client, reference) = killed_and_resumed(tmp_path, [*AUGMENTED, f"loop={loop}"])
    for key in ("loss", "accuracy", "val_loss", "learning_rate"):
        got = per_epoch(client, found, key)
        want = per_epoch(reference_client, reference, key)
        assert len(got) >= 3 and [round(v, 5) for v in got] == [round(v, 5) for v in want], key
    for key in ("test_loss", "test_accuracy"):
        assert round(found.data.metrics[key], 5) == round(reference.data.metrics[key], 5), key


def killed_and_resumed(tmp_path, args):
    """((client, run) killed after epoch 2 and resumed, (client, run) uninterrupted) of one `runner` command."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    assert cli(*args, cwd=tmp_path / "a", background=True).wait(timeout=600) == 0
    killed = cli(*args, cwd=tmp_path / "b", background=True)
    wait_for_epoch(tmp_path / "b", killed, 2)
    killed.kill()
    assert killed.wait() == -9
    uri = f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    _, (left,) = runs(uri)
    resumed = cli(f"resume={left.info.run_id}", cwd=tmp_path / "b", background=True)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    client, (found,) = runs(uri)
    reference_client, (reference,) = runs(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    return (client, found), (reference_client, reference)
