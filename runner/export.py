"""Exporting a trained model to the runtimes it will run in, each file checked against Keras.

`export: [tf_saved_model, onnx, litert]` (at a run's end) and `runner export RUN_ID --format ...` (for
a finished run) write each format with Keras' own `Model.export`, reload it in its own runtime
(TensorFlow, ONNX Runtime, LiteRT's interpreter) and compare its outputs with the Keras model's on a
batch of the test split: the largest absolute difference and the top-1 agreement are the parity
figures, and a difference past `TOLERANCE` is an ExportMismatch that names both numbers. A
mixed-precision model is exported as a float32 copy (the runtimes' CPU kernels are float32), and
compared with that copy.

No MLflow here: `runner.record.tracking.log_exports` records the files and the figures.
"""

import importlib.util
from pathlib import Path

import numpy as np

from runner.errors import ConfigError

FORMATS = ("tf_saved_model", "onnx", "litert")
NEEDS = {"onnx": ("tf2onnx", "onnxruntime", "onnx"), "litert": ("ai_edge_litert",)}
FILE = {"tf_saved_model": "saved_model", "onnx": "model.onnx", "litert": "model.tflite"}
TOLERANCE = 1e-4  # float32 runtimes reorder the same arithmetic: measured differences are ~1e-6
BATCH = 256  # test examples compared


class ExportMismatch(RuntimeError):
    """An exported model whose outputs differ from the Keras model's past the tolerance."""


def validate(formats, key="export"):
    """The formats asked for exist and their packages are installed (before TensorFlow)."""
    from runner.keras_api import did_you_mean

    for fmt in formats or ():
        if fmt not in FORMATS:
            raise ConfigError(f"{key}: unknown format {fmt!r}; choose from {list(FORMATS)}.{did_you_mean(str(fmt), FORMATS)}")
        missing = [m for m in NEEDS.get(fmt, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"{key}: {fmt} needs {', '.join(missing)}, not installed: pip install 'runner[export]' "
                              "(or pip install '.[export]' in the project).")


def float32_copy(model, graph, style):
    """The model itself when it computes in float32; else the same graph built in the same style
    under float32, with the model's weights (a mixed-precision model's variables are float32 already)."""
    import keras

    from runner import models

    if model.dtype_policy.compute_dtype == "float32":
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        return models.rebuilt(model, graph, style)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def export(model, formats, x, directory, graph, style):
    """Write each format under `directory`, reload it, compare it with the model (its float32 copy,
    built from `graph` in `style`) on `x`, a batch of inputs as the model takes them. Returns
    {format: {"path", "max_abs_diff", "top1_agreement", "compared"}}; `check` judges them."""
    model = float32_copy(model, graph, style)
    x = np.asarray(x)
    reference = np.asarray(model(x, training=False), dtype=np.float32)
    found = {}
    for fmt in formats:
        path = Path(directory) / fmt / FILE[fmt]
        path.parent.mkdir(parents=True, exist_ok=True)
        model.export(str(path), format=fmt, verbose=False)
        got = np.asarray(RUNTIMES[fmt](path, x), dtype=np.float32).reshape(reference.shape)
        diff = float(np.max(np.abs(got - reference)))
        agreement = float(np.mean(got.argmax(axis=-1) == reference.argmax(axis=-1)))
        found[fmt] = {"path": path, "max_abs_diff": diff, "top1_agreement": agreement, "compared": len(x),
                      "artifact": f"export/{fmt}/{FILE[fmt]}"}  # where the run's record keeps it
    return found


def check(found):
    """Raise ExportMismatch naming every format whose outputs differ from Keras' past TOLERANCE."""
    wrong = [f"{fmt}: the largest difference from Keras is {f['max_abs_diff']:.3g} (tolerance {TOLERANCE:g}), "
             f"top-1 agreement {f['top1_agreement']:.4f} on {f['compared']} test examples (the run's {f.get('artifact', f['path'])})"
             for fmt, f in found.items() if not f["max_abs_diff"] <= TOLERANCE]  # NaN fails too
    if wrong:
        raise ExportMismatch("export: " + "; ".join(wrong))


def _tf_saved_model(path, x):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return loaded.serve(tf.constant(x)).numpy()


def _onnx(path, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    return session.run(None, {given.name: x.astype(_onnx_dtype(given.type))})[0]


def _onnx_dtype(name):
    return {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(double)": np.float64,
            "tensor(int64)": np.int64, "tensor(int32)": np.int32}.get(name, np.float32)


def _litert(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (given,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(given["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], x.astype(given["dtype"]))
    interpreter.invoke()
    (output,) = interpreter.get_output_details()
    return interpreter.get_tensor(output["index"])


RUNTIMES = {"tf_saved_model": _tf_saved_model, "onnx": _onnx, "litert": _litert}


def test_batch(test_data, size=BATCH):
    """Up to `size` inputs of the test split, as the model takes them."""
    taken, count = [], 0
    for x, _ in test_data:
        x = np.asarray(x)
        taken.append(x[: size - count])
        count += len(taken[-1])
        if count >= size:
            break
    return np.concatenate(taken)
