"""Does the model fit the data? Every rule and its message, checked at the moment its facts exist:

- `model(cfg, info)`, as the data is read (data.fill): one input of the data's shape, one output,
  a loss that takes integer class labels;
- `head(graph, loss, num_classes)`, once the layer graph is parsed (config.validate): the output
  layer's units against num_classes, its activation against the loss's from_logits;
- `output(model, graph, num_classes)`, once Keras has built the model (work.build_model): one score
  per class, whatever the layers before the head do to the shape.

The first two need no TensorFlow; the third is handed a built Keras model.
"""

from omegaconf import OmegaConf

from runner.data import augment
from runner.errors import ConfigError


def model(cfg, info):
    """One x and one integer y per example: a model with several inputs or outputs, or a loss that
    wants one-hot labels, does not fit."""
    inputs = OmegaConf.select(cfg, "model.inputs")
    if inputs is not None and len(inputs) > 1:
        raise ConfigError(f"model.inputs: the model has {len(inputs)} inputs, but dataset {info.name!r} gives one x "
                          "per example. Use one input, or feed the data yourself (runner.data gives one x and one y).")
    if inputs is not None and len(inputs) == 1 and list(inputs[0].shape) != list(info.input_shape):
        raise ConfigError(f"model.inputs[0].shape: {list(inputs[0].shape)}, but the data's examples have shape "
                          f"{list(info.input_shape)}. Write `shape: ${{dataset.input_shape}}`.")
    outputs = OmegaConf.select(cfg, "model.outputs")
    if not isinstance(outputs, (str, type(None))) and len(outputs) > 1:
        raise ConfigError(f"model.outputs: the model has {len(outputs)} outputs {list(outputs)}, but dataset "
                          f"{info.name!r} gives one label per example. Name one output layer.")
    loss = OmegaConf.select(cfg, "model.loss.class_name")
    if augment.expects_one_hot(loss):
        raise ConfigError(f"model.loss.class_name: {loss} expects one-hot labels, but the runner's labels are integer "
                          "class indices. Use SparseCategoricalCrossentropy (the same loss, integer labels); "
                          "model.label_smoothing or a MixUp/CutMix in dataset.augment switches it to one-hot labels.")


def head(graph, loss, num_classes):
    """The output layer against the data set and the loss: the tutorial's 10 units for 100
    classes, or a softmax fed to a loss that applies softmax again (or logits to one that does not)."""
    node = _head(graph)
    units = node.kwargs.get("units")
    if node.type == "Dense" and isinstance(units, int) and units != num_classes:
        raise ConfigError(
            f"{node.where}: units={units}, but dataset.num_classes is {num_classes}. "
            "Write `units: ${dataset.num_classes}` so the output follows the data set."
        )
    activation = "softmax" if node.type == "Softmax" else node.kwargs.get("activation", "linear")
    if "crossentropy" not in str(loss.get("class_name", "")).lower():
        return
    from_logits = bool(loss.get("from_logits", False))
    if from_logits and activation == "softmax":
        raise ConfigError(
            f"{node.where}: ends in softmax, but model.loss.from_logits is true, so the loss would apply "
            "softmax a second time. Set model.loss.from_logits=false, or remove the activation."
        )
    if not from_logits and activation in (None, "linear"):
        raise ConfigError(
            f"{node.where}: outputs logits (no activation), but model.loss expects probabilities "
            "(from_logits false). Set model.loss.from_logits=true, or add `activation: softmax`."
        )


def output(model, graph, num_classes):
    """The first output must be one score per class: catches a 10-unit head on 100 classes, or a missing Flatten."""
    from runner.models import output_shapes  # a built model: Keras is imported already

    shape = output_shapes(model, graph)[0]
    if shape[1:] != (num_classes,):
        hint = " Add a Flatten or GlobalAveragePooling layer before it." if len(shape) > 2 else ""
        raise ConfigError(
            f"{_head(graph).where}: the model's output has shape {list(shape[1:])} per example, but "
            f"dataset.num_classes is {num_classes}: the output layer must have {num_classes} units "
            f"(`units: ${{dataset.num_classes}}`).{hint}"
        )


def _head(graph):
    return next(n for n in graph.nodes if n.name == graph.outputs[0])
