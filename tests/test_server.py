"""A tracking server a team would run: `mlflow server` on PostgreSQL (`make server-postgres`), under
8 parallel jobs, and killed and restarted in the middle of a sweep."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

from pathlib import Path

import pytest
from conftest import cli, free_port, runs, wait_healthy

pytestmark = pytest.mark.slow
psutil = pytest.importorskip("psutil")
psycopg = pytest.importorskip("psycopg", reason="needs pip install '.[cluster]'")

REPO = Path(__file__).resolve().parents[1]
JOBS = 8
SEEDS = ",".join(str(s) for s in range(1, JOBS + 1))
TINY = ["loop.log_every_n_steps=1", "loop.verbose=0", "dataset.limit=300", "mlflow.log_model=false"]
STEPS = 9  # batches per epoch: 300 digits, 10 % held out for validation, batch 32
EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


@pytest.fixture
def database(postgres):
    """A fresh PostgreSQL database for one test (dropped after it); returns its URI."""
    name = f"runner_{uuid.uuid4().hex[:12]}"
    _admin(postgres, f"create database {name}")
    yield f"{postgres.rsplit('/', 1)[0]}/{name}"
    _admin(postgres, f"drop database if exists {name} with (force)")


def _admin(uri, statement):
    with psycopg.connect(uri, autocommit=True) as connection:  # create/drop database: not in a transaction
        connection.execute(statement)


class Server:
    """`make server-postgres` on a free port, as a process group this test owns."""

    def __init__(self, backend, artifacts):
        self.port, self.backend, self.artifacts, self.proc = free_port(), backend, artifacts, None
        self.log = artifacts.parent / "server.log"
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            ["make", "-s", "-C", str(REPO), "server-postgres", f"SERVER_PORT={self.port}", f"PG_URI={self.backend}",
             f"ARTIFACTS={self.artifacts}", f"PYTHON={sys.executable}"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("a"), start_new_session=True,
        )
        wait_healthy(self.uri, self.proc, 90, lambda: f"the MLflow server did not start: {self.log.read_text()[-2000:]}")

    def processes(self):
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)


@pytest.fixture
def server(database, tmp_path):
    server = Server(database, tmp_path / "artifacts")
    server.start()
    yield server
    server.stop()


def sweep(cwd, uri, *args, **env):
    """The 8 jobs with the parallel launcher, running, their store the server at `uri`."""
    return cli("-m", "hydra/launcher=parallel", f"hydra.launcher.n_jobs={JOBS}", f"seed={SEEDS}", *TINY, *args,
               cwd=cwd, env={"MLFLOW_TRACKING_URI": uri, **env}, background=True)


def children(uri):
    """(client, the sweep's jobs, every run) in the server's store."""
    client, found = runs(uri)
    return client, [r for r in found if "mlflow.parentRunId" in r.data.tags], found


def stored_points(client, run, epochs):
    """{key: [steps]} stored for one run, each key's steps checked to be exactly the expected ones."""
    expected = {**{k: list(range(1, epochs + 1)) for k in EPOCH_KEYS},
                "batch_loss": list(range(1, epochs * STEPS + 1)), "test_loss": [epochs], "test_accuracy": [epochs],
                "num_params": [0]}
    stored = {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in expected}
    assert stored == expected, run.info.run_name
    return sum(len(steps) for steps in stored.values())


def watch(server, until):
    """Peak (process count, RSS in MB) of the server's process tree, sampled until `until` is set."""
    peak = [0, 0.0]

    def sample():
        while not until.is_set():
            procs = server.processes()
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak[0], peak[1] = max(peak[0], len(procs)), max(peak[1], rss / 2**20)
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return peak, thread


# One launcher: the server's load is the same from joblib's processes as from Ray's tasks (the Ray variant
# measured the same points and peak, and took 4 minutes of CI); tests/test_ray.py runs sweeps on Ray.
def test_eight_parallel_jobs_lose_no_point_and_the_server_stays_bounded(tmp_path, server):
    epochs = 3
    done_event = threading.Event()
    peak, thread = watch(server, done_event)
    started = time.monotonic()
    proc = sweep(tmp_path, server.uri, f"loop.epochs={epochs}")
    out, err = proc.communicate(timeout=600)
    done_event.set()
    thread.join()
    assert proc.returncode == 0, err[-3000:]
    client, jobs, runs = children(server.uri)
    assert len(jobs) == JOBS and {r.info.status for r in runs} == {"FINISHED"}  # the parent too: nothing RUNNING
    expected = JOBS * (len(EPOCH_KEYS) * epochs + epochs * STEPS + 3)
    stored = sum(stored_points(client, run, epochs) for run in jobs)
    print(f"\nserver load (parallel): {JOBS} jobs, points expected {expected}, stored {stored}; server peak "
          f"{peak[0]} processes, {peak[1]:.0f} MB RSS; sweep {time.monotonic() - started:.0f} s")
    assert stored == expected
    assert peak[0] <= 3 and peak[1] < 1500, peak  # make, the server and its one worker; not one per client


def test_a_server_killed_mid_sweep_and_restarted_loses_nothing_and_leaves_nothing_running(tmp_path, server):
    epochs = 12
    # MLflow's client retries a refused request with backoff (1, 2, 4, 8, 16 s: ~30 s in all), so
    # an outage shorter than that costs a wait, not a run.
    proc = sweep(tmp_path, server.uri, f"loop.epochs={epochs}", MLFLOW_HTTP_REQUEST_MAX_RETRIES="5",
                 MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    deadline = time.monotonic() + 300
    while True:  # kill the server once every job is logging
        _, jobs, _ = children(server.uri)
        if len(jobs) == JOBS and all(r.data.metrics.get("loss") is not None for r in jobs):
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    server.stop(signal.SIGKILL)  # no goodbye: in-flight requests are cut
    killed_at = time.monotonic()
    time.sleep(8)
    server.start()
    out, err = proc.communicate(timeout=600)
    print(f"\nserver down {time.monotonic() - killed_at:.0f} s before the sweep ended; sweep exit {proc.returncode}")
    client, jobs, runs = children(server.uri)
    status = {r.info.run_name: r.info.status for r in jobs}
    print(f"after the restart: {status}")
    assert "RUNNING" not in {r.info.status for r in runs}, status
    for run in jobs:
        if run.info.status == "FINISHED":
            stored_points(client, run, epochs)  # every point, each once: retried requests did not duplicate
            continue
        # a job that gave up: FAILED with the reason, and every epoch it was told was stored, stored once
        assert run.info.status == "FAILED" and run.data.tags.get("error"), run.data.tags
        saved = json.loads((Path(run.data.tags["runner.output_dir"]) / "checkpoints" / "state.json").read_text())
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= len(saved["history"]) - 1, steps
    assert proc.returncode == (0 if set(status.values()) == {"FINISHED"} else 1), err[-3000:]


def test_a_run_whose_server_stays_away_is_ended_failed_by_the_next_runner_that_reaches_it(tmp_path, server):
    from runner.record import RunDir

    env = {"MLFLOW_TRACKING_URI": server.uri}
    # a retry budget of ~1 s, so the outage outlasts it
    job = cli("loop.epochs=200", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, background=True,
              env={**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})
    deadline = time.monotonic() + 180
    while True:
        client, _, runs = children(server.uri)
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 2:
            break
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.3)
    run_id = runs[0].info.run_id
    server.stop(signal.SIGKILL)
    _, err = job.communicate(timeout=180)
    assert job.returncode != 0
    assert f"runner: run {run_id} shows RUNNING in its store until the next runner on this machine ends it FAILED" in err
    (unended,) = (tmp_path / "run").glob(f"run-{run_id}/{RunDir.UNENDED}")  # the ending it could not send

    server.start()
    assert client.get_run(run_id).info.status == "RUNNING"  # all the store knows: the defect being repaired
    again = cli("loop.epochs=1", *TINY, cwd=tmp_path, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"runner: run {run_id} ended FAILED now: its process could not reach the tracking store then" in again.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "Max retries exceeded" in run.data.tags["error"]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, len(steps) + 1))  # what was stored is whole, each epoch once
    assert not unended.exists()
