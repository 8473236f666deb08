"""Shared fixtures: the real configs composed in-process, a temporary MLflow store, real MNIST when present."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"


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
