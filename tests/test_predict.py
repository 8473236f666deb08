"""`runner predict`: a trained model labels new image files, arrays and raw CSV rows through the run's own
preprocessing; a wrong input is one clear error before any prediction."""

import csv
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import cli, only_run

pytestmark = pytest.mark.slow  # each module trains a real model first
TINY = ["loop.epochs=4", "loop.verbose=0", "mlflow.log_figures=false"]


def images(folder, n, classes=("bright", "dark"), nested=True, mode="RGB"):
    rng = np.random.default_rng(zlib.crc32(folder.name.encode()))  # the same pixels wherever tmp is (xdist)
    for name in classes:
        target = folder / name if nested else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(rng.normal(200 if name == "bright" else 40, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).convert(mode).save(target / f"{name}{i}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_images")
    images(tmp / "photos", 30)
    done = cli("dataset=image_folder", "dataset.path=photos", "model=mlp", *TINY, "loop.epochs=30", "loop.batch_size=8",
               "optimizer.learning_rate=0.003", cwd=tmp)  # 42 training images: 6 steps an epoch, 180 in all
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, only_run(tmp)[1]


def test_a_folder_of_new_images_is_labelled_by_class_name(folder_run):
    tmp, run = folder_run
    images(tmp / "new", 6, nested=False)  # flat, names unknown to the model
    done = cli("predict", run.info.run_id, "new", "--out", "labels.csv", cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp / "labels.csv")))
    assert len(rows) == 12 and set(rows[0]) == {"input", "predicted", "probability", "top1", "top2"}
    right = sum(r["predicted"] == r["input"].rstrip("0123456789.png") for r in rows)
    assert right >= 11, rows  # bright and dark: the model learnt them
    for row in rows:
        assert row["top1"] == f"{row['predicted']}:{row['probability']}" and 0.5 <= float(row["probability"]) <= 1


def test_the_registered_champion_predicts_the_same(folder_run):
    tmp, run = folder_run
    assert cli("register", run.info.run_id, "shades", cwd=tmp).returncode == 0
    images(tmp / "more", 3)  # one folder per class works too
    by_run = cli("predict", run.info.run_id, "more", cwd=tmp)
    by_alias = cli("predict", "models:/shades@champion", "more", cwd=tmp)
    assert by_run.returncode == by_alias.returncode == 0, by_alias.stderr[-3000:]
    assert by_run.stdout == by_alias.stdout and by_run.stdout.count("\n") == 7


@pytest.mark.parametrize("make, message", [
    (lambda d: images(d, 2, mode="L"), None),  # grey images into a colour model: converted, as in training
    (lambda d: (images(d, 2), (d / "bright" / "broken.png").write_bytes(b"")), r"predict: 1 of 5 files are not readable"),
    (lambda d: d.mkdir(), "holds no images"),
])
def test_a_wrong_folder_is_one_line_before_any_prediction(folder_run, tmp_path, make, message):
    tmp, run = folder_run
    make(tmp_path / "in")
    done = cli("predict", run.info.run_id, str(tmp_path / "in"), cwd=tmp)
    if message is None:
        assert done.returncode == 0, done.stderr[-3000:]
        return
    assert done.returncode == 2 and message.split(r"\(")[0].replace("\\", "") in done.stderr, done.stderr[-3000:]
    assert "input,predicted" not in done.stdout


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_table")
    rng = np.random.default_rng(0)
    with open(tmp / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["size", "colour", "label"])
        for _ in range(300):
            big = int(rng.integers(0, 2))
            writer.writerow([f"{rng.normal(10 if big else 0, 1):.3f}", ["red", "blue"][big], ["small", "big"][big]])
    done = cli("dataset=csv", "dataset.path=table.csv", "model=mlp", *TINY, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, only_run(tmp)[1]


def test_raw_csv_rows_are_encoded_as_in_training_and_labelled(table_run):
    tmp, run = table_run
    (tmp / "rows.csv").write_text("colour, size,note\nred,0.4,a\nblue,9.8,b\ngreen,10.5,c\n")  # any order, extra columns
    done = cli("predict", run.info.run_id, "rows.csv", cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(done.stdout.splitlines()))
    assert [r["input"] for r in rows] == ["1", "2", "3"]
    assert [r["predicted"] for r in rows] == ["small", "big", "big"]  # "green" was never seen: its own slot


@pytest.mark.parametrize("text, message", [
    ("colour\nred\n", r"predict: rows.csv lacks the columns \['size'\] the model was trained on"),
    ("size,colour\nbig,red\n", r"predict: rows.csv line 2, column 'size': 'big' is not a number"),
    ("size,colour\n1.0,red\nnan,blue\n", r"predict: rows.csv line 3, column 'size': 'nan' is not a number"),
    ("size,colour\n1.0\n", r"predict: rows.csv line 2 has 1 fields, the header 2"),
])
def test_a_wrong_table_is_one_line_before_any_prediction(table_run, text, message):
    import re

    tmp, run = table_run
    (tmp / "rows.csv").write_text(text)
    done = cli("predict", run.info.run_id, "rows.csv", cwd=tmp)
    assert done.returncode == 2 and re.search(message, done.stderr), done.stderr[-3000:]
    assert "input,predicted" not in done.stdout


def test_an_npz_of_the_trained_shape_is_labelled_and_another_shape_refused(tmp_path):
    done = cli("loop.epochs=2", "loop.verbose=0", "dataset.limit=400", "mlflow.log_figures=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, run = only_run(tmp_path)
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:20] * 255 / 16).astype(np.uint8)[..., None]
    np.savez(tmp_path / "new.npz", x=x)
    labelled = cli("predict", run.info.run_id, "new.npz", "--top-k", "2", cwd=tmp_path)
    assert labelled.returncode == 0, labelled.stderr[-3000:]
    rows = list(csv.DictReader(labelled.stdout.splitlines()))
    assert len(rows) == 20 and set(rows[0]) == {"input", "predicted", "probability", "top1", "top2"}
    assert sum(r["predicted"] == str(t) for r, t in zip(rows, digits.target[:20])) >= 10
    np.savez(tmp_path / "wide.npz", x=np.zeros((3, 9, 9, 1), np.uint8))
    wrong = cli("predict", run.info.run_id, "wide.npz", cwd=tmp_path)
    assert wrong.returncode == 2 and "has examples of shape [9, 9, 1]; the model takes [8, 8, 1]" in wrong.stderr


