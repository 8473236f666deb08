"""The names a run is tagged with, and the one codec of the `overrides` tag.

No MLflow here: the sweep callback and `runner compare` read these before (or without) a store.
"""

import shlex


class Tag:
    """Every tag the runner sets on a run; nothing else spells these strings."""

    OUTPUT_DIR = "runner.output_dir"  # the run's own directory (RunDir): config.yaml, checkpoints
    CONFIG_HASH = "runner.config_hash"  # config.fingerprint: what determines the result
    POINT = "runner.point"  # the same without the seed: a sweep point, whatever its seed (group by it)
    BEST = "runner.best"  # "true" on the jobs of the sweep's best point by sweep.objective; the parent: its best job
    REGISTERED = "runner.registered"  # on a sweep's parent: the model version sweep.register made, or why none
    HOST = "runner.host"  # with PROCESS: the owner, so a dead one can be told from a live one
    PID = "runner.pid"
    PROCESS = "runner.process"  # boot id, pid namespace and start time of the owner process
    SWEEP_ID = "runner.sweep_id"  # a sweep's unique id, on its parent and on every job
    SWEEP_PARENT = "runner.sweep_parent"  # the same id, on the parent only: what jobs search for
    POINTS = "points"  # a sweep's number of grid points (on the parent)
    JOBS_FAILED = "jobs_failed"  # how many of a sweep's jobs did not finish (on the parent)
    VARYING = "runner.varying"  # the keys a sweep varies (on the parent), encoded as overrides are
    PRUNED = "runner.pruned"  # the epoch a sweep job was pruned at (sweep.prune); the run is FINISHED
    TEST_WEIGHTS = "runner.test_weights"  # which epoch's weights the test metrics (and the model) come from
    OVERRIDES = "overrides"  # encode_overrides of the command line's overrides, secrets masked
    RESUMED_WITH = "resumed_with"  # the same, of the `resume=` command
    ERROR = "error"
    PARENT = "mlflow.parentRunId"  # MLflow's own: nests a job under its sweep in the UI
    NOTE = "mlflow.note.content"  # MLflow's own: the run's description
    GIT_COMMIT = "runner.git.commit"  # of the launch directory (MLflow's own tag reads site-packages')
    GIT_BRANCH = "runner.git.branch"
    GIT_DIRTY = "runner.git.dirty"  # "true": uncommitted changes, saved as environment/uncommitted.diff
    MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"  # the same commit, where MLflow's UI shows it
    VERSION = "runner.version."  # + package: the versions that ran it
    DEVICES = "runner.devices"
    COMMAND = "runner.command"  # the command line as typed (secrets masked): `runner reproduce` prints it
    SKIPPED_FILES = "runner.skipped_files"  # how many unreadable data files dataset.on_bad_file=skip left out
    USER_TAGS = "runner.tags"  # `tags=[a,b]` from the command line; each is also a tag of its own


def encode_overrides(overrides):
    """A list of overrides as one tag value a shell accepts: `a=1 'b={x: 1, y: 2}'`.

    Shell quoting, not a plain join: an override may hold spaces (a dict value, a path)."""
    return shlex.join(overrides)


def decode_overrides(value):
    """The list `encode_overrides` wrote ([] for an empty or missing tag). A tag written before the
    codec (overrides joined by spaces) may hold an unbalanced quote (`note=it's`): split on spaces."""
    try:
        return shlex.split(value or "")
    except ValueError:
        return (value or "").split()


def override_key(override):
    """`+a.b=1` -> `a.b`: the key an override sets, without Hydra's add/delete prefix."""
    return override.split("=")[0].lstrip("+~")


def differing(overrides, keys):
    """The overrides among `overrides` that set one of the varying `keys`, as one string (a run name)."""
    return " ".join(o for o in overrides if override_key(o) in keys)
