"""Your own training step (`loop.step`, runner/step.py) and gradient accumulation (`loop.accumulate_steps`):
a wrong step is refused before training, a user's module trains, and accumulated batches match a big one."""

from pathlib import Path

import pytest

from runner import config
from runner.errors import ConfigError
from runner.train import run

from conftest import QUICK, only_run, per_epoch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "steps"


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
@pytest.mark.parametrize("loop, limit, updates", [
    ("custom", 1280, 9), ("fit", 1280, 9),  # 1152 training examples: 9 batches of 128, 36 of 32 in 9 groups of 4
    ("custom", 1300, 10), ("fit", 1300, 10),  # 1170: the epoch's last group is the partial batch of 18 alone
    ("custom", 1350, 10),  # 1215: the last group is [32, 31]: weighted by size, as batch 128's last batch of 63
    ("custom", 1400, 10),  # 1260: the last group is [32, 32, 32, 12], batch 128's last batch of 108
])
def test_gradient_accumulation_matches_the_big_batch(make_cfg, loop, limit, updates):
    from runner.train import prepare

    # Groups of 4 batches of 32 hold the same examples as batches of 128 (each epoch's order depends on
    # the seed only), so the same mean gradients reach Adam, the epoch's last partial group included.
    # loop=custom accumulates in its own step, loop=fit in the optimizer (gradient_accumulation_steps),
    # whose pending group loops.FlushAccumulation applies at the epoch's end. Keras weighs a group's
    # batches equally: fit is exact when the partial batch is alone in its group (cases 1280 and 1300).
    common = [f"loop={loop}", f"dataset.limit={limit}", "loop.epochs=2", "loop.verbose=0"]
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
    assert [e[2] for e in big_epochs] == [e[2] for e in acc_epochs] == [updates, 2 * updates]  # optimizer updates
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
