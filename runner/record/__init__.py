"""The run's record in MLflow: the one package that speaks to MLflow, and the names the rest uses.

    store.py      the tracking URI (resolved once, absolute), opening the store, a client, retries
    tags.py       the tag names (`Tag`) and the `overrides` tag's codec
    run.py        a run's identity (name, tags, params), resuming, starting and ending it
    rundir.py     `RunDir`: the run's own directory and every file in it
    ownership.py  which process owns a run, and ending the runs of dead ones
    search.py     the store's searches: a sweep's jobs (`children`), its parent, a finished twin
    tracking.py   what a run logs while it works and at its end (metrics, model, environment)
    inputs.py, figures.py, provenance.py   its datasets, its pictures, what produced it
    redaction.py  what the record may show (secrets masked)
    landing.py    the runs table a newcomer lands on

Importing the package costs nothing: a name is imported (and MLflow with it) when first asked
for, so the config checks and the sweep's preflight run before MLflow is imported.
"""

import importlib

_EXPORTS = {
    "tags": ("Tag", "encode_overrides", "decode_overrides", "override_key", "differing"),
    "store": ("open_store", "tracking_uri", "client", "current_uri", "find_run", "retry", "FAILED",
              "insert_shared", "ui_link"),
    "search": ("children", "finished_run", "sweep_parent", "quoted"),
    "ownership": ("owner", "owner_alive", "close_dead_runs"),
    "rundir": ("RunDir",),
    "run": ("params", "flatten", "public_yaml", "logged_config", "logged_data_info", "identity", "resumed_tags",
            "resumable_run", "started", "end", "set_output_dir", "record_failure"),
    "redaction": ("redact", "redact_override", "redact_uri", "redact_text", "install_log_redaction"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
_MODULES = ("tags", "store", "search", "ownership", "rundir", "run", "tracking", "inputs", "figures",
            "provenance", "redaction", "landing")

__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_HOME, *_MODULES})
