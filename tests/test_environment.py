"""runner.environment: the process-wide settings a run makes after importing TensorFlow."""

import json
import subprocess
import sys

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
import gc, json, weakref
import runner.main  # the command line: it imports TensorFlow through its own hook
paused = not gc.isenabled()
from hydra import compose, initialize_config_module
from runner.sweep import callback

class Node:
    pass

def cycle():  # a reference cycle: only the garbage collector frees it
    a, b = Node(), Node()
    a.b, b.a = b, a
    return a

with initialize_config_module(config_module="runner.conf", version_base="1.3"):
    cfgs = {("seed=1",): compose(config_name="config", overrides=["seed=1", "dataset.limit=64"])}
alive = cycle()  # alive while TensorFlow imports, as a sweep's configs are in its preflight
gc.enable()  # as a sweep does before it composes its points (runner.sweep.callback)
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
import tensorflow
gc.callbacks.clear()
frozen, collecting = gc.get_freeze_count(), gc.isenabled()
callback.preflight(cfgs, ".")
unfrozen = gc.get_freeze_count()
dropped, alive = weakref.ref(alive), None
gc.collect()
later = weakref.ref(cycle())
gc.collect()
print(json.dumps([paused, collections, frozen, collecting, unfrozen, dropped() is None, later() is None]))
"""


def test_tensorflow_imports_without_collections_and_a_sweeps_preflight_leaves_nothing_frozen():
    """The command line starts with the garbage collector paused and imports TensorFlow so, then
    freezes what the process holds and collects again; a sweep collects before the import (only
    what is alive is frozen) and its preflight unfreezes, so that what was alive while TensorFlow
    imported (every point's config) is collected once the sweep drops it."""
    done = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    paused, collections, frozen, collecting, unfrozen, dropped_collected, later_collected = json.loads(
        done.stdout.splitlines()[-1])
    assert paused and collections == [2] and frozen > 100_000 and collecting  # one collection, before the import
    assert unfrozen == 0 and dropped_collected and later_collected  # the first job's clear_session freezes again
