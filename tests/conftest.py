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
