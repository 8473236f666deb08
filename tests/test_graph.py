"""The layer-list validator: one test per rule, matched by message. No TensorFlow here."""

import pytest

from runner.errors import ConfigError
from runner.graph import Graph

SHAPE = [8, 8, 1]


def parse(layers, **kwargs):
    return Graph.parse(layers, SHAPE, **kwargs)


def test_chain_defaults_inputs_to_previous_layer_and_names_like_keras():
    g = parse(
        [
            {"type": "Conv2D", "filters": 4, "kernel_size": 3},
            {"type": "MaxPooling2D"},
            {"type": "Flatten"},
            {"type": "Dense", "units": 3},
        ]
    )
    assert [n.name for n in g.nodes] == ["conv2d", "max_pooling2d", "flatten", "dense"]
    assert [n.inputs for n in g.nodes] == [("input",), ("conv2d",), ("max_pooling2d",), ("flatten",)]
    assert g.outputs == ("dense",) and g.sequential_error() is None


def test_auto_names_avoid_user_names():
    g = parse([{"type": "Dense", "units": 2, "name": "dense"}, {"type": "Dense", "units": 2}])
    assert [n.name for n in g.nodes] == ["dense", "dense_1"]


def test_forward_reference_is_sorted_topologically():
    g = parse(
        [
            {"type": "Flatten", "name": "f"},
            {"type": "Add", "name": "sum", "inputs": ["a", "b"]},
            {"type": "Dense", "name": "a", "units": 4, "inputs": "f"},
            {"type": "Dense", "name": "b", "units": 4, "inputs": "f"},
        ],
        outputs="sum",
    )
    assert [n.name for n in g.nodes] == ["f", "a", "b", "sum"]
    assert g.sequential_error().startswith("model.layers[0] (Flatten 'f'): feeds 2 layers ['a', 'b']")


@pytest.mark.parametrize(
    "layers,message",
    [
        ([], r"model.layers: expected a non-empty list"),
        ([{"units": 3}], r"model.layers\[0\]: expected a mapping with a `type`"),
        ([{"type": "Dense", "unit": 3}], r"model.layers\[0\] \(Dense\): unknown argument 'unit' .*Did you mean 'units'"),
        ([{"type": "Dense"}], r"model.layers\[0\] \(Dense\): missing required argument 'units'"),
        ([{"type": "Dense2", "units": 3}], r"unknown type 'Dense2': not a class in keras.layers. Did you mean 'Dense'"),
        ([{"type": "Dense", "units": 3, "input_shape": [4]}], r"remove `input_shape`/`input_dim`"),
        (
            [{"type": "Dense", "units": 3, "name": "a"}, {"type": "Dense", "units": 3, "name": "a"}],
            r"model.layers\[1\] \(Dense 'a'\): duplicate name, already used by model.layers\[0\]",
        ),
        (
            [{"type": "Dense", "units": 3, "name": "a"}, {"type": "Dense", "units": 3, "inputs": "conv9"}],
            r"model.layers\[1\] \(Dense 'dense'\): unknown input 'conv9'",
        ),
        (
            [{"type": "Dense", "units": 3, "name": "a", "inputs": "b"}, {"type": "Dense", "units": 3, "name": "b", "inputs": "a"}],
            r"the inputs form a cycle: 'a' -> 'b' -> 'a'|the inputs form a cycle: 'b' -> 'a' -> 'b'",
        ),
        ([{"type": "Dense", "units": 3}, {"type": "Add"}], r"model.layers\[1\] \(Add 'add'\): a merge layer needs at least 2 inputs"),
        (
            [{"type": "Dense", "units": 3, "name": "a"}, {"type": "Dense", "units": 3, "inputs": "input"}],
            r"model.layers\[0\] \(Dense 'a'\): does not lead to any model output",
        ),
        (
            [{"type": "Bidirectional", "layer": {"type": "LSTM", "unitz": 4}}],
            r"model.layers\[0\] \(Bidirectional\).layer: unknown argument 'unitz' .*Did you mean 'units'",
        ),
    ],
)
def test_structural_errors(layers, message):
    with pytest.raises(ConfigError, match=message):
        parse(layers)


def test_unknown_output_is_named():
    with pytest.raises(ConfigError, match=r"model.outputs: unknown layer 'haed'. Did you mean 'head'"):
        parse([{"type": "Dense", "units": 3, "name": "head"}], outputs="haed")


def test_branch_is_refused_for_sequential_naming_the_first_branching_layer():
    g = parse(
        [
            {"type": "Dense", "units": 4, "name": "a"},
            {"type": "Dense", "units": 4, "name": "b"},
            {"type": "Add", "name": "skip", "inputs": ["a", "b"]},
        ]
    )
    assert g.sequential_error().startswith("model.layers[0] (Dense 'a'): feeds 2 layers ['b', 'skip']")
    assert "use model-style=functional or model-style=subclass" in g.sequential_error()


def test_several_inputs_and_outputs():
    g = Graph.parse(
        [
            {"type": "Concatenate", "name": "both", "inputs": ["left", "right"]},
            {"type": "Dense", "units": 2, "name": "out_a"},
            {"type": "Dense", "units": 3, "name": "out_b", "inputs": "both"},
        ],
        inputs=[{"name": "left", "shape": [4]}, {"name": "right", "shape": [5]}],
        outputs=["out_a", "out_b"],
    )
    assert list(g.inputs) == ["left", "right"] and g.outputs == ("out_a", "out_b")
    assert "2 inputs" in g.sequential_error()
    assert Graph.parse(**g.to_config()) == g  # round trip, as the subclass model's get_config needs
