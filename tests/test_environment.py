"""runner.environment: the process-wide settings a run makes after importing TensorFlow."""

import json
import subprocess
import sys

import pytest
from conftest import cli_env

FREEZE = """
import gc, json, weakref
from hydra import compose, initialize_config_module
from runner import config
from runner.train import prepare

class Node:
    pass

def garbage():  # a reference cycle: only the garbage collector frees it
    a, b = Node(), Node()
    a.b, b.a = b, a
    return weakref.ref(a)

with initialize_config_module(config_module="runner.conf", version_base="1.3"):
    cfg = compose(config_name="config", overrides=["dataset.limit=64", "loop.verbose=0"])
before = garbage()  # garbage when the first run starts: collected, not frozen
prepare(cfg, config.validate(cfg))
frozen = gc.get_freeze_count()
after = garbage()  # a first run's garbage: the second run's clear_session still collects it
prepare(cfg, config.validate(cfg))
print(json.dumps([frozen, gc.get_freeze_count(), before() is None, after() is None]))
"""


def test_the_first_run_freezes_what_survives_its_collection_and_later_garbage_is_still_collected():
    """TensorFlow's and the runner's imports leave about half a million objects that are never garbage:
    frozen after the first run's clear_session, every later full collection skips them. Garbage from
    before that collection is not frozen, and a second run of the process freezes nothing more, or
    the first run's garbage would never be collected."""
    done = subprocess.run([sys.executable, "-c", FREEZE], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    frozen, again, before_collected, after_collected = json.loads(done.stdout.splitlines()[-1])
    assert frozen > 100_000 and again <= frozen  # frozen objects freed by reference counting leave the count
    assert before_collected and after_collected


IMPORT = """
import gc, json, sys
import runner.main  # the command line: it imports TensorFlow through its own hook
imported = gc.isenabled()  # importing the module pauses nothing
runner.main.pause_collections(sys.argv[1:])  # as main() does with the command line's arguments
paused = not gc.isenabled()
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
import tensorflow
gc.callbacks.clear()
print(json.dumps([imported, paused, collections.count(2), gc.get_freeze_count(), gc.isenabled()]))
"""


@pytest.mark.parametrize("argv", [[], ["-m", "seed=1,2"]], ids=["run", "sweep"])
def test_a_runs_start_is_paused_and_frozen_at_tensorflows_import_and_a_sweeps_is_not(argv):
    """A single run starts with the garbage collector paused and imports TensorFlow so, then freezes
    what its process holds. A sweep (-m) collects as usual: what it holds then (every point's
    config) is not frozen, and it freezes after a run's collection (freeze_survivors) instead."""
    done = subprocess.run([sys.executable, "-c", IMPORT, *argv], capture_output=True, text=True,
                          env=cli_env({"RUNNER_VERBOSE": None}), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported, paused, full_collections, frozen, collecting = json.loads(done.stdout.splitlines()[-1])
    assert imported and collecting and paused == (not argv)
    if not argv:
        assert full_collections == 0 and frozen > 100_000  # several, about a second, without the pause
    else:
        assert frozen == 0


AT_EXIT = """
import atexit, gc, json, runpy, sys

def starting(frame):  # in a sweep's start (its points composed and checked), before TensorFlow's import
    while frame is not None and frame.f_code.co_name != "on_multirun_start":
        frame = frame.f_back
    return frame is not None and "tensorflow" not in sys.modules

collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and starting(sys._getframe()) and collections.append(1))
atexit.register(lambda: print("GC " + json.dumps([len(collections), gc.isenabled(), gc.get_freeze_count()])))
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__")
"""


def test_a_subcommand_collects_as_usual():
    """A subcommand may never import TensorFlow (compare, register): its start is not paused."""
    done = subprocess.run([sys.executable, "-c", AT_EXIT, "compare", "--help"],
                          capture_output=True, text=True, env=cli_env({"RUNNER_VERBOSE": None}), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _, collecting, _ = json.loads(done.stdout.split("GC ")[-1])
    assert collecting


@pytest.mark.slow  # a sweep of two tiny runs
def test_a_sweep_collects_from_its_start_and_freezes_after_its_first_run(tmp_path):
    """A sweep whose multirun mode comes from its config, not -m, starts paused as a single run does:
    its parent resumes collections before it composes its points, and what the process holds is
    frozen only after a run's collection."""
    done = subprocess.run([sys.executable, "-c", AT_EXIT, "hydra.mode=MULTIRUN", "seed=1,2", "dataset.limit=64",
                           "loop.epochs=1",
                           "loop.verbose=0", "mlflow.log_model=false", "mlflow.log_figures=false",
                           f"hydra.sweep.dir={tmp_path}/sweep"], capture_output=True, text=True, timeout=600,
                          env=cli_env({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "RUNNER_VERBOSE": None}),
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    collections, collecting, frozen = json.loads(done.stdout.split("GC ")[-1])
    assert collections > 0 and collecting and frozen > 100_000
