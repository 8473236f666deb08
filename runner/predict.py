"""`runner predict RUN_ID|models:/... PATH [--out FILE]`: a trained model labels new inputs.

PATH is an image folder (flat, or one sub-folder per class), an .npz (its `x`, `x_test` or only
array) or a CSV (the training columns; others, the label among them, are ignored). Each input goes
through the run's own preprocessing: images decoded and resized as the training pipeline does and
scaled to [0, 1], arrays scaled as `dataset.scale` said, table rows encoded with the encoding learnt
on the training rows (recorded in the run's `data/data_info.json`). Everything is checked before
the first prediction (unreadable images, the array's shape, missing columns); predictions stream
batch by batch to a CSV (`input`, `predicted`, `probability`, then the top k), so memory stays flat.
"""

import csv
import sys
from pathlib import Path

import numpy as np

from runner import raw_inputs
from runner.errors import ConfigError
from runner.raw_inputs import BATCH


def predict(client, model_ref, path, out=None, top_k=3):
    """Label every input of `path` with the model `model_ref` (a run id or a models:/ URI)."""
    from runner.record import logged_config, logged_data_info

    run, model_uri = _source(client, model_ref)
    cfg, info = logged_config(run.info.run_id), logged_data_info(run.info.run_id)
    if info is None:
        raise ConfigError(f"predict: run {run.info.run_id} has no data/data_info.json (recorded since this "
                          "version): its inputs' preprocessing is unknown; train it again.")
    names, labels, batches, total = _inputs(Path(path), cfg, info)  # checked before any prediction
    import mlflow.keras  # imports TensorFlow

    from runner import models

    models.import_layers(cfg.model.custom_layers)
    model = mlflow.keras.load_model(model_uri)
    outputs = int(np.prod(model.output_shape[1:]))
    classes = raw_inputs.spec(info, cfg.dataset.name, cfg.dataset.scale, outputs)["class_names"]
    logits = raw_inputs.logits(cfg.model.loss)
    k = max(1, min(top_k, len(classes)))
    stream = open(out, "w", newline="") if out else sys.stdout
    try:
        writer = csv.writer(stream)
        writer.writerow(["input", "predicted", "probability", *(f"top{i + 1}" for i in range(k))])
        done = 0
        for x in batches:
            probs = raw_inputs.probabilities(model(x, training=False), logits)
            order = np.argsort(-probs, axis=1)[:, :k]
            for row, best in zip(probs, order):
                writer.writerow([names[done], classes[best[0]], f"{row[best[0]]:.4f}",
                                 *(f"{classes[c]}:{row[c]:.4f}" for c in best)])
                done += 1
            if out and total > BATCH:
                print(f"\rrunner: predicted {done} of {total}", end="", file=sys.stderr, flush=True)
        if out:
            print(f"{chr(13) if total > BATCH else ''}runner: {done} predictions written to {out}", file=sys.stderr)
    finally:
        if out:
            stream.close()
    return done


def _source(client, ref):
    """(the run that trained the model, the model's URI) of a run id or a models:/ URI."""
    from runner.record import find_run, registry

    if ref.startswith("models:/"):
        import mlflow

        try:
            found = mlflow.models.get_model_info(ref)
        except Exception as error:
            raise ConfigError(f"predict: no model {ref} in {client.tracking_uri}: {' '.join(str(error).split())[:200]}") from None
        run = client.get_run(found.run_id)
        return run, ref
    run = find_run(ref, client)
    if run is None:
        raise ConfigError(f"predict: no run {ref!r} in {client.tracking_uri}: pass --tracking-uri, or run where mlflow.db is.")
    return run, registry.logged_model(client, run).model_uri


def _inputs(path, cfg, info):
    """(names, None, batches of the model's input, how many) of PATH, checked whole first."""
    shape = tuple(info["input_shape"])
    if path.is_dir():
        return _images(path, shape, cfg)
    if path.suffix.lower() == ".npz":
        return _arrays(path, shape, cfg)
    if path.suffix.lower() == ".csv":
        return _table(path, info)
    raise ConfigError(f"predict: {path} is neither a folder of images, an .npz nor a .csv.")


def _images(folder, shape, cfg):
    from runner.data import folders

    if len(shape) != 3:
        raise ConfigError(f"predict: the model takes inputs of shape {list(shape)}, not images; give an .npz or a .csv.")
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in folders.EXTENSIONS)
    if not files:
        raise ConfigError(f"predict: {folder} holds no images ({', '.join(folders.EXTENSIONS)}).")
    channels, *_ = folders.scan(np.array(files), np.zeros(len(files)), "predict", fix="remove or replace them")
    if channels == 3 and shape[2] == 1:
        raise ConfigError(f"predict: {folder} holds colour images; the model was trained on grey ones {list(shape)}.")
    from runner.data import pipelines

    data = pipelines.pipeline(folders.Files(files, shape), np.zeros(len(files), np.int32), BATCH)
    names = [str(Path(f).relative_to(folder)) for f in files]
    return names, None, (x for x, _ in data), len(files)


def _arrays(path, shape, cfg):
    from runner.data import arrays, pipelines

    with np.load(path, allow_pickle=False) as raw:
        key = next((k for k in ("x", "x_test") if k in raw.files), raw.files[0] if len(raw.files) == 1 else None)
        if key is None:
            raise ConfigError(f"predict: {path} holds {raw.files}; name the inputs `x` (or `x_test`).")
        x = raw[key]
    x = arrays.inputs(x, key, cfg.dataset.scale)
    if tuple(x.shape[1:]) != shape:
        raise ConfigError(f"predict: {path}'s {key} has examples of shape {list(x.shape[1:])}; the model takes "
                          f"{list(shape)}.")
    data = pipelines.pipeline(x, np.zeros(len(x), np.int32), BATCH)
    return [str(i) for i in range(len(x))], None, (x for x, _ in data), len(x)


def _table(path, info):
    spec = info.get("encoding")
    if not spec:
        raise ConfigError(f"predict: the model was not trained on a table; give {'an image folder' if len(info['input_shape']) == 3 else 'an .npz'}.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header, *rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
        raise ConfigError(f"predict: cannot read {path} as CSV: {error}") from None
    header = [h.strip() for h in header]  # as training reads a header
    wanted = raw_inputs.columns(spec)
    missing = [c for c in wanted if c not in header]
    if missing or not rows:
        raise ConfigError(f"predict: {path} lacks the columns {missing} the model was trained on" if missing
                          else f"predict: {path} has no rows.")
    short = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if short is not None:
        raise ConfigError(f"predict: {path} line {short + 2} has {len(rows[short])} fields, the header {len(header)}.")
    at = {c: header.index(c) for c in wanted}
    table = {c: [r[at[c]].strip() for r in rows] for c in wanted}
    for name in spec["numeric"]:
        bad = next((i for i, v in enumerate(table[name]) if not _number(v)), None)
        if bad is not None:
            raise ConfigError(f"predict: {path} line {bad + 2}, column {name!r}: {table[name][bad]!r} is not a "
                              "number (training refused empty, NaN and infinite values too).")
        table[name] = np.array([float(v) for v in table[name]])
    x = raw_inputs.encode_table(spec, table)
    return [str(i + 1) for i in range(len(x))], None, (x[i:i + BATCH] for i in range(0, len(x), BATCH)), len(x)


def _number(value):
    try:
        return np.isfinite(float(value))
    except ValueError:
        return False
