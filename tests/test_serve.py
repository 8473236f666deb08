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


def test_a_subclassed_model_with_a_custom_layer_loads_through_pyfunc_without_the_runner(tmp_path, monkeypatch):
    """The logged model of a subclass-style run is its functional twin (same graph, same weights), and a
    custom layer's module travels in the model's code/: a fresh Python that never imports the runner,
    with the module nowhere on its path, loads it and answers as the run's own model does."""
    from test_models import CUSTOM

    (tmp_path / "my_layers.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    store, found = trained(tmp_path, "model-style=subclass", "model.custom_layers=[my_layers]",
                           "model.layers=[{type: my_layers.Scale, factor: 0.5}, {type: Flatten}, "
                           "{type: Dense, units: 10, activation: softmax}]")
    (output,) = found.outputs.model_outputs
    pixels = np.random.default_rng(3).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = ("import json, sys, mlflow, numpy as np; m = mlflow.pyfunc.load_model(sys.argv[1]); "
              "a = m.predict(np.load(sys.argv[2])); "
              "print(json.dumps([sorted(k for k in sys.modules if k.split('.')[0] == 'runner'), a['predicted'].tolist(), "
              "a[[f'p_{i}' for i in range(10)]].to_numpy().tolist()]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script, f"models:/{output.model_id}", str(tmp_path / "pixels.npy")],
                          cwd=elsewhere, env={**env, "MLFLOW_TRACKING_URI": store}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported, predicted, probs = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == []  # the runner was never imported
    model = keras.saving.load_model(next((tmp_path / "out").glob("run-*/checkpoints/epoch-0001")))
    assert type(model).__name__ == "GraphModel"
    expected = model.predict(pixels / np.float32(255), verbose=0)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    assert predicted == [str(c) for c in expected.argmax(axis=1)]
