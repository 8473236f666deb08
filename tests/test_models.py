"""One graph, three builders: same parameters, same outputs, same initial weights."""

import sys

import keras
import numpy as np
import pytest

from runner import config, models
from runner.errors import ConfigError
from runner.graph import Graph

from conftest import QUICK, REGULARISED

MODELS = ["seed_cnn", "seed_cifar_cnn", "mlp", "resnet_small"]


def build_all(graph, styles=models.STYLES, seed=7):
    built = {}
    for style in styles:
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        built[style] = models.build(graph, style)
    return built


@pytest.mark.parametrize("model", MODELS)
def test_three_styles_same_parameters_output_and_weights(make_cfg, model):
    cfg = make_cfg(f"model={model}", "dataset=cifar10")
    graph = config.validate(cfg)
    styles = models.STYLES if graph.sequential_error() is None else ("functional", "subclass")
    built = build_all(graph, styles)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    counts = {style: m.count_params() for style, m in built.items()}
    assert len(set(counts.values())) == 1, counts
    outputs = [np.asarray(m(x)) for m in built.values()]
    assert outputs[0].shape == (2, 10)
    for other in outputs[1:]:
        np.testing.assert_array_equal(outputs[0], other)  # same seed, same order: the same weights


def test_sequential_refuses_the_residual_cnn(make_cfg):
    cfg = make_cfg("model=resnet_small")
    graph = config.validate(cfg)
    with pytest.raises(ConfigError, match=r"model.layers\[0\] \(Conv2D 'stem'\): feeds 2 layers"):
        models.build(graph, "sequential")
    with pytest.raises(ConfigError, match="builds chains only"):
        config.validate(make_cfg("model=resnet_small", "model-style=sequential"))


def test_several_inputs_and_outputs_build_in_both_graph_styles():
    graph = Graph.parse(
        [
            {"type": "Concatenate", "name": "both", "inputs": ["left", "right"]},
            {"type": "Dense", "units": 2, "name": "out_a"},
            {"type": "Dense", "units": 3, "name": "out_b", "inputs": "both"},
            {"type": "MultiHeadAttention", "name": "mha", "num_heads": 2, "key_dim": 4, "inputs": ["seq", "seq"]},
            {"type": "GlobalAveragePooling1D", "name": "out_c"},
        ],
        inputs=[{"name": "left", "shape": [4]}, {"name": "right", "shape": [5]}, {"name": "seq", "shape": [6, 8]}],
        outputs=["out_a", "out_b", "out_c"],
    )
    built = build_all(graph, ("functional", "subclass"))
    assert built["functional"].count_params() == built["subclass"].count_params()
    shapes = [models.output_shapes(m, graph) for m in built.values()]
    assert shapes[0] == shapes[1] == [(None, 2), (None, 3), (None, 8)]


@pytest.mark.slow
def test_nested_layer_arguments_are_built(make_cfg):
    graph = Graph.parse(
        [{"type": "Bidirectional", "layer": {"type": "LSTM", "units": 4}}, {"type": "Dense", "units": 3}],
        input_shape=[5, 2],
    )
    built = build_all(graph)
    assert len({m.count_params() for m in built.values()}) == 1
    assert isinstance(built["functional"].layers[1].forward_layer, keras.layers.LSTM)


def test_keras_errors_name_the_layer():
    graph = Graph.parse([{"type": "Conv2D", "filters": 4, "kernel_size": 3}], input_shape=[4])
    with pytest.raises(ConfigError, match=r"model.layers\[0\] \(Conv2D 'conv2d'\): Keras rejected it"):
        models.build(graph, "functional")


def test_subclass_model_saves_and_loads(tmp_path, make_cfg):
    graph = config.validate(make_cfg("model=resnet_small"))
    model = models.build(graph, "subclass")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.ones((1, 8, 8, 1), np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(loaded(x)), rtol=1e-6)


CUSTOM = '''
import keras


@keras.saving.register_keras_serializable(package="my_layers")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor
'''


