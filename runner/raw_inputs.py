"""What turns a raw input of a data set into the model's input, and the logged model's pyfunc.

The one owner of the input transforms: a table's encoding (numeric columns standardised, categorical
ones one-hot with a slot for unseen values), an image's decoding and resizing, pixel scaling. The
training pipeline, `runner predict` and the logged MLflow model all use these functions.

Every logged model carries this file (as `code/runner_raw_inputs.py`) and its data set's
`preprocessing.json`, and its `python_function` flavour loads through `_load_pyfunc` here, so
`mlflow.pyfunc.load_model` and `mlflow models serve` take inputs as the data set gives them: a table's
rows by column name, image files' bytes, arrays of pixels. They answer one row per input:
`predicted` (the class name), its `probability`, then `p_<class>` for every class. The Keras flavour
(`mlflow.keras.load_model`) is the bare model, on the model's own input.

Self-contained on purpose (numpy, pandas and Keras/TensorFlow, nothing of `runner`): a model served
where the runner is not installed still loads.
"""

import json
import os

import numpy as np

SPEC = "preprocessing.json"  # beside the Keras file in the MLflow model's data folder
MODULE = "runner_raw_inputs"  # this file's name inside a logged model (its pyfunc loader_module)
EPSILON = 1e-7  # keras.backend.epsilon(): Normalization's floor on a column's standard deviation
BATCH = 256


def spec(info, dataset_name, scale):
    """The preprocessing of a run's data (its DataInfo as a dict), as plain JSON: `kind` (table, images
    or arrays), the model's input shape, the class names, a table's encoding, the arrays' scale."""
    kind = "table" if info.get("encoding") else "images" if dataset_name == "image_folder" else "arrays"
    names = info.get("class_names") or [str(i) for i in range(info["num_classes"])]
    return {"kind": kind, "input_shape": list(info["input_shape"]), "class_names": [str(n) for n in names],
            "encoding": info.get("encoding"), "scale": str(scale)}


# ---- tables -----------------------------------------------------------------------------------


def encode_table(encoding, table):
    """One float32 row per example of `table` ({column: values}), encoded as `encoding`
    (runner.data.tables.encoding) says."""
    parts = []
    if encoding["numeric"]:
        x = np.stack([np.asarray(table[n], dtype=np.float64) for n in encoding["numeric"]], axis=1)
        scale = np.maximum(np.sqrt(np.asarray(encoding["variance"])), EPSILON)
        parts.append((x - np.asarray(encoding["mean"])) / scale)
    for name, values in encoding["vocab"].items():
        index = {v: i + 1 for i, v in enumerate(values)}  # 0: a value the training rows never had
        hot = np.zeros((len(table[name]), len(values) + 1))
        hot[np.arange(len(table[name])), [index.get(str(v), 0) for v in table[name]]] = 1.0
        parts.append(hot)
    return np.concatenate(parts, axis=1).astype(np.float32)


def columns(encoding):
    """The raw columns a table's model reads, in order."""
    return [*encoding["numeric"], *encoding["vocab"]]


# ---- images and arrays ------------------------------------------------------------------------


def decode_image(contents, shape):
    """One image file's bytes (a string tensor) decoded and resized to shape (height, width,
    channels), as uint8 pixels like an array's."""
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=shape[2], expand_animations=False)
    image.set_shape([None, None, shape[2]])
    return tf.cast(tf.round(tf.image.resize(image, shape[:2])), tf.uint8)


def scale_pixels(x, scale):
    """Raw arrays as the model takes them: divided by 255 unless the data set said scale=none."""
    x = np.asarray(x)
    return x.astype(np.float32) if scale == "none" else (x / np.float32(255)).astype(np.float32)


# ---- the pyfunc -------------------------------------------------------------------------------


