"""One graph, three builders: Sequential, Functional and Subclassed Keras models.

Each replays `Graph.nodes` in the same order, so the same YAML gives the same
layers, the same parameter count and (with one seed) the same initial weights.
Building does nothing else: no compile, no training, no logging.
"""

import importlib
import sys

import keras

from runner import checkpoints, keras_api
from runner.errors import ConfigError
from runner.graph import STYLES, Graph


def build(graph, style):
    """A Keras model of `graph` in `style` (one of STYLES), built and ready to compile.

    Under a mixed-precision policy the output layers compute in float32, so the
    softmax and the loss keep their precision.
    """
    if style == "sequential":
        return sequential(graph)
    if style == "functional":
        return functional(graph)
    if style == "subclass":
        return subclass(graph)
    raise ConfigError(f"model.style: unknown style {style!r}; expected one of {list(STYLES)}.")


def sequential(graph):
    problem = graph.sequential_error()
    if problem:
        raise ConfigError(problem)
    (shape,) = graph.inputs.values()
    model = keras.Sequential([keras.Input(shape)])
    for node in graph.nodes:
        layer = make_layer(node)
        _keras_call(node, lambda: model.add(layer))  # `add` builds the layer: shape errors surface here
    return model


def functional(graph):
    tensors = {name: keras.Input(shape, name=name) for name, shape in graph.inputs.items()}
    inputs = list(tensors.values())
    replay(graph, {node.name: make_layer(node) for node in graph.nodes}, tensors)
    outputs = [tensors[name] for name in graph.outputs]
    return keras.Model(_one_or_list(inputs), _one_or_list(outputs))


def subclass(graph):
    model = GraphModel(graph.to_config())
    model(_one_or_list([keras.Input(shape, name=name) for name, shape in graph.inputs.items()]))  # build
    return model


@keras.saving.register_keras_serializable(package="runner")
class GraphModel(keras.Model):
    """A subclassed model: `__init__` creates the layers, `call` replays the graph."""

    def __init__(self, graph, **kwargs):
        super().__init__(**kwargs)
        self.graph = Graph.parse(**graph)
        self.graph_layers = [make_layer(node) for node in self.graph.nodes]  # tracked by Keras

    def call(self, inputs):
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        tensors = dict(zip(self.graph.inputs, inputs))
        replay(self.graph, {layer.name: layer for layer in self.graph_layers}, tensors)
        return _one_or_list([tensors[name] for name in self.graph.outputs])

    def get_config(self):
        return {**super().get_config(), "graph": self.graph.to_config()}

    @classmethod
    def from_config(cls, config):
        """Loading imports no module the run's own config does not name: a saved file listing
        other `custom_layers` is refused (Keras' safe mode does not cover our graph's imports)."""
        named = config["graph"].get("custom_layers") or ()
        unknown = [m for m in named if m not in checkpoints.allowed_modules.get() and m not in sys.modules]
        if unknown:
            raise ConfigError(
                f"a saved model names custom layer modules {unknown} that the run's config does not allow; "
                "list them in model.custom_layers (their code runs), or import them before loading."
            )
        return super().from_config(config)


def import_layers(modules):
    """Import a config's `custom_layers` modules: their layer classes register themselves with Keras,
    which a saved model's file names (Keras imports no module itself)."""
    for module in modules:
        importlib.import_module(module)


def rebuilt(model, graph, style):
    """The same graph built again in `style` (under the current dtype policy) with `model`'s weights,
    copied layer by layer by name: the styles list their layers in different orders (a functional
    model sorts them by depth, a subclass keeps the YAML's), so positions do not match."""
    copy = build(graph, style)
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def output_shapes(model, graph):
    """The shape of each model output, from a symbolic call (works for all three styles)."""
    outputs = model(_one_or_list([keras.Input(shape) for shape in graph.inputs.values()]))
    return [tuple(o.shape) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def replay(graph, layers, tensors):
    """Call each layer on its inputs' tensors in topological order; add its output to `tensors`."""
    for node in graph.nodes:
        args = [tensors[name] for name in node.inputs]
        layer = layers[node.name]
        if len(args) == 1:
            call = lambda: layer(args[0])  # noqa: E731
        elif node.list_input:
            call = lambda: layer(args)  # noqa: E731  (Add, Concatenate, Attention take a list)
        else:
            call = lambda: layer(*args)  # noqa: E731  (MultiHeadAttention(query, value, key))
        tensors[node.name] = _keras_call(node, call)
    return tensors


def make_layer(node):
    spec = {"type": node.type, "name": node.name, **node.kwargs}
    if node.output and keras.mixed_precision.global_policy().name != "float32":
        spec.setdefault("dtype", "float32")
    return _keras_call(node, lambda: _instantiate(spec))


def _instantiate(spec):
    """A keras.layers object from a {type: ..., **kwargs} dict, nested layer specs included.

    `type: module.Class` imports an allowed custom layer (Graph.parse checked the module).
    """
    kwargs = {key: _nested(value) for key, value in spec.items() if key != "type"}
    module, _, name = spec["type"].rpartition(".")
    cls = getattr(importlib.import_module(module), name) if module else getattr(keras.layers, name)
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise ConfigError(f"{spec['type']!r} is not a keras.layers.Layer subclass.")
    refused = tuple(getattr(keras.layers, n) for n in keras_api.CODE_RUNNING if hasattr(keras.layers, n))
    if module and issubclass(cls, refused):  # a custom module that re-exports Lambda, TFSMLayer, ...
        raise ConfigError(f"{spec['type']!r} is a code-running Keras layer; it is refused.")
    return cls(**kwargs)


def _nested(value):
    if isinstance(value, dict) and "type" in value:
        return _instantiate(value)
    if isinstance(value, dict) and "class_name" in value:  # kernel_regularizer: {class_name: L2, l2: 1e-4}
        return {"class_name": value["class_name"], "config": {k: v for k, v in value.items() if k != "class_name"}}
    if isinstance(value, list):
        return [_nested(v) for v in value]
    return value


def _keras_call(node, fn):
    """Run `fn`, re-raising what Keras rejects (bad values, shapes) as a ConfigError naming the layer."""
    try:
        return fn()
    except (ValueError, TypeError) as error:
        if isinstance(error, ConfigError):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{node.where}: Keras rejected it: {first_line}") from error


def _one_or_list(items):
    return items[0] if len(items) == 1 else items
