"""loop=custom: a tf.GradientTape step that keeps fit's contract (metrics, callbacks, MLflow record)."""

import keras
import numpy as np
import pytest

from runner import config, step
from runner.train import prepare, run

from conftest import runs


@pytest.mark.slow
@pytest.mark.parametrize("style", ["sequential", "subclass"])
def test_custom_and_fit_keep_one_contract(make_cfg, store, tmp_path, style):
    results = {}
    for loop in ("fit", "custom"):
        cfg = make_cfg(f"loop={loop}", f"model-style={style}", "loop.epochs=1", f"mlflow.tracking_uri={store}")
        results[loop] = run(cfg, cwd=tmp_path)
    client, (fit_run, custom_run) = runs(store)
    assert fit_run.data.metrics.keys() == custom_run.data.metrics.keys()
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= custom_run.data.metrics.keys()
    assert custom_run.info.status == "FINISHED"
    # Same seed, data, initial weights and batches: the first epoch is the same computation up
    # to float summation order, so the results agree to rounding (seen equal to 4 decimals here):
    # at most one of 360 test images may flip, the loss within 1e-3.
    assert abs(results["fit"]["test_accuracy"] - results["custom"]["test_accuracy"]) <= 1 / 360 + 1e-9
    assert results["custom"]["test_loss"] == pytest.approx(results["fit"]["test_loss"], rel=1e-3)
    assert results["fit"]["test_accuracy"] > 0.5  # one epoch on digits; chance is 0.1


def prepared(make_cfg, *overrides):
    cfg = make_cfg(*overrides)
    return prepare(cfg, config.validate(cfg))


def test_custom_loop_changes_the_weights_and_reports_fit_names(make_cfg):
    work = prepared(make_cfg, "loop=custom", "loop.epochs=2", "dataset.limit=200", "loop.verbose=0")
    before = [w.copy() for w in work.model.get_weights()]
    first_loss = float(work.model.evaluate(work.val_data, verbose=0)[0])
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, sorted(logs)))

    results = work.train(callbacks=[Spy()])
    assert seen == [(e, ["accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"]) for e in (0, 1)]
    assert sorted(results) == ["test_accuracy", "test_loss"]
    assert all(not np.array_equal(a, b) for a, b in zip(before, work.model.get_weights()))
    # Training lowered the validation loss (from ~2.3 at random init), and beats chance (0.1) by far.
    assert float(work.model.evaluate(work.val_data, verbose=0)[0]) < 0.8 * first_loss
    assert results["test_accuracy"] > 0.3


def test_eager_and_compiled_steps_give_the_same_loss(make_cfg):
    import tensorflow as tf

    model = prepared(make_cfg).model
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    y = np.arange(16) % 10
    _, test_step = step.make_steps(model, model.loss, model.optimizer, step.metrics())
    eager = float(test_step(x, y))
    compiled = float(tf.function(test_step)(x, y))
    assert compiled == pytest.approx(eager, rel=1e-6)
    train_step, _ = step.make_steps(model, model.loss, model.optimizer, step.metrics())
    weights = model.get_weights()
    eager_train = float(train_step(x, y))
    model.set_weights(weights)
    assert float(tf.function(train_step)(x, y)) == pytest.approx(eager_train, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_batch_loss_every_n_steps(make_cfg, store, tmp_path, loop):
    cfg = make_cfg(f"loop={loop}", "loop.epochs=2", "dataset.limit=320", "loop.log_every_n_steps=3",
                   "mlflow.log_model=false", f"mlflow.tracking_uri={store}")
    run(cfg, cwd=tmp_path)
    client, (found,) = runs(store)
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "batch_loss")]
    assert steps == [3, 6, 9, 12, 15, 18]  # 288 training examples: 9 batches of 32 per epoch


def test_eager_custom_loop_runs(make_cfg, store, tmp_path):
    cfg = make_cfg("loop=custom", "loop.eager=true", "loop.epochs=1", "dataset.limit=300", "mlflow.log_model=false",
                   f"mlflow.tracking_uri={store}")
    assert run(cfg, cwd=tmp_path)["test_loss"] < 2.2  # below the untrained ~2.30 (ln 10): it learned


TWO_REPLICAS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from hydra import compose, initialize_config_module
from runner.train import run
results = {}
for loop in ("fit", "custom"):
    for strategy in ("null", "mirrored"):
        with initialize_config_module(config_module="runner.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"loop={loop}", f"loop.strategy={strategy}",
                          "loop.epochs=2", "loop.verbose=0", "dataset.limit=640", "mlflow.log_model=false",
                          f"mlflow.tracking_uri=sqlite:///{sys.argv[1]}/mlflow.db"])
        results[f"{loop} {strategy}"] = run(cfg, cwd=sys.argv[1])
from runner import environment
results["replicas"] = environment.strategy("mirrored").num_replicas_in_sync
print(json.dumps(results))
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpu_replicas_gives_the_same_metrics(tmp_path):
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", TWO_REPLICAS, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["replicas"] == 2
    for loop in ("fit", "custom"):
        one, two = results[f"{loop} null"], results[f"{loop} mirrored"]
        # Two replicas average the gradients of two half batches: the same mean gradient as one
        # device, summed in another order, so the metrics agree to float32 rounding over 36 steps.
        for key in ("val_loss", "test_loss", "test_accuracy"):
            assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-3), (loop, key)


def test_the_custom_loop_traces_each_step_once_whatever_the_batch_sizes(make_cfg, monkeypatch):
    """A partial last batch (training, validation and test) runs the step traced for the datasets' spec,
    not a second trace for its shape, as fit's steps."""
    traces, real = [], step.make_steps

    def counting(fn, name):  # its body runs when TensorFlow traces it, not when a traced step runs
        def traced(x, y):
            traces.append(name)
            return fn(x, y)
        return traced

    def counted(*args, **kwargs):
        return tuple(counting(fn, name) for fn, name in zip(real(*args, **kwargs), ("train", "test")))

    monkeypatch.setattr(step, "make_steps", counted)
    work = prepared(make_cfg, "loop=custom", "loop.epochs=2", "dataset.limit=128", "loop.verbose=0")
    sizes = {name: {len(x) for x, _ in ds} for name, ds in (("train", work.train_data[0]), ("val", work.val_data),
                                                              ("test", work.test_data))}
    assert len(sizes["train"]) > 1 and len(sizes["val"] | sizes["test"]) > 1, sizes  # partial batches to trace for
    work.train()
    assert sorted(traces) == ["test", "train"]


def test_fit_traces_its_train_step_once(make_cfg, monkeypatch):
    """The optimizer's, loss's and metrics' state is built before fit (loops.built): without it, the first
    trace creates variables and TensorFlow traces the step a second time (plain Keras does, measured)."""
    from keras.src.backend.tensorflow import trainer

    work = prepared(make_cfg, "loop.epochs=2", "dataset.limit=128", "loop.verbose=0")
    traces, real = [], trainer.TensorFlowTrainer.train_step
    monkeypatch.setattr(trainer.TensorFlowTrainer, "train_step", lambda self, data: traces.append(1) or real(self, data))
    assert not work.model.optimizer.built
    work.train()
    assert work.model.optimizer.built and len(traces) == 1
