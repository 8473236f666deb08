"""The Keras index (`runner/keras_api.py`): a class named in YAML must be one Keras has, with arguments it
takes, and not one that runs code; the refusal names where, what and the likely fix, whichever section
(callbacks, schedules, layer arguments, the optimizer) names the class."""

import pytest

from runner import config
from runner.errors import ConfigError


@pytest.mark.parametrize("overrides,message", [
    (["callbacks=early_stopping", "+callbacks.early_stopping.patiense=2"],
     r"callbacks.early_stopping: unknown argument 'patiense' for keras.callbacks.EarlyStopping. Did you mean 'patience'\?"),
    (["+callbacks.stop={class_name: EarlyStoping}"],
     r"callbacks.stop: unknown type 'EarlyStoping': not a class in keras.callbacks. Did you mean 'EarlyStopping'\?"),
    (["+callbacks.log={class_name: LambdaCallback}"], r"keras.callbacks.LambdaCallback is not allowed here: it runs"),
    (["optimizer.learning_rate={class_name: CosineDecai, initial_learning_rate: 0.01, decay_steps: auto}"],
     r"optimizer.learning_rate: unknown type 'CosineDecai': not a class in keras.optimizers.schedules. Did you mean"),
])
def test_misuse_is_refused_with_a_message(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(make_cfg(*overrides))


@pytest.mark.parametrize("overrides,message", [
    (["+model.layers.3.kernel_regularizer={class_name: L3, l2: 0.1}"],
     r"model.layers\[3\] \(Dense\).kernel_regularizer: unknown type 'L3': not a class in keras.regularizers."),
    (["+model.layers.3.kernel_regularizer={class_name: L2, l3: 0.1}"],
     r"kernel_regularizer: unknown argument 'l3' for keras.regularizers.L2."),
    (["+model.layers.3.kernel_initializer=he_normall"],
     r"model.layers\[3\] \(Dense\).kernel_initializer: unknown initializer 'he_normall'"),
    (["+model.layers.3.kernel_constraint={class_name: MaxNrom}"], r"not a class in keras.constraints. Did you mean 'MaxNorm'"),
    (["+optimizer.clip_norm=1.0"], r"optimizer: unknown argument 'clip_norm' for keras.optimizers.Adam. Did you mean 'clipnorm'"),
])
def test_weighting_and_regularisation_misuse_is_refused(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(make_cfg(*overrides))


def test_shipped_keras_index_is_what_the_installed_keras_says():
    import json
    from importlib.metadata import version

    from runner import keras_api

    shipped = json.loads(keras_api.SHIPPED.read_text())
    if shipped["keras"] != version("keras"):
        pytest.skip(f"keras_api.json is for Keras {shipped['keras']}; this Keras gets its own cached index")
    assert json.loads(json.dumps(keras_api.generate())) == shipped  # else: python -m runner.keras_api
