"""runner/record/keras_raw.py: the logged model saved with its preprocessing, loaded back through MLflow's
pyfunc (schema enforcement included) and through its Keras flavour, without training."""

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model

from runner import raw_inputs
from runner.record import keras_raw


def saved(tmp_path, model, preprocessing):
    path = str(tmp_path / "model")
    keras_raw.save_model(model, path, Model(), preprocessing, pip_requirements=[f"keras=={keras.__version__}"])
    return path


def dense(inputs, outputs, activation="softmax"):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input(inputs), keras.layers.Flatten(), keras.layers.Dense(outputs, activation=activation)])


def test_a_table_model_takes_raw_rows_of_any_number_type(tmp_path):
    encoding = {"numeric": ["age"], "mean": [40.0], "variance": [100.0], "vocab": {"colour": ["blue", "red"]}}
    spec = {"kind": "table", "input_shape": [4], "class_names": ["no", "yes"], "logits": None,
            "encoding": encoding, "scale": "auto", "custom_layers": []}
    model = dense((4,), 2)
    path = saved(tmp_path, model, spec)
    served = mlflow.pyfunc.load_model(path)
    rows = pd.DataFrame({"colour": [" red", "blue", "green"], "age": [30, 50, 41], "extra": ["a", "b", "c"]})  # int64
    answer = served.predict(rows)
    expected = model.predict(raw_inputs.model_input(spec, rows), verbose=0)
    np.testing.assert_allclose(answer[["p_no", "p_yes"]].to_numpy(), expected, rtol=1e-5)
    assert list(answer["predicted"]) == [["no", "yes"][i] for i in expected.argmax(axis=1)]
    with pytest.raises(Exception, match="age"):
        served.predict(rows.assign(age=["x", "50", "41"]))
    bare = mlflow.keras.load_model(path)  # the Keras flavour: the bare model
    np.testing.assert_allclose(bare.predict(raw_inputs.model_input(spec, rows), verbose=0), expected, rtol=1e-5)


@pytest.mark.parametrize("scale, pixels, divide", [
    ("auto", np.arange(3 * 64, dtype=np.uint8).reshape(3, 8, 8), 255.0),  # grey, without the channel axis
    ("255", np.linspace(0, 255, 3 * 64).reshape(3, 8, 8, 1), 255.0),  # float64 in [0, 255]
    ("none", np.linspace(-1, 1, 3 * 64).reshape(3, 8, 8, 1), 1.0),  # already the model's input
])
def test_an_array_model_takes_arrays_as_the_data_set_holds_them(tmp_path, scale, pixels, divide):
    spec = {"kind": "arrays", "input_shape": [8, 8, 1], "class_names": [str(i) for i in range(10)],
            "logits": "softmax", "encoding": None, "scale": scale, "custom_layers": []}
    model = dense((8, 8, 1), 10, activation=None)  # logits
    served = mlflow.pyfunc.load_model(saved(tmp_path, model, spec))
    answer = served.predict(pixels)
    logits = model.predict(np.asarray(pixels, np.float32).reshape(3, 8, 8, 1) / np.float32(divide), verbose=0)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(answer[[f"p_{i}" for i in range(10)]].to_numpy(), probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(answer["probability"], probs.max(axis=1), rtol=1e-4)
    with pytest.raises(Exception, match=r"inputs of shape \[8, 8, 1\]"):
        served.predict(np.zeros((2, 7, 7, 1), np.uint8))


def test_custom_layer_modules_travel_whole_and_installed_packages_do_not(tmp_path, monkeypatch):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    for name, text in {"__init__.py": "", "helpers.py": "K = 2\n", "layers.py": "from .helpers import K\n"}.items():
        (tmp_path / "src" / "pkg" / name).write_text(text)
    (tmp_path / "src" / "flat.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    code = tmp_path / "code"
    code.mkdir()
    for module in ("pkg.layers", "pkg", "flat", "numpy"):  # a package twice: one copy, no error
        keras_raw._ship(module, str(code))
    assert sorted(p.relative_to(code).as_posix() for p in code.rglob("*.py")) == [
        "flat.py", "pkg/__init__.py", "pkg/helpers.py", "pkg/layers.py"]
