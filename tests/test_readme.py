"""What README shows, a test runs: every `runner` command in README.md's code blocks, made cheap.

Each command runs as written, plus overrides that only shorten it (one epoch,
a few hundred examples) and the local paths this machine has in place of the
README's placeholders. A command that needs a cluster is run by its own test
(named in SKIP); anything else that the README shows and that fails here fails
this test.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


README = Path(__file__).resolve().parents[1] / "README.md"
MNIST = README.parents[1] / "shared" / "data" / "mnist.npz"
SHORT = ["loop.epochs=1", "dataset.limit=256", "loop.verbose=0"]
# Commands run elsewhere, with the real engine they need.
SKIP = {
    "hydra/launcher=slurm": "tests/test_slurm.py runs SLURM sweeps on a real slurmctld",
    "hydra/launcher=ray": "tests/test_ray.py runs Ray sweeps on a real Ray head",
    "loop.strategy=multi_worker": "tests/test_multi_worker.py runs two TF workers on 127.0.0.1",
    "mlflow.example": "a placeholder host",
}


def readme_commands():
    commands = []
    for line in README.read_text().splitlines():
        match = re.match(r"^ {4}(?:\w+=\S+ )*runner( .*)?$", line)
        if match:
            text = line.strip().split("  #")[0].strip()
            commands.append(text)
    return list(dict.fromkeys(commands))


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 8 and "runner" in COMMANDS


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command, tmp_path):
    reason = next((why for key, why in SKIP.items() if key in command), None)
    if reason:
        pytest.skip(reason)
    words = shlex.split(command)
    env_words = [w for w in words if re.match(r"^[A-Z_]+=", w)]
    words = [w for w in words if w not in env_words][1:]
    if "..." in words:
        words.remove("...")
    words = [_local(w, tmp_path) for w in words]
    if any("dataset=mnist" == w or "experiment=seed_mnist" == w for w in words) and not any(
            w.startswith("dataset.path=") for w in words):
        words.append(f"dataset.path={_mnist()}")
    extra = list(SHORT)
    if "hydra/sweeper=tune" in words:
        extra.append("hydra.sweeper.n_trials=2")
    env = {k: v for k, v in (w.split("=", 1) for w in env_words)}
    import os

    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "runner", *words, *extra], cwd=tmp_path,
                          env={**environment, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    assert "MLflow run " in done.stdout or "jobs FINISHED" in done.stdout


def _mnist():
    if not MNIST.is_file():
        pytest.skip(f"real MNIST not found at {MNIST}")
    return MNIST


def _local(word, tmp_path):
    """README placeholders -> files on this machine: MNIST where it names MNIST, a generated .npz
    (of the shape the command says) where it names the user's own file."""
    key, _, value = word.partition("=")
    if key != "dataset.path":
        return word
    if "mnist" in value:
        return f"dataset.path={_mnist()}"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(300) % 5).astype(np.uint8)
    np.savez(tmp_path / Path(value).name, x_train=x[:250], y_train=y[:250], x_test=x[250:], y_test=y[250:])
    return f"dataset.path={Path(value).name}"
