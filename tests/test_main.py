"""The command line (`runner.main`): errors while composing or validating reach the user as the runner's
own, one line with exit status 2; and the terminal a newcomer sees (issue 10) has no TensorFlow C++
start-up lines (absl, oneDNN, CUDA probing), which TF 2.21 prints whatever TF_CPP_MIN_LOG_LEVEL says;
everything with RUNNER_VERBOSE=1."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.main import stderr_filtered

from conftest import cli


@pytest.mark.parametrize("override, message", [
    ("model-style=sequentail", "model-style: no option 'sequentail'; choose one of ['functional', 'sequential', "
                               "'subclass'] (model-style=...). Did you mean 'sequential'?"),
    ("optimizer=adamm", "optimizer: no option 'adamm'; choose one of ['adam', 'adamw', 'rmsprop', 'sgd'] "
                        "(optimizer=...). Did you mean 'adam'?"),
    ("loop.epoch=3", "loop.epoch: no such key; LoopConfig has ['name', 'epochs', 'batch_size', *]. Did you mean "
                     "'epochs'? To add a key the config does not set, prefix it with +: +loop.epoch=..."),
    ("seed=abc", "seed: Value 'abc' of type 'str' could not be converted to Integer"),
    ("loop=[", "no viable alternative at input '['"),
])
def test_compose_error_is_one_line_with_exit_status_2(override, message):
    proc = cli(override, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line: no search-path dump, no traceback
    head, _, tail = message.partition("*")  # `*`: a list that grows with the schema
    assert line.startswith(f"runner: config error: {head}") and line.endswith(tail), line


def test_full_error_shows_hydras_traceback():
    proc = cli("optimizer=adamm", env={"HYDRA_FULL_ERROR": "1"}, timeout=120)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "MissingConfigException" in proc.stderr


def test_multirun_compose_error_is_one_line_too(tmp_path):
    proc = cli("-m", "optimizer=adam,adamm", f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("runner: config error: optimizer: no option 'adamm'")


def test_cli_config_error_is_one_line_and_status_2(tmp_path):
    done = cli("+model.layers.3.unit=3", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "runner: config error: model.layers[3] (Dense): unknown argument 'unit' for keras.layers.Dense. "
        "Did you mean 'units'?"
    )
    assert "Traceback" not in done.stderr


def test_an_unset_environment_variable_is_one_line_and_status_2(tmp_path):
    done = cli("dataset.path=${oc.env:RUNNER_TEST_NEVER_SET}", cwd=tmp_path, env={"RUNNER_TEST_NEVER_SET": None})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "runner: config error: dataset.path: the environment variable RUNNER_TEST_NEVER_SET is not set "
        "(${oc.env:RUNNER_TEST_NEVER_SET}); set it, or give a default: ${oc.env:RUNNER_TEST_NEVER_SET,<default>}."]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_the_record_keeps_the_override_as_typed_not_the_environments_value(tmp_path):
    from conftest import only_run

    done = cli("note=${oc.env:RUNNER_TEST_NOTE}", "loop.epochs=1", "dataset.limit=200", "loop.verbose=0",
               "mlflow.log_model=false", cwd=tmp_path, env={"RUNNER_TEST_NOTE": "a private value"})
    assert done.returncode == 0, done.stderr[-3000:]
    _, run = only_run(tmp_path)
    assert run.data.tags["overrides"].startswith("'note=${oc.env:RUNNER_TEST_NOTE}' loop.epochs=1")
    assert "a private value" not in run.data.tags["overrides"] + run.data.tags["runner.command"]


# ---- a quiet terminal -----------------------------------------------------------------------------

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


def test_help_lists_every_group_with_its_options_as_hydra_does():
    """`runner --help` shares one config repository across the group listing (Hydra deep-copies it per
    group, 91 times); what it lists is what Hydra's own listing says, and it names every option."""
    from hydra import initialize_config_module
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    import runner.main  # noqa: F401  (wraps Hydra.format_config_groups)

    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        for predicate in (lambda g: not g.startswith("hydra/"), lambda g: g.startswith("hydra/")):
            ours = Hydra.format_config_groups(hydra, predicate)
            assert ours == Hydra.format_config_groups.hydra_original(hydra, predicate) and ours.count("\n") >= 5
    done = cli("--help")
    assert done.returncode == 0, done.stderr
    conf = Path(runner.main.__file__).parent / "conf"
    for group in ("model", "dataset", "optimizer", "loop", "model-style", "experiment"):
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in done.stdout, (group, done.stdout)
