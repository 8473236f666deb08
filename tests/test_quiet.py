"""The terminal a newcomer sees (issue 10): no TensorFlow C++ start-up lines (absl, oneDNN, CUDA
probing), which TF 2.21 prints whatever TF_CPP_MIN_LOG_LEVEL says; everything with RUNNER_VERBOSE=1."""

import os
import subprocess
import sys

import pytest

from runner.main import stderr_filtered

NOISE = ("absl::InitializeLog", "oneDNN custom operations", "Could not find cuda drivers", "cuInit")


def test_the_filter_drops_absl_info_lines_and_keeps_the_rest_in_order(capfd):
    with stderr_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1795651402.392203     837 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1795651402.3 cuda_dnn.cc:8579] Unable to register cuDNN factory\n")
        os.write(2, b"a warning of TensorFlow's Python side\n")
    err = capfd.readouterr().err
    assert err == ("E0000 00:00:1795651402.3 cuda_dnn.cc:8579] Unable to register cuDNN factory\n"
                   "a warning of TensorFlow's Python side\n")


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **extra}
    for key in {"RUNNER_VERBOSE", "TF_CPP_MIN_LOG_LEVEL"} - set(extra):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_a_default_run_prints_no_tensorflow_start_up_lines(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "runner", "loop.epochs=1", "dataset.limit=100", "loop.verbose=0",
         f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "mlflow.system_metrics=false"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)], done.stderr
    assert "test_accuracy" in done.stdout


@pytest.mark.slow
def test_runner_verbose_shows_them():
    done = subprocess.run([sys.executable, "-c", "import runner.main, tensorflow"], env=_env(RUNNER_VERBOSE="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "oneDNN custom operations" in done.stderr or "Could not find cuda drivers" in done.stderr, done.stderr
