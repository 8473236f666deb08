"""Sweeps as Ray tasks (hydra/launcher=ray) on a real Ray head started on 127.0.0.1 for the test."""

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import family, free_port
from test_sweep import QUICK

pytestmark = pytest.mark.slow
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs pip install '.[cluster]'")

# Ray's switch for a cluster on the loopback interface: without it Ray swaps 127.0.0.1 for the
# machine's outward address (a setting named for Windows and macOS, which it changes on Linux too).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def ray_head():
    """A Ray head with 2 CPUs on 127.0.0.1 (state API on a free port); yields (GCS address, API URL).

    `ray start --block` owns the cluster's processes and ends them when it is terminated, so the
    test stops its own cluster, not every Ray on the machine (`ray stop` would).
    """
    port, api = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, **LOOPBACK}  # the workers inherit it, PYTHONPATH included
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--num-cpus=2", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={api}",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    url = f"http://127.0.0.1:{api}"
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(["ray", "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True,
                             timeout=60).returncode != 0:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"ray start --head did not come up: {head.stderr.read()[-1000:] if head.poll() else 'timeout'}")
            time.sleep(1)
        yield f"127.0.0.1:{port}", url
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_sweep_runs_as_ray_tasks_with_a_cpu_each(tmp_path, ray_head):
    address, api = ray_head
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | LOOPBACK
    done = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}",
         "optimizer=adam,sgd,rmsprop,adamw", *QUICK, "loop.log_every_n_steps=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 of 4 jobs FINISHED" in done.stdout
    client, families, runs = family(tmp_path)
    ((parent_id, children),) = families.items()
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert runs[parent_id].info.status == "FINISHED"
    steps_per_epoch = math.ceil(300 * 0.9 / 32)  # dataset.limit=300, 10 % held out for validation, batch 32
    for child in children:  # every point of every job, written from the Ray workers
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [1, 2], key
        batch = client.get_metric_history(child.info.run_id, "batch_loss")
        assert sorted(m.step for m in batch) == list(range(1, 2 * steps_per_epoch + 1))

    from ray.util.state import list_tasks

    tasks = list_tasks(address=api, filters=[("func_or_class_name", "=", "_run_job")], detail=True, raise_on_missing_output=False)
    assert len(tasks) == 4 and {t.state for t in tasks} == {"FINISHED"}
    assert all(t.required_resources == {"CPU": 1.0} for t in tasks)  # hydra.launcher.ray.remote.num_cpus
    pids = {c.data.tags["runner.pid"] for c in children}  # the runs were made in Ray's worker processes
    assert pids <= {str(t.worker_pid) for t in tasks if t.worker_pid}, pids
