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

import importlib
import json
import os

import numpy as np

SPEC = "preprocessing.json"  # beside the Keras file in the MLflow model's data folder
MODULE = "runner_raw_inputs"  # this file's name inside a logged model (its pyfunc loader_module)
EPSILON = 1e-7  # keras.backend.epsilon(): Normalization's floor on a column's standard deviation
BATCH = 256


def spec(info, dataset_name, scale, outputs, logits=None, custom_layers=()):
    """The preprocessing of a run's data (its DataInfo as a dict) and what its model answers, as plain
    JSON: `kind` (table, images or arrays), the model's input shape, one class name per output (`outputs`
    wide; by index past the data's names), how logits become probabilities (`logits`), a table's encoding, the
    arrays' scale ("none": as they are; else divided by 255, as training did), the custom layer modules."""
    kind = "table" if info.get("encoding") else "images" if dataset_name == "image_folder" else "arrays"
    scale = "auto" if dataset_name == "tfds" else scale  # TFDS images are uint8, divided by 255 whatever scale says
    names = [str(n) for n in info.get("class_names") or ()]
    width = 2 if outputs == 1 else outputs  # a single sigmoid unit answers for two classes
    names += [str(i) for i in range(len(names), width)]
    return {"kind": kind, "input_shape": list(info["input_shape"]), "class_names": names,
            "logits": logits, "encoding": info.get("encoding"), "scale": str(scale),
            "custom_layers": list(custom_layers)}


def logits(loss):
    """How a model trained with `loss` (its config: class_name, from_logits) outputs: None for
    probabilities, "sigmoid" for a binary loss's logits (one per unit), "softmax" for others'."""
    if not loss or not loss.get("from_logits"):
        return None
    return "sigmoid" if "binary" in str(loss.get("class_name", "")).lower() else "softmax"


def probabilities(outputs, logits=None):
    """The model's outputs as probabilities: of logits (`logits`: "softmax", "sigmoid" per unit; one
    unit is always a sigmoid), and a single unit as the two classes' [1 - p, p]."""
    out = np.asarray(outputs, dtype=np.float64)
    out = out.reshape(len(out), -1)
    if logits == "sigmoid" or (logits and out.shape[1] == 1):
        out = 1 / (1 + np.exp(-out))
    elif logits:
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out = out / out.sum(axis=1, keepdims=True)
    return np.concatenate([1 - out, out], axis=1) if out.shape[1] == 1 else out


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
        table = table.rename(columns=lambda c: str(c).strip())  # as training reads a header
        wanted = columns(preprocessing["encoding"])
        missing = [c for c in wanted if c not in table.columns]
        if missing:
            raise ValueError(f"the model reads the columns {wanted}; the input lacks {missing}")
        for name in preprocessing["encoding"]["numeric"]:
            values = pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)
            if not np.isfinite(values).all():
                row = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ValueError(f"row {row}, column {name!r}: {table[name].iloc[row]!r} is not a finite number")
        rows = {c: table[c].tolist() for c in preprocessing["encoding"]["numeric"]}
        for name in preprocessing["encoding"]["vocab"]:  # as training reads a CSV's field: text, stripped
            rows[name] = ["" if pd.isna(v) else str(v).strip() for v in table[name].tolist()]
        return encode_table(preprocessing["encoding"], rows)
    if kind == "images" and _is_files(data):
        import tensorflow as tf

        files = _files(data)
        return np.stack([decode_image(tf.constant(f), shape).numpy() for f in files]).astype(np.float32) / 255
    x = np.asarray(data.to_numpy() if isinstance(data, pd.DataFrame) else data)
    if x.dtype.kind not in "uif":
        raise ValueError(f"the model takes arrays of numbers of shape {list(shape)} (one per row); got {x.dtype}")
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
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    kind = preprocessing["kind"]
    if kind == "table":  # numbers of any type (a CSV's integer column reads as int64): model_input checks them
        encoding = preprocessing["encoding"]
        inputs = Schema([*(ColSpec(AnyType(), n) for n in encoding["numeric"]),
                         *(ColSpec(AnyType(), n) for n in encoding["vocab"])])
    elif kind == "images":
        inputs = Schema([ColSpec("binary", "image")])
    else:  # arrays of any number type, with or without a grey channel axis: model_input checks and scales them
        inputs = None
    outputs = Schema([ColSpec("string", "predicted"), ColSpec("double", "probability"),
                      *(ColSpec("double", f"p_{n}") for n in preprocessing["class_names"])])
    return ModelSignature(inputs=inputs, outputs=outputs)


class RawInputs:
    """The logged model behind pyfunc: its data set's preprocessing, then the Keras model."""

    def __init__(self, model, preprocessing):
        self.model, self.preprocessing = model, preprocessing

    def predict(self, data, params=None):
        x = model_input(self.preprocessing, data)
        logits = self.preprocessing.get("logits")
        probs = [probabilities(self.model(x[i:i + BATCH], training=False), logits) for i in range(0, len(x), BATCH)]
        names = self.preprocessing["class_names"]
        return answer(names, np.concatenate(probs) if probs else np.zeros((0, len(names))))


def _load_pyfunc(path):
    """MLflow's pyfunc loader: `path` is the model's data folder (the Keras file and SPEC)."""
    import keras

    with open(os.path.join(path, SPEC)) as f:
        preprocessing = json.load(f)
    for module in preprocessing.get("custom_layers") or ():  # shipped in the model's code/: registers its layers
        importlib.import_module(module)
    return RawInputs(keras.saving.load_model(os.path.join(path, "model.keras"), compile=False), preprocessing)
