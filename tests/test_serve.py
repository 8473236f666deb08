"""The run's logged model behind `mlflow models serve` (issue 10): MLflow's own scoring server on
127.0.0.1, in this environment (--env-manager local), answers /invocations with the trained model's
predictions."""

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request

import keras
import mlflow
import numpy as np
import pytest

from runner.train import run

from conftest import only_run

from conftest import free_port

pytestmark = pytest.mark.slow


def post(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def trained(tmp_path, *overrides):
    """(store URI, the run) of a tiny run on the digits, trained in this process."""
    from hydra import compose, initialize_config_module

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "loop.epochs=1", "dataset.limit=200", "loop.verbose=0", f"mlflow.tracking_uri={store}",
            "mlflow.log_figures=false", "mlflow.system_metrics=false", *overrides])
    try:
        run(cfg, cwd=tmp_path, output_root=tmp_path / "out")
    finally:
        mlflow.set_tracking_uri(None)
    return store, only_run(store)[1]


@contextlib.contextmanager
def served(model_uri, store, tmp_path):
    """`mlflow models serve` of `model_uri` on 127.0.0.1 (this environment): its /invocations URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": os.pathsep.join(sys.path),
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}  # its uvicorn
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300  # the server imports its runtime and loads the model first
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not come up:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_mlflow_models_serve_answers_with_the_trained_models_predictions(tmp_path):
    store, found = trained(tmp_path)
    (output,) = found.outputs.model_outputs
    model = keras.saving.load_model(next((tmp_path / "out").glob("run-*/checkpoints/epoch-0001")))
    with served(f"models:/{output.model_id}", store, tmp_path) as url:
        pixels = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)  # as the digits are
        answer = post(url, {"inputs": pixels.tolist()})
        predictions = np.asarray([[row[f"p_{c}"] for c in range(10)] for row in answer["predictions"]])
        assert predictions.shape == (5, 10)
        np.testing.assert_allclose(predictions, model.predict(pixels / np.float32(255), verbose=0), rtol=1e-4, atol=1e-5)
        assert [row["predicted"] for row in answer["predictions"]] == [str(c) for c in predictions.argmax(axis=1)]


def test_the_onnx_export_is_served_by_mlflow_models_serve(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs pip install '.[export]'")
    store, found = trained(tmp_path, "export=[onnx]")
    client = mlflow.MlflowClient(store)
    (onnx_model,) = [m for m in client.search_logged_models([found.info.experiment_id]) if m.name == "onnx_model"]
    model = keras.saving.load_model(next((tmp_path / "out").glob("run-*/checkpoints/epoch-0001")))
    with served(f"models:/{onnx_model.model_id}", store, tmp_path) as url:
        x = np.random.default_rng(2).random((5, 8, 8, 1), dtype=np.float32)
        answer = post(url, {"inputs": x.tolist()})
        predictions = answer["predictions"]
        predictions = np.asarray(next(iter(predictions.values())) if isinstance(predictions, dict) else
                                 [list(row.values())[0] for row in predictions] if isinstance(predictions[0], dict)
                                 else predictions, dtype=np.float32)
        assert predictions.shape == (5, 10)
        np.testing.assert_allclose(predictions, model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
