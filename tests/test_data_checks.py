"""runner/data/checks.py: the model fits the data (here: the built model's output against num_classes)."""

import pytest

from runner import models
from runner.data import checks
from runner.errors import ConfigError
from runner.graph import Graph


def test_output_width_must_match_num_classes():
    graph = Graph.parse([{"type": "Flatten"}, {"type": "EinsumDense", "equation": "ab,bc->ac", "output_shape": 10}],
                        input_shape=[8, 8, 1])
    model = models.build(graph, "functional")
    with pytest.raises(ConfigError, match=r"model.layers\[1\] \(EinsumDense 'einsum_dense'\): .* dataset.num_classes is 100"):
        checks.output(model, graph, 100)


def test_forgotten_flatten_is_explained():
    graph = Graph.parse([{"type": "Dense", "units": 10}], input_shape=[8, 8, 1])
    model = models.build(graph, "functional")
    with pytest.raises(ConfigError, match="Add a Flatten or GlobalAveragePooling layer"):
        checks.output(model, graph, 10)
