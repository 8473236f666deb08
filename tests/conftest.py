"""Shared fixtures: the real configs composed in-process, a temporary MLflow store, real MNIST when present.

Where a test lives: `tests/test_<name>.py` tests `runner/<name>.py`, or the package `runner/<name>/` as a
whole; a module inside a package is `tests/test_<package>_<module>.py` (runner/data/folders.py is
tests/test_data_folders.py). A test goes where the code that keeps its promise lives: a refusal beside the
module that raises its message. What crosses stages is named after the promise it checks (test_failures,
test_resume, test_mnist, test_readme, test_bench) or the engine it runs on (test_slurm, test_ray,
test_server, test_multi_worker, test_serve, test_browser).
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"
# The files that start an engine (a cluster, a server, a browser) and the bench's timings: under
# `pytest -n 2` (pytest-xdist, --dist loadgroup) they run one after another on one worker, so two of
# them never compete for the machine's two cores while the other worker runs everything else.
ALONE = ("test_slurm", "test_ray", "test_server", "test_multi_worker", "test_serve", "test_browser", "test_bench")


@pytest.fixture(autouse=True)
def _own_tracking_uri():
    """Each test's MLflow store stays its own: `mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI in
    os.environ, which every later subprocess of the session (a Ray cluster's workers) would inherit."""
    import os
    import sys

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


def pytest_configure(config):
    """Under `pytest -n 2` each worker's TensorFlow, and every `runner` it starts, uses one thread for
    its ops: two workers then share the two cores instead of four busy-waiting thread pools fighting for
    them. TensorFlow reads these when it starts; a test that sets its own keeps it."""
    import os

    if hasattr(config, "workerinput"):  # an xdist worker
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(name, "1")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in ALONE:
            item.add_marker(pytest.mark.xdist_group("alone"))


@pytest.fixture
def make_cfg():
    """compose(overrides) -> the composed config, exactly as `runner <overrides>` sees it."""

    import runner.config  # noqa: F401  (registers the schema with Hydra's ConfigStore)

    def make(*overrides):
        with initialize_config_module(config_module="runner.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=False)

    return make


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store for one test; returns its tracking URI."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield uri
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture
def mnist_path():
    if not MNIST.is_file():
        pytest.skip(f"real MNIST not found at {MNIST} (see shared/data/README.md)")
    return MNIST


SERVICES = Path(__file__).resolve().parents[1] / ".ci" / "services.sh"


def start_service(name):
    """`.ci/services.sh start <name>` (slurm, postgres) -> what it prints (the partition, the URI).

    The packages come from `.ci/services.sh install` (run by .ci/run); where a service cannot
    start here (no root, not installed), the test is skipped with the script's reason.
    """
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip(f"{name}: .ci/services.sh runs the daemons as root; this is uid {os.geteuid()}")
    done = subprocess.run(["bash", str(SERVICES), "start", name], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"{name} did not start: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


@pytest.fixture(scope="session")
def slurm():
    """A single-node SLURM cluster on localhost (munged, slurmctld, slurmd); returns its partition."""
    return start_service("slurm")


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with a database for MLflow; returns its URI."""
    return start_service("postgres")


# ---- the two helpers every test file uses: the command line, and the runs in a store ------------

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ENV = ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")  # a developer's shell must not steer a test's runs


def cli_env(env=None):
    """The environment a test's `runner` command runs in: this checkout importable, the developer's
    MLflow URI and HYDRA_FULL_ERROR dropped, then `env` on top (a None value: unset)."""
    import os

    environment = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), environment.get("PYTHONPATH")) if p)
    return {k: v for k, v in {**environment, **(env or {})}.items() if v is not None}


def cli(*args, cwd=None, env=None, timeout=600, background=False):
    """`runner <args>` as a user types it (python -m runner), in `cwd`: the finished process with its
    text output, or with `background` the running Popen (stdout and stderr piped)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "runner", *map(str, args)]
    if background:
        return subprocess.Popen(command, cwd=cwd, env=cli_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=cli_env(env), capture_output=True, text=True, timeout=timeout)


def store_uri(where):
    """A tracking URI as is, or the default store (./mlflow.db) of a folder the runner ran in."""
    where = str(where)
    return where if "://" in where else f"sqlite:///{Path(where) / 'mlflow.db'}"


def runs(where, experiment="runner"):
    """(client, runs of the experiment, oldest first) in a store: a URI, or a folder's ./mlflow.db."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri(where))
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"]) if found else []


def only_run(where, experiment="runner"):
    """(client, the one run of the experiment); fails if there is not exactly one."""
    client, found = runs(where, experiment)
    assert len(found) == 1, [(r.info.run_name, r.info.status) for r in found]
    return client, found[0]


def family(where, experiment="runner"):
    """(client, {sweep parent id: its children, oldest first}, {run id: run}) in a store."""
    client, found = runs(where, experiment)
    parents = [r for r in found if "runner.sweep_id" in r.data.tags and "mlflow.parentRunId" not in r.data.tags]
    return client, {p.info.run_id: [r for r in found if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
                    for p in parents}, {r.info.run_id: r for r in found}


def per_epoch(client, found, key):
    """A run's metric `key` in epoch order: one value per epoch."""
    return [m.value for m in sorted(client.get_metric_history(found.info.run_id, key), key=lambda m: m.step)]


# ---- what several files train with ----------------------------------------------------------------

QUICK = ["dataset.limit=300", "loop.verbose=0", "mlflow.log_model=false"]  # a short run on the bundled digits
REGULARISED = ["+model.layers.3.kernel_regularizer={class_name: L2, l2: 0.001}", "+model.layers.3.kernel_initializer=he_normal",
               "+model.layers.3.kernel_constraint={class_name: MaxNorm, max_value: 3.0}", "+optimizer.clipnorm=1.0"]


# ---- servers the tests start on 127.0.0.1 ---------------------------------------------------------


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(uri, proc, seconds, why):
    """Until the MLflow server at `uri` answers /health; fails with why() if `proc` ends or time runs out."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            return
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, why()
            time.sleep(0.5)
