"""runner.environment: the process-wide settings a run makes after importing TensorFlow."""

import json
import subprocess
import sys

from conftest import cli_env

FREEZE = """
import gc, json
from runner import environment
environment.setup_devices()
frozen = gc.get_freeze_count()
made_after = [[] for _ in range(1000)]  # a run's objects: garbage the next collection must still see
environment.setup_devices()
print(json.dumps([frozen, gc.get_freeze_count()]))
"""


def test_the_imports_objects_are_frozen_once_per_process_before_any_model():
    """TensorFlow's and the runner's imports leave about half a million objects that are never garbage:
    frozen, every full collection (each job's clear_session) skips them. A second run of the process
    freezes nothing more, or the first run's garbage would never be collected."""
    done = subprocess.run([sys.executable, "-c", FREEZE], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = json.loads(done.stdout.splitlines()[-1])
    assert first > 100_000 and second == first
