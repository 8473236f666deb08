"""Resume is exact: a run stopped after an epoch and resumed equals the uninterrupted run, for every
model style, loop and option; its checkpoint is its own; its final record is written once."""

import json
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner import checkpoints
from runner.record import tracking
from runner.errors import ConfigError
from runner.train import run

from conftest import cli, only_run, runs

EPOCHS = 3
BASE = [f"loop.epochs={EPOCHS}", "dataset.limit=600", "loop.verbose=0", "mlflow.log_model=false"]


def interrupted_after(epoch, monkeypatch):
    """Ctrl-C right after `epoch` (1-based) is checkpointed and logged, as a user would press it."""
    real = tracking.MlflowMetrics.on_epoch_end

    def on_epoch_end(self, index, logs=None):
        real(self, index, logs)
        if index + 1 == epoch:
            raise KeyboardInterrupt("stopped by the test")

    monkeypatch.setattr(tracking.MlflowMetrics, "on_epoch_end", on_epoch_end)


def stopped_run(make_cfg, uri, tmp_path, monkeypatch, *overrides):
    """(client, run) of a run stopped by Ctrl-C after epoch 1: KILLED, with its checkpoint."""
    with monkeypatch.context() as patch:
        interrupted_after(1, patch)
        with pytest.raises(KeyboardInterrupt):
            run(make_cfg(*BASE, *overrides, f"mlflow.tracking_uri={uri}"), cwd=tmp_path)
    client, stopped = only_run(uri)
    assert stopped.info.status == "KILLED"
    return client, stopped


def history(uri, run_id, key="loss"):
    return [round(m.value, 5) for m in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)]


CASES = {
    "dropout": ["model=mlp"],
}
SLOW_CASES = {
    "custom loop": ["loop=custom"],
    "subclass": ["model-style=subclass", "model=mlp"],
    "mixed precision": ["loop.precision=mixed_bfloat16", "model=mlp"],
    "custom layers, custom loop": ["loop=custom", "model.custom_layers=[my_noise]", "model.layers=[{type: Flatten}, "
                                   "{type: my_noise.Noise, stddev: 0.3}, {type: Dense, units: 10, activation: softmax}]"],
}
NOISE = '''
import keras


@keras.saving.register_keras_serializable(package="my_noise")
class Noise(keras.layers.Layer):
    """Random at training time, like Dropout: its generator state must survive a resume."""

    def __init__(self, stddev, **kwargs):
        super().__init__(**kwargs)
        self.stddev = stddev
        self.generator = keras.random.SeedGenerator(7)

    def call(self, x, training=False):
        return x + keras.random.normal(keras.ops.shape(x), stddev=self.stddev, seed=self.generator) if training else x

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev}
'''


def check_resume_is_exact(make_cfg, tmp_path, monkeypatch, overrides):
    (tmp_path / "my_noise.py").write_text(NOISE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    reference = run(make_cfg(*BASE, *overrides, f"mlflow.tracking_uri={a}"), cwd=tmp_path)
    client, stopped = stopped_run(make_cfg, b, tmp_path, monkeypatch, *overrides)
    resumed = run(make_cfg(f"resume={stopped.info.run_id}", f"mlflow.tracking_uri={b}"), cwd=tmp_path)
    _, ref_run = only_run(a)
    for key in ("loss", "val_loss", "accuracy"):
        assert history(b, stopped.info.run_id, key) == history(a, ref_run.info.run_id, key), key
    assert round(resumed["test_loss"], 5) == round(reference["test_loss"], 5)
    assert client.get_run(stopped.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_stop_after_epoch_1_and_resume_equals_the_uninterrupted_run(make_cfg, tmp_path, monkeypatch, case):
    check_resume_is_exact(make_cfg, tmp_path, monkeypatch, CASES[case])


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES)
def test_resume_is_exact_for_every_loop_style_and_option(make_cfg, tmp_path, monkeypatch, case):
    check_resume_is_exact(make_cfg, tmp_path, monkeypatch, SLOW_CASES[case])


def test_a_checkpoint_of_another_run_is_refused(make_cfg, store, tmp_path, monkeypatch):
    stopped_run(make_cfg, store, tmp_path, monkeypatch)
    (manifest,) = tmp_path.glob("outputs/run-*/checkpoints/state.json")
    state = json.loads(manifest.read_text())
    assert state["epoch"] == 1 and len(state["history"]) == 1 and (manifest.parent / state["model"] / "model.weights.h5").is_file()
    with pytest.raises(ConfigError, match=r"belongs to run '\w+', not 'someone-else'; refusing"):
        checkpoints.load(manifest.parent, "someone-else")


@pytest.mark.slow
def test_resumed_final_logging_is_not_repeated(make_cfg, store, tmp_path, monkeypatch):
    """A kill during the final logging (after test_* were logged) must not log them twice."""
    with monkeypatch.context() as patch:
        real = tracking.log_model

        def killed_while_logging_the_model(*args, **kwargs):
            raise KeyboardInterrupt("killed during the final logging")

        patch.setattr(tracking, "log_model", killed_while_logging_the_model)
        with pytest.raises(KeyboardInterrupt):
            run(make_cfg(*BASE, f"mlflow.tracking_uri={store}"), cwd=tmp_path)
    client, found = only_run(store)
    assert found.info.status == "KILLED" and real is tracking.log_model
    assert "killed during the final logging" in found.data.tags["error"]
    run(make_cfg(f"resume={found.info.run_id}", f"mlflow.tracking_uri={store}"), cwd=tmp_path)
    finished = client.get_run(found.info.run_id)
    assert finished.info.status == "FINISHED" and "error" not in finished.data.tags  # no stale ending
    assert [m.step for m in client.get_metric_history(found.info.run_id, "test_loss")] == [EPOCHS]
    assert [m.step for m in client.get_metric_history(found.info.run_id, "loss")] == [1, 2, 3]


@pytest.mark.slow
def test_batch_loss_steps_continue_after_resume(make_cfg, store, tmp_path, monkeypatch):
    client, found = stopped_run(make_cfg, store, tmp_path, monkeypatch, "loop.log_every_n_steps=4", "loop=custom")
    run(make_cfg(f"resume={found.info.run_id}", f"mlflow.tracking_uri={store}"), cwd=tmp_path)
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "batch_loss")]
    # 600 examples, 540 for training: 17 batches of 32 an epoch, 51 in all; every 4th logged once.
    assert steps == list(range(4, 52, 4))


