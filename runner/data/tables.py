"""The tables source: one CSV (or train and test CSVs) with a label column, and scikit-learn's
bundled tables (wine, breast_cancer, iris).

Reading, typing and encoding the columns needs no TensorFlow: `encode` turns the
columns into one float32 vector per row with an encoding learnt on the training
split only, as Keras' `Normalization` (numbers) and `StringLookup` one-hot
(categories, one extra slot for a value the training split never had) would.
The model's input is that vector, so all three model styles take it as is; the
encoding is plain JSON in the DataInfo, recorded with the run, so `runner
predict` encodes new rows the same way.
"""

import csv
from pathlib import Path

import numpy as np

from runner.data import splits
from runner.data.arrays import sklearn_file
from runner.errors import ConfigError
from runner.raw_inputs import encode_table

SKLEARN_TABLES = {"wine": "wine_data.csv", "breast_cancer": "breast_cancer.csv", "iris": "iris.csv"}


def inspect(cfg):
    """The DataInfo of the table: its width once encoded and its columns (the vocabularies of the training rows)."""
    data, rows, _ = _split(cfg)
    return splits.describe(cfg, data, rows)


def load(cfg, info=None):
    """Train, validation and test as float32 matrices, encoded as `encode` says."""
    data, rows, vocab = _split(cfg)
    info = info or splits.describe(cfg, data, rows)
    splits.agree(cfg, info, set_missing=False)
    x_train, *x_test = encode(data.x_train, rows[0], vocab, *([] if data.x_test is None else [data.x_test]))
    return splits.Splits(*splits.parts(x_train, data.y_train, x_test[0] if x_test else None, data.y_test, rows),
                         info=info)


def _split(cfg):
    """(the table read, partition's rows, the vocabularies of its training rows)."""
    data = read(cfg)
    rows = splits.partition(data, cfg)
    vocab = vocabularies(data.x_train, rows[0])
    data.input_shape, data.features = (width(data.x_train, vocab),), list(data.x_train)
    data.encoding = encoding(data.x_train, rows[0], vocab)
    return data, rows, vocab


def read(cfg):
    if cfg.name in SKLEARN_TABLES:
        columns, y, names, path = read_sklearn(cfg.name)
        return splits.Read(columns, y.astype(np.int32), None, None, str(path), (path,), names)
    splits.need_path(cfg, "table.csv")
    columns, labels = read_csv(cfg.path, cfg.label, list(cfg.categorical))
    test_columns, test_labels = None, None
    if cfg.test_path is not None:
        test_columns, test_labels = read_csv(cfg.test_path, cfg.label, list(cfg.categorical))
        if list(test_columns) != list(columns):
            raise ConfigError(f"dataset.test_path: columns {list(test_columns)} differ from dataset.path's "
                              f"{list(columns)}.")
    names, y, y_test = classes(labels, test_labels, cfg.path)
    return splits.Read(columns, y, test_columns, y_test, str(cfg.path), (cfg.path, cfg.test_path), names)


def read_csv(path, label, categorical):
    """({column: values}, label values as strings) of a CSV with a header row."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"dataset.path: no file at {str(path)!r}.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"dataset.path: cannot read {str(path)!r} as CSV: {error}") from error
    if len(rows) < 2:
        raise ConfigError(f"dataset.path: {str(path)!r} has no rows under its header.")
    header, rows = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if label not in header:
        raise ConfigError(
            f"dataset.label: {str(path)!r} has no column {label!r}; its columns are {header}. "
            "Set dataset.label=<the column with the classes>."
        )
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ConfigError(f"dataset.path: {str(path)!r} line {i + 2} has {len(row)} fields, "
                              f"the header {len(header)}.")
    unknown = sorted(set(categorical) - set(header))
    if unknown:
        raise ConfigError(f"dataset.categorical: no columns {unknown} in {str(path)!r}; its columns are {header}.")
    values = {name: [row[i].strip() for row in rows] for i, name in enumerate(header)}
    labels = np.array(values.pop(label))
    return {name: _typed(name, column, name in categorical, path) for name, column in values.items()}, labels


def _typed(name, column, categorical, path):
    """Numbers as float64 unless the column is named categorical or holds a non-number."""
    if not categorical:
        try:
            numbers = np.array([float(v) if v else np.nan for v in column])
        except ValueError:
            return np.array(column)  # text: a categorical column
        missing = np.flatnonzero(np.isnan(numbers))
        if missing.size:
            raise ConfigError(
                f"dataset: column {name!r} of {str(path)!r} has {missing.size} empty or NaN values (first on line "
                f"{missing[0] + 2}); fill or drop them, or list it in dataset.categorical to treat it as a category."
            )
        return numbers
    return np.array(column)


def read_sklearn(name):
    """scikit-learn's bundled table `name`: ({feature_i: float64}, labels, class names, file)."""
    path = sklearn_file(SKLEARN_TABLES[name])
    if path is None:
        raise ConfigError(f"dataset: scikit-learn's {SKLEARN_TABLES[name]} is not installed; pip install scikit-learn.")
    with open(path) as f:
        class_names = next(csv.reader(f))[2:]  # first line: n_samples, n_features, class names
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    features = {f"feature_{i}": table[:, i] for i in range(table.shape[1] - 1)}
    return features, table[:, -1].astype(np.int64), class_names, path


def classes(train_labels, test_labels, source):
    """(class names, train labels as indices, test labels as indices): classes sorted, numerically
    where every label is a number."""
    names = sorted(set(train_labels.tolist()), key=_number_first)
    index = {name: i for i, name in enumerate(names)}
    unseen = sorted(set(test_labels.tolist()) - set(index)) if test_labels is not None else []
    if unseen:
        raise ConfigError(f"dataset.test_path: test labels {unseen[:5]} never occur in {source}'s training rows.")
    to_index = np.vectorize(index.__getitem__, otypes=[np.int32])
    return names, to_index(train_labels), None if test_labels is None else to_index(test_labels)


def _number_first(value):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def vocabularies(columns, train_rows):
    """{categorical column: its sorted values in the training rows}: what StringLookup adapts to."""
    return {name: sorted(set(values[train_rows].tolist()))
            for name, values in columns.items() if values.dtype.kind == "U"}


def width(columns, vocab):
    """The length of an encoded row: one value per numeric column, a one-hot (with an OOV slot) per category."""
    return sum(1 for v in columns.values() if v.dtype.kind != "U") + sum(len(v) + 1 for v in vocab.values())


def encoding(columns, train_rows, vocab):
    """How a row becomes the model's input, learnt from the training rows only, as plain JSON (the
    run records it, `runner predict` applies it to new rows): each numeric column standardised by
    the training rows' mean and variance (Keras' Normalization), each categorical one one-hot over
    its training values with a first slot for a value never seen (Keras' StringLookup)."""
    numeric = [name for name, v in columns.items() if v.dtype.kind != "U"]
    stacked = np.stack([columns[n] for n in numeric], axis=1)[train_rows].astype(np.float64) if numeric else None
    return {"numeric": numeric,
            "mean": stacked.mean(axis=0).tolist() if numeric else [],
            "variance": stacked.var(axis=0).tolist() if numeric else [],
            "vocab": {name: list(values) for name, values in vocab.items()}}


def encode(columns, train_rows, vocab, *others):
    """Each of `columns` and `others` (tables of the same columns) as a float32 matrix, with the
    encoding learnt on `columns`' `train_rows` only."""
    spec = encoding(columns, train_rows, vocab)
    return [encode_table(spec, table) for table in (columns, *others)]