def _pyfunc(tmp, run, monkeypatch):
    """The run's logged model through MLflow's pyfunc, as a user loads it: (model, its models:/ URI). The
    store through the environment, for this test only: mlflow.set_tracking_uri would also set it in
    os.environ, for every later subprocess of the session (a Ray cluster's workers among them)."""
    import mlflow

    from conftest import store_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(tmp))
    (output,) = run.outputs.model_outputs
    uri = f"models:/{output.model_id}"
    return mlflow.pyfunc.load_model(uri), uri


def test_the_logged_model_takes_image_files_through_pyfunc(folder_run, tmp_path, monkeypatch):
    """The preprocessing travels with the model: pyfunc takes the files' bytes (any size: resized as in
    training) and answers with class names, as `runner predict` does."""
    import pandas as pd

    tmp, run = folder_run
    images(tmp_path / "new", 3, nested=False)
    Image.fromarray(np.full((40, 24, 3), 230, np.uint8)).save(tmp_path / "new" / "bright_large.png")
    files = sorted((tmp_path / "new").iterdir())
    model, _ = _pyfunc(tmp, run, monkeypatch)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["image"]
    answer = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    assert list(answer.columns) == ["predicted", "probability", "p_bright", "p_dark"]
    assert list(answer["predicted"]) == [f.name.split("_")[0].rstrip("0123456789.png") for f in files]
    by_cli = cli("predict", run.info.run_id, str(tmp_path / "new"), cwd=tmp)
    assert by_cli.returncode == 0, by_cli.stderr[-3000:]
    cli_rows = {r["input"]: r for r in csv.DictReader(by_cli.stdout.splitlines())}
    for f, row in zip(files, answer.itertuples()):
        assert cli_rows[f.name]["predicted"] == row.predicted
        assert abs(float(cli_rows[f.name]["probability"]) - row.probability) < 1e-4
    with pytest.raises(Exception, match="image"):
        model.predict(pd.DataFrame({"image": ["not bytes"]}))


def test_the_logged_model_takes_raw_csv_rows_through_pyfunc_and_mlflow_models_serve(table_run, monkeypatch):
    import pandas as pd

    from test_serve import post, served

    tmp, run = table_run
    rows = pd.DataFrame({"colour": ["red", "blue", "green"], "size": [0.4, 9.8, 10.5], "note": ["a", "b", "c"]})
    model, uri = _pyfunc(tmp, run, monkeypatch)
    answer = model.predict(rows)  # columns by name, in any order; extra ones ignored; "green" unseen
    assert list(answer["predicted"]) == ["small", "big", "big"]
    assert np.allclose(answer[["p_big", "p_small"]].sum(axis=1), 1, atol=1e-5)
    with pytest.raises(Exception, match="size"):
        model.predict(rows.drop(columns="size"))
    with served(uri, f"sqlite:///{tmp / 'mlflow.db'}", tmp) as url:
        served_answer = post(url, {"dataframe_split": rows.to_dict(orient="split")})["predictions"]
    assert [r["predicted"] for r in served_answer] == ["small", "big", "big"]
    assert [round(r["probability"], 5) for r in served_answer] == [round(p, 5) for p in answer["probability"]]