@pytest.mark.slow
def test_two_runs_started_together_each_own_their_files(tmp_path):
    """Same second, same pinned Hydra directory, a fresh store: no shared file, no schema race."""
    shared = ["hydra.run.dir=pinned", "loop.epochs=2", "loop.verbose=0"]
    procs = [cli(*shared, "seed=1", cwd=tmp_path, background=True),
             cli(*shared, "seed=2", "model=mlp", cwd=tmp_path, background=True)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    client, both = runs(tmp_path)
    assert len(both) == 2 and {r.info.status for r in both} == {"FINISHED"}
    dirs = {r.data.tags["runner.output_dir"] for r in both}
    assert len(dirs) == 2 and all(Path(d).parent == (tmp_path / "pinned").resolve() for d in dirs)
    for found in both:
        logged = Path(client.download_artifacts(found.info.run_id, "config.yaml", str(tmp_path / found.info.run_id)))
        seed = 2 if found.data.params["model.layers.0.type"] == "Flatten" else 1  # mlp starts with Flatten
        assert f"seed: {seed}" in logged.read_text()
        manifest = json.loads((Path(found.data.tags["runner.output_dir"]) / "checkpoints/state.json").read_text())
        assert manifest["run_id"] == found.info.run_id and manifest["epoch"] == 2


def ignores_sigterm(pid):
    """Whether the process ignores SIGTERM now (Linux: the SigIgn mask in /proc/PID/status)."""
    mask = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("SigIgn:"))
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.slow
def test_a_second_sigterm_during_cleanup_still_ends_the_run_killed(tmp_path):
    proc = cli("loop.epochs=500", "loop.verbose=0", cwd=tmp_path, background=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("outputs/*/*/run-*/checkpoints/state.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    # The runner's handler has run once it ignores SIGTERM (it does so first, then unwinds into the
    # cleanup): only then is the second signal sent, so it lands during the cleanup, whatever the timing.
    deadline = time.monotonic() + 30
    while not ignores_sigterm(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, "the first SIGTERM was never handled"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    client, found = only_run(tmp_path)
    assert found.info.status == "KILLED"


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
@pytest.mark.parametrize("damage, named, why", [
    (lambda d: _truncate(d / "epoch-0001" / "model.weights.h5"), "epoch-0001/model.weights.h5", r"is damaged \("),
    (lambda d: (d / "state.json").write_text(""), "state.json", "manifest .* is damaged \\(Expecting value"),
    (lambda d: [p.unlink() for p in (d / "epoch-0001").iterdir() if p.is_file()], "epoch-0001/config.json",
     "named by .*state.json, is missing"),
], ids=["truncated weights", "empty manifest", "missing epoch files"])
def test_a_damaged_checkpoint_is_one_line_and_leaves_the_run_as_it_was(make_cfg, store, tmp_path, monkeypatch,
                                                                         damage, named, why):
    import re

    client, found = stopped_run(make_cfg, store, tmp_path, monkeypatch)
    before = client.get_run(found.info.run_id)
    directory = Path(before.data.tags["runner.output_dir"]) / "checkpoints"
    damage(directory)
    done = cli(f"resume={found.info.run_id}", f"mlflow.tracking_uri={store}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("runner: config error: resume: ") and named in line and re.search(why, line), line
    after = client.get_run(found.info.run_id)
    assert after.info.status == before.info.status == "KILLED"
    assert after.data.tags == before.data.tags and after.info.end_time == before.info.end_time
