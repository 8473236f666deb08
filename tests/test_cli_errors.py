"""Errors Hydra raises while composing reach the user as the runner's own: one line, exit status 2."""


import pytest

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
