"""export: every format written by Keras, reloaded in its own runtime and compared with the model; the
figures in the run; a mismatch loud; `runner export` for a finished run. (ONNX served: test_serve.py.)"""

import importlib.util
from pathlib import Path

import pytest

from runner import config, export
from runner.errors import ConfigError

from conftest import cli, only_run


def test_an_unknown_format_or_a_missing_runtime_is_a_config_error(make_cfg, monkeypatch):
    with pytest.raises(ConfigError, match=r"export: unknown format 'onx'; .*Did you mean 'onnx'"):
        config.validate(make_cfg("export=[onx]"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ConfigError, match=r"export: onnx needs onnxruntime, not installed: pip install 'runner\[export\]'"):
        config.validate(make_cfg("export=[tf_saved_model,onnx]"))


def test_a_difference_past_the_tolerance_fails_with_its_numbers():
    found = {"onnx": {"path": Path("m.onnx"), "max_abs_diff": 3e-3, "top1_agreement": 0.98, "compared": 256},
             "litert": {"path": Path("m.tflite"), "max_abs_diff": float("nan"), "top1_agreement": 0.0, "compared": 256},
             "tf_saved_model": {"path": Path("s"), "max_abs_diff": 1e-7, "top1_agreement": 1.0, "compared": 256}}
    with pytest.raises(export.ExportMismatch) as raised:
        export.check(found)
    message = str(raised.value)
    assert "onnx: the largest difference from Keras is 0.003 (tolerance 0.0001), top-1 agreement 0.9800 on 256" in message
    assert "litert: the largest difference from Keras is nan" in message and "tf_saved_model" not in message
    export.check({"onnx": {**found["tf_saved_model"]}})  # within: nothing raised


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [[], ["loop.precision=mixed_bfloat16", "model-style=subclass"]],
                         ids=["float32", "mixed_bfloat16 subclass"])
def test_every_format_is_exported_reloaded_and_agrees_with_keras(make_cfg, store, tmp_path, overrides):
    pytest.importorskip("onnxruntime", reason="needs pip install '.[export]'")
    from runner.train import run

    cfg = make_cfg("export=[tf_saved_model,onnx,litert]", "loop.epochs=1", "dataset.limit=300", "loop.verbose=0",
                   "mlflow.log_figures=false", f"mlflow.tracking_uri={store}", *overrides)
    run(cfg, cwd=tmp_path)
    client, found = only_run(store)
    assert found.info.status == "FINISHED"
    metrics = found.data.metrics
    for fmt in export.FORMATS:
        assert 0 <= metrics[f"export_{fmt}_max_abs_diff"] <= export.TOLERANCE, fmt
        assert metrics[f"export_{fmt}_top1_agreement"] == 1.0, fmt
    files = {a.path for a in client.list_artifacts(found.info.run_id, "export/onnx")} | \
        {a.path for a in client.list_artifacts(found.info.run_id, "export/litert")}
    assert files == {"export/onnx/model.onnx", "export/litert/model.tflite"}
    saved = client.list_artifacts(found.info.run_id, "export/tf_saved_model/saved_model")
    assert "export/tf_saved_model/saved_model/saved_model.pb" in {a.path for a in saved}
    names = {m.name for m in client.search_logged_models([found.info.experiment_id])}
    assert names == {"model", "onnx_model"}


@pytest.mark.slow
def test_runner_export_checks_a_finished_runs_model_and_records_it_there(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="needs pip install '.[export]'")
    done = cli("loop.epochs=1", "dataset.limit=300", "loop.verbose=0", "mlflow.log_figures=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client, found = only_run(tmp_path)
    exported = cli("export", found.info.run_id, "--format", "onnx,litert", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "runner: exported litert: largest difference from Keras" in exported.stdout
    after = client.get_run(found.info.run_id)
    metrics = after.data.metrics
    assert metrics["export_litert_max_abs_diff"] <= export.TOLERANCE and metrics["export_litert_top1_agreement"] == 1.0
    assert metrics["export_onnx_max_abs_diff"] <= export.TOLERANCE
    # the finished run stays as it ended, though its ONNX model was logged into it
    assert (after.info.status, after.info.end_time) == (found.info.status, found.info.end_time) == ("FINISHED", found.info.end_time)
    wrong = cli("export", found.info.run_id, "--format", "coreml", cwd=tmp_path)
    assert wrong.returncode == 2 and "--format: unknown format 'coreml'" in wrong.stderr
