"""The run's logged model behind `mlflow models serve` (issue 10): MLflow's own scoring server on
127.0.0.1, in this environment (--env-manager local), answers /invocations with the trained model's
predictions."""

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


def test_mlflow_models_serve_answers_with_the_trained_models_predictions(tmp_path):
    from hydra import compose, initialize_config_module

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "loop.epochs=1", "dataset.limit=200", "loop.verbose=0", f"mlflow.tracking_uri={store}",
            "mlflow.log_figures=false", "mlflow.system_metrics=false"])
    try:
        run(cfg, cwd=tmp_path, output_root=tmp_path / "out")
    finally:
        mlflow.set_tracking_uri(None)
    client, found = only_run(store)
    (output,) = found.outputs.model_outputs
    trained = keras.saving.load_model(next((tmp_path / "out").glob("run-*/checkpoints/epoch-0001")))

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{output.model_id}",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300  # the server imports TensorFlow and loads the model first
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not come up:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(1)
        x = np.random.default_rng(1).random((5, 8, 8, 1), dtype=np.float32)
        answer = post(f"http://127.0.0.1:{port}/invocations", {"inputs": x.tolist()})
        served = np.asarray(answer["predictions"], dtype=np.float32)
        assert served.shape == (5, 10)
        np.testing.assert_allclose(served, trained.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
