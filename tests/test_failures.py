"""Runs that go wrong: NaN losses, SIGTERM, kill -9 and resume. Nothing is lost, nothing left RUNNING."""

import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner.errors import TrainingDiverged
from runner.record import Tag
from runner.train import run

from conftest import cli, runs

DIVERGE = ["optimizer=sgd", "optimizer.learning_rate=1e12", "optimizer.momentum=0.0"]


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_diverging_run_stops_at_the_first_nan_and_fails(make_cfg, store, tmp_path, loop):
    cfg = make_cfg(*DIVERGE, f"loop={loop}", "loop.epochs=3", f"mlflow.tracking_uri={store}")
    with pytest.raises(TrainingDiverged, match=r"non-finite at epoch 1, step \d+ \(last finite running loss: "):
        run(cfg, cwd=tmp_path)
    client, (found,) = runs(store)
    assert found.info.status == "FAILED"
    assert "TrainingDiverged: the training loss became non-finite at epoch 1" in found.data.tags["error"]
    assert client.get_metric_history(found.info.run_id, "loss") == []  # stopped inside epoch 1
    assert found.data.tags[Tag.COMMAND] and "environment/requirements.txt" in {  # what it ran on
        a.path for a in client.list_artifacts(found.info.run_id, "environment")}


def test_a_failed_read_of_the_environment_leaves_the_runs_own_error(make_cfg, store, tmp_path, monkeypatch):
    def broken(cwd):
        raise RuntimeError("git exploded")

    monkeypatch.setattr("runner.record.provenance.tags", broken)
    with pytest.raises(TrainingDiverged):
        run(make_cfg(*DIVERGE, "loop.epochs=2", f"mlflow.tracking_uri={store}"), cwd=tmp_path)
    _, (found,) = runs(store)
    assert found.info.status == "FAILED" and found.data.tags["error"].startswith("TrainingDiverged: ")
    assert Tag.COMMAND not in found.data.tags


def wait_for_checkpoint(cwd, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(Path(cwd).glob("outputs/*/*/run-*/checkpoints/state.json")):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow  # a subprocess CLI run: the fast suite keeps the in-process twin
def test_cli_diverging_run_exits_3(tmp_path):
    proc = cli(*DIVERGE, "loop.verbose=0", cwd=tmp_path, background=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    assert err.strip().splitlines()[-1].startswith("runner: training diverged: the training loss became non-finite")


@pytest.mark.slow
def test_sigterm_marks_the_run_killed_keeps_the_checkpoint_and_exits_promptly(tmp_path):
    proc = cli("loop.epochs=500", "loop.verbose=0", cwd=tmp_path, background=True)
    wait_for_checkpoint(tmp_path, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 143, err
    assert "runner: interrupted: terminated by SIGTERM" in err
    _, (found,) = runs(tmp_path)
    assert found.info.status == "KILLED"
    assert list(tmp_path.glob("outputs/*/*/run-*/checkpoints/epoch-*/model.weights.h5"))


@pytest.mark.slow
def test_kill_9_then_resume_gives_one_point_per_epoch_and_the_same_result(tmp_path):
    args = ["loop.epochs=12", "loop.verbose=0", "mlflow.log_model=false"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    uninterrupted = cli(*args, cwd=tmp_path / "a", background=True)
    killed = cli(*args, cwd=tmp_path / "b", background=True)
    wait_for_checkpoint(tmp_path / "b", killed)
    killed.kill()
    killed.wait()
    assert uninterrupted.wait(timeout=300) == 0
    uri = f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    _, (left,) = runs(uri)
    assert left.info.status == "RUNNING"  # what kill -9 leaves behind
    resumed = cli(f"resume={left.info.run_id}", cwd=tmp_path / "b", background=True)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "marked it KILLED" in err  # the next start noticed the dead run
    client, (found,) = runs(uri)
    assert found.info.run_id == left.info.run_id and found.info.status == "FINISHED"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(found.info.run_id, key)] == list(range(1, 13)), key
    _, (reference,) = runs(tmp_path / "a")
    # Same batches in the same order (the order is a function of seed and epoch) and the
    # restored optimizer state: the same arithmetic, equal up to float summation order.
    for key in ("test_accuracy", "test_loss", "loss"):
        assert found.data.metrics[key] == pytest.approx(reference.data.metrics[key], rel=1e-4), key


def test_a_kill_while_a_failed_run_waits_for_its_environment_ends_it_killed_at_once(store, monkeypatch):
    import concurrent.futures
    import threading

    import mlflow

    from runner import record
    from runner.record import tracking

    monkeypatch.setattr(tracking, "ENVIRONMENT_WAIT", 60)
    mlflow.set_tracking_uri(store)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    try:
        with mlflow.start_run() as active:
            tracking._early = (active.info.run_id, {"environment": concurrent.futures.Future()})  # never read
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C while it waits
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt) as killed:
                tracking.keep_environment(RuntimeError("the data loader broke"))
            assert time.monotonic() - started < 30  # honoured, not held for the wait
            record.end(active.info.run_id, killed.value)
    finally:
        signal.signal(signal.SIGINT, previous)
    found = MlflowClient(store).get_run(active.info.run_id)
    assert found.info.status == "KILLED"
    assert found.data.tags["error"] == "KeyboardInterrupt:  (after RuntimeError: the data loader broke)"


@pytest.fixture
def mounted(tmp_path):
    """mount(name, options): a small tmpfs under tmp_path (root only; skipped elsewhere), unmounted after."""
    import subprocess

    points = []

    def mount(name, options):
        point = tmp_path / name
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True).returncode:
            pytest.skip("mounting a tmpfs needs root")
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_an_output_directory_that_cannot_be_written_is_one_line_and_records_nothing(mounted, tmp_path, disk):
    if disk == "read-only":
        where, reason = mounted("ro", "ro,size=1m"), "Read-only file system"
    else:
        where, reason = mounted("full", "size=16k"), "No space left on device"
        with open(where / "filler", "wb") as filler:  # fill it: the first write of Hydra's output fails
            with pytest.raises(OSError):
                filler.write(b"\0" * 65536)
                filler.flush()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = cli("loop.epochs=1", "dataset.limit=64", f"mlflow.tracking_uri={store}", cwd=where, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("runner: cannot write ") and str(where) in line and reason in line and "hydra.run.dir=" in line
    assert runs(store)[1] == []  # no run was started
