"""runner/raw_inputs.py: raw inputs to the model's input, and the logged model's answer and signature,
without training (the pyfunc end to end is in test_predict.py and test_serve.py)."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from runner import raw_inputs
from runner.data import tables

ENCODING = {"numeric": ["size"], "mean": [5.0], "variance": [4.0], "vocab": {"colour": ["blue", "red"]}}
TABLE = {"kind": "table", "input_shape": [4], "class_names": ["big", "small"], "encoding": ENCODING, "scale": "auto"}


def test_a_table_is_encoded_as_training_encodes_it():
    columns = {"size": np.array([1.0, 5.0, 9.0]), "colour": np.array(["red", "blue", "red"])}
    vocab = tables.vocabularies(columns, np.arange(3))
    (trained,) = tables.encode(columns, np.arange(3), vocab)
    spec = tables.encoding(columns, np.arange(3), vocab)
    raw = pd.DataFrame({"colour": ["red", "blue", "red"], "size": [1, 5, 9], "other": [0, 0, 0]})
    np.testing.assert_array_equal(raw_inputs.model_input({**TABLE, "encoding": spec}, raw), trained)


def test_a_table_value_never_seen_takes_its_unknown_slot_and_numbers_are_standardised():
    x = raw_inputs.model_input(TABLE, pd.DataFrame({"size": [7.0], "colour": ["green"]}))
    np.testing.assert_allclose(x, [[1.0, 1.0, 0.0, 0.0]])  # (7 - 5) / 2, then unknown, blue, red
    x = raw_inputs.model_input(TABLE, pd.DataFrame({" size": [7], "colour": [" red "]}))  # read as a CSV is
    np.testing.assert_allclose(x, [[1.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize("rows, message", [
    ({"colour": ["red"]}, r"lacks \['size'\]"),
    ({"size": ["big"], "colour": ["red"]}, r"row 0, column 'size': 'big' is not a finite number"),
    ({"size": [1.0, float("nan")], "colour": ["red", "red"]}, r"row 1, column 'size'"),
])
def test_a_wrong_row_names_the_column(rows, message):
    with pytest.raises(ValueError, match=message):
        raw_inputs.model_input(TABLE, pd.DataFrame(rows))


def test_image_bytes_are_decoded_resized_and_scaled():
    spec = {"kind": "images", "input_shape": [4, 4, 3], "class_names": ["a", "b"], "scale": "auto"}
    png = io.BytesIO()
    Image.fromarray(np.full((8, 6, 3), 51, np.uint8)).save(png, format="PNG")
    x = raw_inputs.model_input(spec, pd.DataFrame({"image": [png.getvalue()]}))
    assert x.shape == (1, 4, 4, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, 0.2, atol=1e-6)
    with pytest.raises(ValueError, match="image files' bytes"):
        raw_inputs.model_input(spec, pd.DataFrame({"image": ["a path, not the file"]}))


@pytest.mark.parametrize("scale, expected", [("auto", 0.2), ("255", 0.2), ("none", 51.0)])
def test_arrays_are_scaled_as_the_data_set_said(scale, expected):
    spec = {"kind": "arrays", "input_shape": [2, 2, 1], "class_names": ["a", "b"], "scale": scale}
    x = raw_inputs.model_input(spec, np.full((3, 2, 2), 51, np.uint8))  # grey, without the channel axis
    assert x.shape == (3, 2, 2, 1)
    np.testing.assert_allclose(x, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"inputs of shape \[2, 2, 1\] \(one per row\); got \[3, 3, 1\]"):
        raw_inputs.model_input(spec, np.zeros((1, 3, 3, 1), np.uint8))


def test_the_answer_and_signature_name_the_classes():
    answer = raw_inputs.answer(["big", "small"], np.array([[0.2, 0.8], [0.9, 0.1]]))
    assert list(answer.columns) == ["predicted", "probability", "p_big", "p_small"]
    assert list(answer["predicted"]) == ["small", "big"] and list(answer["probability"]) == [0.8, 0.9]
    signature = raw_inputs.signature(TABLE)
    assert [c.name for c in signature.inputs.inputs] == ["size", "colour"]  # typed by model_input, not MLflow
    assert signature.outputs.input_names() == ["predicted", "probability", "p_big", "p_small"]
    assert raw_inputs.answer(["a", "b"], np.zeros((0, 2))).shape == (0, 4)  # no rows in, none out


def test_class_names_cover_every_output_and_logits_become_probabilities():
    info = {"num_classes": 10, "input_shape": [8, 8, 1], "class_names": None}
    assert raw_inputs.spec(info, "digits", "auto", outputs=12)["class_names"] == [str(i) for i in range(12)]
    assert raw_inputs.spec({**info, "class_names": ["no", "yes"]}, "csv", "auto", outputs=1)["class_names"] == ["no", "yes"]
    np.testing.assert_allclose(raw_inputs.probabilities([[0.0, np.log(3.0)]], "softmax"), [[0.25, 0.75]])
    np.testing.assert_allclose(raw_inputs.probabilities([[0.0]], "softmax"), [[0.5, 0.5]])
    np.testing.assert_allclose(raw_inputs.probabilities([[0.0, np.log(3.0)]], "sigmoid"), [[0.5, 0.75]])  # multi-label
    assert raw_inputs.logits({"class_name": "BinaryCrossentropy", "from_logits": True}) == "sigmoid"
    assert raw_inputs.logits({"class_name": "SparseCategoricalCrossentropy", "from_logits": True}) == "softmax"
    assert raw_inputs.logits({"class_name": "SparseCategoricalCrossentropy", "from_logits": False}) is None
    np.testing.assert_allclose(raw_inputs.probabilities([[0.2], [0.9]]), [[0.8, 0.2], [0.1, 0.9]])
    np.testing.assert_allclose(raw_inputs.probabilities([[0.3, 0.7]]), [[0.3, 0.7]])  # probabilities stay


def test_the_shipped_module_imports_nothing_of_the_runner():
    """It is copied into every logged model and loaded where the runner may not be installed."""
    import ast

    tree = ast.parse(open(raw_inputs.__file__).read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "runner" for name in imported), imported
