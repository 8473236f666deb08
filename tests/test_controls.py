"""What people edit in an experiment: callbacks, schedules, class weights, regularisation, their own step."""

import subprocess
import sys

import pytest

from runner import config
from runner.errors import ConfigError
from runner.train import run

from conftest import only_run

QUICK = ["dataset.limit=300", "loop.verbose=0", "mlflow.log_model=false"]


def per_epoch(client, found, key):
    return [m.value for m in sorted(client.get_metric_history(found.info.run_id, key), key=lambda m: m.step)]


@pytest.mark.parametrize("overrides,message", [
    (["callbacks=early_stopping", "+callbacks.early_stopping.patiense=2"],
     r"callbacks.early_stopping: unknown argument 'patiense' for keras.callbacks.EarlyStopping. Did you mean 'patience'\?"),
    (["+callbacks.stop={class_name: EarlyStoping}"],
     r"callbacks.stop: unknown type 'EarlyStoping': not a class in keras.callbacks. Did you mean 'EarlyStopping'\?"),
    (["+callbacks.log={class_name: LambdaCallback}"], r"keras.callbacks.LambdaCallback is not allowed here: it runs"),
    (["callbacks=early_stopping", "callbacks.early_stopping.monitor=val_auc"],
     r"callbacks.early_stopping.monitor: 'val_auc' is not a metric this run logs per epoch; choose one of "),
    (["callbacks=early_stopping", "callbacks.early_stopping.monitor=val_accuracy", "+callbacks.early_stopping.mode=min"],
     r"callbacks.early_stopping.mode: 'min' would keep the worst val_accuracy; .* use mode: max"),
    (["callbacks=reduce_lr_on_plateau", "optimizer.learning_rate={class_name: CosineDecay, initial_learning_rate: 0.01,"
      " decay_steps: auto}"],
     r"callbacks.reduce_lr_on_plateau: ReduceLROnPlateau cannot change a learning rate that optimizer.learning_rate's "
     r"CosineDecay computes"),
    (["callbacks=best_checkpoint", "+callbacks.best_checkpoint.filepath=/tmp/x.h5"], r"remove `filepath`"),
    (["optimizer.learning_rate={class_name: CosineDecai, initial_learning_rate: 0.01, decay_steps: auto}"],
     r"optimizer.learning_rate: unknown type 'CosineDecai': not a class in keras.optimizers.schedules. Did you mean"),
    (["optimizer.learning_rate={class_name: CosineDecay, initial_learning_rate: 0.01, decay_steps: soon}"],
     r"optimizer.learning_rate.decay_steps: expected an integer, `auto` .* got 'soon'"),
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
def test_the_logged_learning_rate_follows_cosine_decay(make_cfg, store, tmp_path, loop):
    cfg = make_cfg(f"loop={loop}", "loop.epochs=4", "dataset.limit=320",
                   "optimizer.learning_rate={class_name: CosineDecay, initial_learning_rate: 0.01, decay_steps: auto}",
                   "loop.verbose=0", "mlflow.log_model=false", f"mlflow.tracking_uri={store}")
    run(cfg, cwd=tmp_path)
    client, found = only_run(store)
    import math

    rates = per_epoch(client, found, "learning_rate")
    total = 4 * 9  # 288 training examples: 9 batches of 32 per epoch
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * (9 * e - 1) / total)) for e in range(1, 5)]
    assert rates == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert rates[0] > rates[1] > rates[2] > rates[3]


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
    from test_failures import runs, start

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    assert start(args, tmp_path / "a").wait(timeout=600) == 0
    killed = start(args, tmp_path / "b")
    wait_for_epoch(tmp_path / "b", killed, 2)
    killed.kill()
    assert killed.wait() == -9
    uri = f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    _, (left,) = runs(uri)
    resumed = start([f"resume={left.info.run_id}"], tmp_path / "b")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    client, (found,) = runs(uri)
    reference_client, (reference,) = runs(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    return (client, found), (reference_client, reference)


REGULARISED = ["+model.layers.3.kernel_regularizer={class_name: L2, l2: 0.001}", "+model.layers.3.kernel_initializer=he_normal",
               "+model.layers.3.kernel_constraint={class_name: MaxNorm, max_value: 3.0}", "+optimizer.clipnorm=1.0"]


@pytest.mark.parametrize("overrides,message", [
    (["+dataset.class_weight={0: 1.0, 10: 5.0}"],
     r"dataset.class_weight: label 10 does not exist; the labels are the integers 0..9 \(dataset.num_classes=10\)"),
    (["+dataset.class_weight=balanced"], r"dataset.class_weight: expected `auto` or \{label: weight\}, got 'balanced'"),
    (["+model.layers.3.kernel_regularizer={class_name: L3, l2: 0.1}"],
     r"model.layers\[3\] \(Dense\).kernel_regularizer: unknown type 'L3': not a class in keras.regularizers."),
    (["+model.layers.3.kernel_regularizer={class_name: L2, l3: 0.1}"],
     r"kernel_regularizer: unknown argument 'l3' for keras.regularizers.L2."),
    (["+model.layers.3.kernel_initializer=he_normall"],
     r"model.layers\[3\] \(Dense\).kernel_initializer: unknown initializer 'he_normall'"),
    (["+model.layers.3.kernel_constraint={class_name: MaxNrom}"], r"not a class in keras.constraints. Did you mean 'MaxNorm'"),
    (["+optimizer.clip_norm=1.0"], r"optimizer: unknown argument 'clip_norm' for keras.optimizers.Adam. Did you mean 'clipnorm'"),
])
def test_weighting_and_regularisation_misuse_is_refused(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(make_cfg(*overrides))


def test_regularised_layers_are_built_with_the_keras_objects(make_cfg):
    import keras

    from runner.train import prepare

    cfg = make_cfg(*REGULARISED, "loop.epochs=1", *QUICK)
    dense = prepare(cfg, config.validate(cfg)).model.layers[-2]
    assert isinstance(dense.kernel_regularizer, keras.regularizers.L2) and dense.kernel_regularizer.l2 == pytest.approx(1e-3)
    assert isinstance(dense.kernel_initializer, keras.initializers.HeNormal)
    assert isinstance(dense.kernel_constraint, keras.constraints.MaxNorm)


@pytest.mark.slow
def test_fit_and_custom_agree_with_class_weights_and_regularisation(make_cfg, store, tmp_path):
    logged = {}
    for loop in ("fit", "custom"):
        cfg = make_cfg(f"loop={loop}", *REGULARISED, "+dataset.class_weight=auto", "loop.epochs=2", *QUICK,
                       f"mlflow.tracking_uri={store}", f"mlflow.experiment_name={loop}")
        run(cfg, cwd=tmp_path)
        client, found = only_run(store, experiment=loop)
        logged[loop] = {k: per_epoch(client, found, k) for k in ("loss", "val_loss", "regularization_loss", "accuracy")}
    # The same seed, batches and arithmetic up to float summation order: seen equal to ~4 decimals.
    for key, values in logged["fit"].items():
        assert logged["custom"][key] == pytest.approx(values, rel=2e-3), key
    assert 0 < logged["fit"]["regularization_loss"][-1] < logged["fit"]["loss"][-1]


def test_class_weights_change_what_is_learned(make_cfg):
    from runner.train import prepare

    losses = {}
    for weights in ("null", "{0: 20.0}"):
        cfg = make_cfg("loop=custom", f"+dataset.class_weight={weights}", "loop.epochs=1", *QUICK)
        losses[weights] = prepare(cfg, config.validate(cfg)).train()["test_loss"]
    assert losses["null"] != pytest.approx(losses["{0: 20.0}"], rel=1e-3)


EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "steps"


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


def test_a_step_with_the_wrong_signature_is_refused_before_training(make_cfg, tmp_path, monkeypatch):
    from runner.train import prepare

    (tmp_path / "bad_steps.py").write_text("def make(model, loss):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_cfg("loop=custom", "loop.step=bad_steps.make", "loop.step_modules=[bad_steps]", *QUICK)
    work = prepare(cfg, config.validate(cfg))
    with pytest.raises(ConfigError, match=r"loop.step: bad_steps.make\(model, loss\) must take \('model', 'loss_fn', "):
        work.train()
    cfg = make_cfg("loop=custom", "loop.step=bad_steps.missing", "loop.step_modules=[bad_steps]", *QUICK)
    with pytest.raises(ConfigError, match=r"loop.step: module 'bad_steps' has no function 'missing'"):
        prepare(cfg, config.validate(cfg)).train()


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_gradient_accumulation_matches_the_big_batch(make_cfg, loop):
    from runner.train import prepare

    # 1152 training examples: 9 batches of 128, or 36 of 32 in groups of 4 holding the same examples
    # (each epoch's order depends on the seed only), so the same mean gradients reach Adam. loop=custom
    # accumulates in its own step, loop=fit in the optimizer (gradient_accumulation_steps).
    common = [f"loop={loop}", "dataset.limit=1280", "loop.epochs=2", "loop.verbose=0"]
    logged = {}
    for name, overrides in (("big", ["loop.batch_size=128"]), ("accumulated", ["loop.batch_size=32", "loop.accumulate_steps=4"])):
        cfg = make_cfg(*common, *overrides)
        work = prepare(cfg, config.validate(cfg))
        seen = []

        import keras

        class Spy(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append((logs["loss"], logs["val_loss"], int(self.model.optimizer.iterations.numpy())))

        logged[name] = (work.train(callbacks=[Spy()]), seen)
    (big, big_epochs), (acc, acc_epochs) = logged["big"], logged["accumulated"]
    assert [e[2] for e in big_epochs] == [e[2] for e in acc_epochs] == [9, 18]  # optimizer steps, not batches
    # Stated tolerance: 1e-4 relative (float32 sums in another order; seen agreeing to ~1e-6).
    for (b_loss, b_val, _), (a_loss, a_val, _) in zip(big_epochs, acc_epochs):
        assert a_loss == pytest.approx(b_loss, rel=1e-4) and a_val == pytest.approx(b_val, rel=1e-4)
    assert acc["test_loss"] == pytest.approx(big["test_loss"], rel=1e-4)


@pytest.mark.slow
def test_a_user_step_module_outside_the_package_trains_through_loop_step(make_cfg, store, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    plain = make_cfg("loop=custom", "loop.epochs=2", *QUICK, f"mlflow.tracking_uri={store}", "mlflow.experiment_name=plain")
    run(plain, cwd=tmp_path)
    cfg = make_cfg("loop=custom", "loop.step=consistency.make_train_step", "loop.step_modules=[consistency]",
                   "loop.epochs=2", *QUICK, f"mlflow.tracking_uri={store}")
    results = run(cfg, cwd=tmp_path)
    client, found = only_run(store)
    assert found.info.status == "FINISHED" and found.data.params["loop.step"] == "consistency.make_train_step"
    assert results["test_accuracy"] > 0.3  # it learned (chance is 0.1)
    (plain_run,) = client.search_runs([client.get_experiment_by_name("plain").experiment_id])
    # The second loss term is in the training loss, so the two runs differ from the first step on.
    assert abs(per_epoch(client, found, "loss")[0] - per_epoch(client, plain_run, "loss")[0]) > 1e-5
    # The step's own metric: one point per epoch, beside loss, training only.
    consistency = per_epoch(client, found, "consistency")
    assert len(consistency) == 2 and all(0 < v < per_epoch(client, found, "loss")[0] for v in consistency)
    assert "val_consistency" not in found.data.metrics and "test_consistency" not in found.data.metrics
    assert "consistency" not in plain_run.data.metrics


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
