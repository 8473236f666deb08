"""The run's model as one MLflow model with two ways in: the Keras flavour (the bare model, on the
model's own input) and a `python_function` flavour that takes raw inputs as the data set gives them
(`runner.raw_inputs`: the preprocessing travels with the model). A flavour module for
`mlflow.models.Model.log`, which makes it a logged model like `mlflow.keras.log_model` does."""

import importlib.util
import json
import os
import shutil

import mlflow.keras
import numpy as np
from mlflow import pyfunc

from runner import raw_inputs


def save_model(keras_model, path, mlflow_model, preprocessing, pip_requirements):
    """MLflow's Keras flavour saved to `path`, then its pyfunc pointed at runner_raw_inputs (copied
    into the model's `code/`) with the data set's preprocessing, and the signature of raw inputs."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    bare = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, *preprocessing["input_shape"]))]))
    mlflow.keras.save_model(keras_model, path, mlflow_model=mlflow_model, pip_requirements=pip_requirements,
                            signature=bare)
    data = mlflow_model.flavors["keras"]["data"]
    with open(os.path.join(path, data, raw_inputs.SPEC), "w") as f:
        json.dump(preprocessing, f, indent=1)
    os.makedirs(os.path.join(path, "code"), exist_ok=True)
    shutil.copyfile(raw_inputs.__file__, os.path.join(path, "code", f"{raw_inputs.MODULE}.py"))
    for module in preprocessing["custom_layers"]:  # the model's own layers load where it is served
        _ship(module, os.path.join(path, "code"))
    mlflow_model.flavors[pyfunc.FLAVOR_NAME].update(loader_module=raw_inputs.MODULE, data=data, code="code")
    mlflow_model.signature = raw_inputs.signature(preprocessing)  # what pyfunc and serving check inputs against
    mlflow_model.save(os.path.join(path, "MLmodel"))


def _ship(module, code):
    """Copy a custom layer module's source into the model's `code/`: a top-level file as it is, a
    module of a package as its whole top-level package (its siblings and relative imports with it).
    An installed package (site-packages) is not copied: the serving environment installs it."""
    import sysconfig

    top = module.split(".")[0]
    spec = importlib.util.find_spec(top)
    origin = spec.origin if spec and spec.origin else None
    if origin is None or os.path.realpath(origin).startswith(
            tuple(os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib"))):
        return
    if os.path.basename(origin) == "__init__.py":
        shutil.copytree(os.path.dirname(origin), os.path.join(code, top), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copyfile(origin, os.path.join(code, os.path.basename(origin)))
