"""The YAML layer list, validated once into a DAG in topological order.

Pure Python: no TensorFlow here, so every structural mistake is reported in
milliseconds. The three model styles (`runner.models`) replay `Graph.nodes`.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from runner import keras_api
from runner.errors import ConfigError

STYLES = ("sequential", "functional", "subclass")  # the three builders of runner.models
RESERVED = ("type", "name", "inputs")  # every other key of an entry is the layer's own argument
# Packages whose modules are not "your own layers": through them a config could reach Lambda and friends.
FRAMEWORKS = ("keras", "tensorflow", "tf_keras", "jax", "torch", "builtins", "os", "sys", "subprocess")


@dataclass(frozen=True)
class Node:
    index: int  # position in model.layers, for messages
    name: str
    type: str  # a class name in keras.layers
    inputs: tuple  # names of model inputs or earlier nodes
    kwargs: dict  # the layer's own keyword arguments; nested layers stay {type: ...} dicts
    output: bool = False  # a model output

    @property
    def where(self):
        return f"model.layers[{self.index}] ({self.type} {self.name!r})"

    @property
    def list_input(self):
        return keras_api.index()["layers"].get(self.type, {"list_input": True})["list_input"]

    @property
    def merge(self):
        return keras_api.index()["layers"].get(self.type, {"merge": False})["merge"]


@dataclass(frozen=True)
class Graph:
    inputs: dict  # model input name -> shape (without the batch axis)
    nodes: tuple  # Node, in topological order
    outputs: tuple  # names of the nodes that are model outputs
    custom_layers: tuple = ()  # modules whose layer classes `type: module.Class` may name

    @classmethod
    def parse(cls, layers, input_shape=None, inputs=None, outputs=None, custom_layers=()):
        """Validate a model config's `layers`, `inputs` and `outputs` into a Graph.

        `inputs` is a list of {name, shape}; without it the model has one input,
        named "input", of `input_shape` (the data set's). `custom_layers` lists
        the Python modules the user allows layer types from (their code runs).
        """
        model_inputs = _model_inputs(inputs, input_shape)
        custom_layers = tuple(custom_layers or ())
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError("model.layers: expected a non-empty list of layers, each with a `type`.")
        entries = [_entry(i, spec, custom_layers) for i, spec in enumerate(layers)]
        names = _names(entries, model_inputs)
        nodes = []
        for i, (type_, given_name, given_inputs, kwargs) in enumerate(entries):
            default = names[i - 1] if i else next(iter(model_inputs))
            ins = _as_names(given_inputs, f"model.layers[{i}].inputs") if given_inputs is not None else (default,)
            nodes.append(Node(i, names[i], type_, ins, kwargs))
        known = set(model_inputs) | set(names)
        for node in nodes:
            for name in node.inputs:
                if name not in known:
                    hint = keras_api.did_you_mean(name, sorted(known))
                    raise ConfigError(f"{node.where}: unknown input {name!r}.{hint}")
            if node.merge and len(node.inputs) < 2:
                raise ConfigError(
                    f"{node.where}: a merge layer needs at least 2 inputs, got {list(node.inputs)}. "
                    "List them: `inputs: [a, b]`."
                )
        outs = _as_names(outputs, "model.outputs") if outputs is not None else (names[-1],)
        for name in outs:
            if name not in names:
                raise ConfigError(f"model.outputs: unknown layer {name!r}.{keras_api.did_you_mean(name, names)}")
        nodes = [replace(n, output=n.name in outs) for n in nodes]
        graph = cls(model_inputs, _topological(nodes), outs, custom_layers)
        graph._check_connected()
        return graph

    def _check_connected(self):
        """Every layer must feed an output, and every input must be used: the
        subclass style builds all layers, so a dangling one would change the
        parameter count between styles."""
        by_name = {n.name: n for n in self.nodes}
        needed, todo = set(), list(self.outputs)
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo.extend(by_name[name].inputs if name in by_name else ())
        for node in self.nodes:
            if node.name not in needed:
                raise ConfigError(
                    f"{node.where}: does not lead to any model output {list(self.outputs)}. "
                    "Remove it, use it as another layer's input, or list it in `model.outputs`."
                )
        for name in self.inputs:
            if name not in needed:
                raise ConfigError(f"model.inputs: input {name!r} is not used by any layer.")

    def sequential_error(self):
        """Why `keras.Sequential` cannot build this graph, or None for a plain chain."""
        fix = "model-style=sequential builds chains only; use model-style=functional or model-style=subclass."
        if len(self.inputs) > 1:
            return f"model.inputs: the model has {len(self.inputs)} inputs; {fix}"
        consumers = {}
        for node in self.nodes:
            for name in node.inputs:
                consumers.setdefault(name, []).append(node.name)
        previous = next(iter(self.inputs))
        for node in self.nodes:
            if node.inputs != (previous,):
                return f"{node.where}: merges {list(node.inputs)}; {fix}"
            if len(consumers.get(previous, ())) > 1:
                return f"{self._where(previous)}: feeds {len(consumers[previous])} layers {consumers[previous]}; {fix}"
            previous = node.name
        if self.outputs != (previous,):
            return f"model.outputs: {list(self.outputs)} is not the chain's last layer {previous!r}; {fix}"
        return None

    def _where(self, name):
        node = next((n for n in self.nodes if n.name == name), None)
        return node.where if node else f"model input {name!r}"

    def to_config(self):
        """A plain-dict config that `Graph.parse(**config)` turns back into this graph."""
        return {
            "inputs": [{"name": name, "shape": list(shape)} for name, shape in self.inputs.items()],
            "layers": [{"type": n.type, "name": n.name, "inputs": list(n.inputs), **n.kwargs} for n in self.nodes],
            "outputs": list(self.outputs),
            "custom_layers": list(self.custom_layers),
        }


def _model_inputs(inputs, input_shape):
    if inputs is None:
        if input_shape is None:
            raise ConfigError("model.inputs: no input shape; set dataset.input_shape or model.inputs.")
        inputs = [{"name": "input", "shape": input_shape}]
    result = {}
    for i, spec in enumerate(inputs):
        if not isinstance(spec, Mapping) or set(spec) != {"name", "shape"}:
            raise ConfigError(f"model.inputs[{i}]: expected {{name: ..., shape: [...]}}, got {spec!r}.")
        shape = spec["shape"]
        if not isinstance(shape, (list, tuple)) or not all(d is None or (isinstance(d, int) and d > 0) for d in shape):
            raise ConfigError(f"model.inputs[{i}].shape: expected a list of positive ints, got {shape!r}.")
        if spec["name"] in result:
            raise ConfigError(f"model.inputs[{i}]: duplicate input name {spec['name']!r}.")
        result[spec["name"]] = tuple(shape)
    return result


def _entry(i, spec, custom_layers):
    """(type, name or None, inputs or None, kwargs) of one layer entry, its type and arguments checked."""
    where = f"model.layers[{i}]"
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a `type` (a class in keras.layers), got {spec!r}.")
    kwargs = {k: v for k, v in spec.items() if k not in RESERVED}
    type_, name = spec["type"], spec.get("name")
    where += f" ({type_} {name!r})" if name is not None else f" ({type_})"
    if "input_shape" in kwargs or "input_dim" in kwargs:
        raise ConfigError(
            f"{where}: remove `input_shape`/`input_dim`: the model's input shape comes from "
            "`dataset.input_shape` (or `model.inputs`)."
        )
    type_ = _check_layer(type_, kwargs, where, custom_layers)
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"{where}: `name` must be a non-empty string, got {name!r}.")
    return type_, name, spec.get("inputs"), kwargs


def _check_layer(type_, kwargs, where, custom_layers):
    """Check a layer's type and arguments, and those of layers nested in its arguments
    (`Bidirectional(layer: {type: LSTM, ...})`); return Keras' spelling of the type.

    A custom type (`module.Class`) is checked only for its module being allowed;
    Keras checks its arguments when the layer is built.
    """
    if isinstance(type_, str) and "." in type_:
        module, _, name = type_.rpartition(".")
        if name in keras_api.CODE_RUNNING or module.split(".")[0] in FRAMEWORKS:
            raise ConfigError(
                f"{where}: {type_!r} is not allowed as a custom layer: custom layers are your own classes; "
                f"Keras' layers are named without a module (`type: {name}`), and code-running ones are refused."
            )
        if module not in custom_layers:
            raise ConfigError(
                f"{where}: {type_!r} is a custom layer from module {module!r}. Custom layers run your code, "
                f"so the model must allow the module by name: `custom_layers: [{module}]` in the model config."
            )
    else:
        type_ = keras_api.check("layers", type_, kwargs, where)
    for arg, value in kwargs.items():
        for j, item in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(item, Mapping) and "type" in item:
                sub = f"{where}.{arg}" + (f"[{j}]" if isinstance(value, (list, tuple)) else "")
                _check_layer(item["type"], {k: v for k, v in item.items() if k != "type"}, sub, custom_layers)
    return type_


def _names(entries, model_inputs):
    """Each entry's name: its own, else Keras' style (`conv2d`, `conv2d_1`, ...)."""
    taken = dict.fromkeys(model_inputs, "a model input")
    for i, (type_, name, _, _) in enumerate(entries):
        if name is not None:
            if name in taken:
                raise ConfigError(
                    f"model.layers[{i}] ({type_} {name!r}): duplicate name, already used by {taken[name]}. "
                    "Give each layer a unique `name`."
                )
            taken[name] = f"model.layers[{i}]"
    names = []
    for type_, name, _, _ in entries:
        if name is None:
            base = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", type_)).lower()  # as Keras
            name, n = base, 0
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            taken[name] = "an unnamed layer"
        names.append(name)
    return names


def _as_names(value, where):
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: expected a layer name or a list of names, got {value!r}.")
    return names


def _topological(nodes):
    """Nodes in an order where each comes after its inputs; YAML order where free (Kahn's algorithm)."""
    by_name = {n.name: n for n in nodes}
    done, order = set(), []
    pending = list(nodes)
    while pending:
        ready = next((n for n in pending if all(i in done or i not in by_name for i in n.inputs)), None)
        if ready is None:
            raise ConfigError(f"model.layers: the inputs form a cycle: {_cycle(pending, by_name)}.")
        pending.remove(ready)
        done.add(ready.name)
        order.append(ready)
    return tuple(order)


def _cycle(pending, by_name):
    """A readable cycle among the pending nodes: 'a -> b -> a'."""
    waiting = {n.name: [i for i in n.inputs if i in by_name and i in {p.name for p in pending}] for n in pending}
    path, name = [], pending[0].name
    while name not in path:
        path.append(name)
        name = waiting[name][0]
    flow = list(reversed(path[path.index(name):] + [name]))  # each name feeds the next
    return " -> ".join(repr(n) for n in flow) + f" (at {by_name[flow[0]].where})"
