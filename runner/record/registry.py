"""The model registry: a run's logged model as a new version of a registered model, aliased `champion`.

`sweep.register=NAME` registers the best job of a sweep (by sweep.objective; with two objectives, the
Pareto front's best on the first), `runner register RUN_ID NAME` one run. The version's description
names where it came from and the objective's value, so `models:/NAME@champion` says why it is there.
"""

from runner.errors import ConfigError
from runner.record.search import quoted

ALIAS = "champion"


ONNX_MODEL = "onnx_model"  # the name of the ONNX export's MLflow model (record.tracking.log_exports)


def logged_model(client, run):
    """The run's Keras model (the newest, when it logged several; not its ONNX export), or a
    ConfigError saying why there is none."""
    found = [m for m in client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                    filter_string=f"source_run_id = '{quoted(run.info.run_id)}'")
             if m.name != ONNX_MODEL]
    if not found:
        raise ConfigError(f"run {run.info.run_id} has no logged model (it ran with mlflow.log_model=false, or "
                          "ended before its model was saved); choose a run that logged one.")
    return max(found, key=lambda m: m.creation_timestamp)


def register(client, run, name, description):
    """A new version of registered model `name` from the run's logged model, aliased champion."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    from runner.sweep.objective import registered_name

    registered_name(name, "NAME")
    model = logged_model(client, run)
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        client.create_registered_model(name)
    version = client.create_model_version(name, source=model.model_uri, run_id=run.info.run_id,
                                          model_id=model.model_id, description=description)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return version