def model_input(preprocessing, data):
    """`data` as the model's input (float32), checked: what pyfunc and `mlflow models serve` get."""
    import pandas as pd

    kind, shape = preprocessing["kind"], tuple(preprocessing["input_shape"])
    if kind == "table":
        table = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        wanted = columns(preprocessing["encoding"])
        missing = [c for c in wanted if c not in table.columns]
        if missing:
            raise ValueError(f"the model reads the columns {wanted}; the input lacks {missing}")
        for name in preprocessing["encoding"]["numeric"]:
            values = pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)
            if not np.isfinite(values).all():
                row = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ValueError(f"row {row}, column {name!r}: {table[name].iloc[row]!r} is not a finite number")
        return encode_table(preprocessing["encoding"], {c: table[c].tolist() for c in wanted})
    if kind == "images" and _is_files(data):
        import tensorflow as tf

        files = _files(data)
        return np.stack([decode_image(tf.constant(f), shape).numpy() for f in files]).astype(np.float32) / 255
    x = np.asarray(data.to_numpy() if isinstance(data, pd.DataFrame) else data)
    if x.ndim == len(shape) and shape[-1] == 1:
        x = x[..., np.newaxis]  # grey images without their channel axis
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"the model takes inputs of shape {list(shape)} (one per row); got {list(x.shape[1:])}")
    return scale_pixels(x, preprocessing["scale"])


def _is_files(data):
    import pandas as pd

    if isinstance(data, pd.DataFrame):  # one column of bytes (object) or, by mistake, of strings
        return data.shape[1] == 1 and not pd.api.types.is_numeric_dtype(data.dtypes.iloc[0])
    return isinstance(data, (list, tuple)) or (isinstance(data, np.ndarray) and data.dtype.kind in "OSU")


def _files(data):
    import pandas as pd

    values = data.iloc[:, 0].tolist() if isinstance(data, pd.DataFrame) else list(np.ravel(data))
    if not all(isinstance(v, (bytes, bytearray)) for v in values):
        raise ValueError("the model takes image files' bytes, one per row (column `image`)")
    return [bytes(v) for v in values]


def answer(class_names, probs):
    """The pyfunc's answer: `predicted`, `probability`, then `p_<class>` per class."""
    import pandas as pd

    best = probs.argmax(axis=1)
    table = {"predicted": [class_names[i] for i in best], "probability": probs[np.arange(len(probs)), best]}
    table.update({f"p_{name}": probs[:, i] for i, name in enumerate(class_names)})
    return pd.DataFrame(table)


def signature(preprocessing):
    """The MLflow signature of the raw inputs and the answer."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    kind, shape = preprocessing["kind"], tuple(preprocessing["input_shape"])
    if kind == "table":
        encoding = preprocessing["encoding"]
        inputs = Schema([*(ColSpec("double", n) for n in encoding["numeric"]),
                         *(ColSpec("string", n) for n in encoding["vocab"])])
    elif kind == "images":
        inputs = Schema([ColSpec("binary", "image")])
    else:
        dtype = np.float32 if preprocessing["scale"] == "none" else np.uint8
        inputs = Schema([TensorSpec(np.dtype(dtype), (-1, *shape))])
    outputs = Schema([ColSpec("string", "predicted"), ColSpec("double", "probability"),
                      *(ColSpec("double", f"p_{n}") for n in preprocessing["class_names"])])
    return ModelSignature(inputs=inputs, outputs=outputs)


class RawInputs:
    """The logged model behind pyfunc: its data set's preprocessing, then the Keras model."""

    def __init__(self, model, preprocessing):
        self.model, self.preprocessing = model, preprocessing

    def predict(self, data, params=None):
        x = model_input(self.preprocessing, data)
        probs = [np.asarray(self.model(x[i:i + BATCH], training=False), dtype=np.float64)
                 for i in range(0, len(x), BATCH)]
        return answer(self.preprocessing["class_names"], np.concatenate(probs) if probs else np.zeros((0, 0)))


def _load_pyfunc(path):
    """MLflow's pyfunc loader: `path` is the model's data folder (the Keras file and SPEC)."""
    import keras

    with open(os.path.join(path, SPEC)) as f:
        preprocessing = json.load(f)
    return RawInputs(keras.saving.load_model(os.path.join(path, "model.keras"), compile=False), preprocessing)