def test_custom_layers_need_an_explicit_opt_in(tmp_path, monkeypatch):
    (tmp_path / "my_layers.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    layers = [{"type": "my_layers.Scale", "factor": 0.5}, {"type": "Flatten"}, {"type": "Dense", "units": 3}]
    with pytest.raises(ConfigError, match=r"'my_layers.Scale' is a custom layer .* `custom_layers: \[my_layers\]`"):
        Graph.parse(layers, input_shape=[4, 4, 1])
    graph = Graph.parse(layers, input_shape=[4, 4, 1], custom_layers=["my_layers"])
    built = build_all(graph)
    assert len({m.count_params() for m in built.values()}) == 1
    assert type(built["functional"].layers[1]).__name__ == "Scale"


@pytest.mark.parametrize("style", models.STYLES)
def test_mixed_precision_keeps_the_output_layer_in_float32(make_cfg, style):
    graph = config.validate(make_cfg("model=seed_cnn"))
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.build(graph, style)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    layers = [layer for layer in model.layers if layer.weights]
    assert [layer.dtype_policy.name for layer in layers] == ["mixed_bfloat16"] * 3 + ["float32"]
    assert model(np.zeros((1, 8, 8, 1), np.float32)).dtype == "float32"


REEXPORT = """
import keras

Sneaky = keras.layers.Lambda
"""


def test_code_running_layers_are_refused_by_any_path(tmp_path, monkeypatch):
    (tmp_path / "sneaky.py").write_text(REEXPORT)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"'keras.layers.Lambda' is not allowed as a custom layer"):
        Graph.parse([{"type": "keras.layers.Lambda", "function": "print"}], [4], custom_layers=["keras.layers"])
    with pytest.raises(ConfigError, match=r"'os.Thing' is not allowed as a custom layer"):
        Graph.parse([{"type": "os.Thing"}], [4], custom_layers=["os"])
    graph = Graph.parse([{"type": "sneaky.Sneaky", "function": "print"}], [4], custom_layers=["sneaky"])
    with pytest.raises(ConfigError, match=r"'sneaky.Sneaky' is a code-running Keras layer; it is refused"):
        models.build(graph, "functional")


def test_a_saved_model_naming_a_module_the_run_does_not_allow_is_refused(tmp_path, monkeypatch):
    from runner import checkpoints

    (tmp_path / "my_layers.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = Graph.parse([{"type": "my_layers.Scale"}, {"type": "Flatten"}, {"type": "Dense", "units": 2}], [4, 4, 1],
                        custom_layers=["my_layers"])
    models.build(graph, "subclass").save(tmp_path / "m.keras")
    monkeypatch.delitem(sys.modules, "my_layers")  # a fresh process: the module is not imported yet
    with pytest.raises(ConfigError, match=r"names custom layer modules \['my_layers'\] that the run's config does not allow"):
        keras.saving.load_model(tmp_path / "m.keras")
    assert "my_layers" not in sys.modules  # refused before anything imported it
    token = checkpoints.allowed_modules.set(("my_layers",))
    try:
        assert keras.saving.load_model(tmp_path / "m.keras").count_params() == 34
    finally:
        checkpoints.allowed_modules.reset(token)


def test_regularised_layers_are_built_with_the_keras_objects(make_cfg):
    import keras

    from runner.train import prepare

    cfg = make_cfg(*REGULARISED, "loop.epochs=1", *QUICK)
    dense = prepare(cfg, config.validate(cfg)).model.layers[-2]
    assert isinstance(dense.kernel_regularizer, keras.regularizers.L2) and dense.kernel_regularizer.l2 == pytest.approx(1e-3)
    assert isinstance(dense.kernel_initializer, keras.initializers.HeNormal)
    assert isinstance(dense.kernel_constraint, keras.constraints.MaxNorm)


@pytest.mark.parametrize("style", models.STYLES[1:])
def test_a_model_rebuilt_in_another_style_has_its_weights_layer_by_layer(style):
    """A merge that lists a later branch first: the functional model sorts its layers by depth (a, c, b),
    the subclass keeps the YAML's order (a, b, c), so b's and c's same-shaped kernels would swap by position."""
    layers = [{"type": "Dense", "units": 8, "name": "a"},
              {"type": "Dense", "units": 4, "name": "b", "inputs": ["input"]},
              {"type": "Dense", "units": 4, "name": "c", "inputs": ["a"]},
              {"type": "Concatenate", "name": "cat", "inputs": ["c", "b"]},
              {"type": "Dense", "units": 3, "activation": "softmax"}]
    graph = Graph.parse(layers, input_shape=[8])
    keras.utils.set_random_seed(1)
    trained = models.build(graph, "subclass" if style == "functional" else "functional")
    copy = models.rebuilt(trained, graph, style)
    x = np.random.default_rng(0).random((5, 8), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(copy(x)), np.asarray(trained(x)), rtol=1e-6)
