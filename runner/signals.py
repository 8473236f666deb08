"""Ctrl-C and `kill` (SIGTERM) end a run like an exception, but never in the middle of a store write.

A signal raises in the main thread wherever it happens to be. Inside an MLflow
write that would leave the store's connection mid-transaction (SQLite then
stays locked for the write that records the KILLED status), so writes run
`deferred()`: a signal that arrives meanwhile is raised when the outermost
deferred block ends. Blocking the signal with pthread_sigmask is not enough:
the kernel hands a process-wide signal to any thread that does not block it.
"""

import os
import signal
import threading
import time
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the run unwinds like after Ctrl-C."""


_depth = 0  # nesting of deferred() blocks in the main thread
_pending = None  # the interrupt that arrived inside one


def install():
    """Route SIGTERM and SIGINT through the deferral (the command line does this; tests need not)."""
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    # submitit's warning, hydra.launcher.signal_delay_s before a SLURM job's time limit or on preemption:
    # the run ends KILLED with its checkpoint, as after scancel (`runner resume=<id>` continues it), not
    # FAILED by the error submitit raises mid-epoch, nor requeued as a fresh run from epoch 1. Submitit's
    # own handler still tells which of the two it is.
    global _timed_out
    _timed_out = getattr(getattr(signal.getsignal(signal.SIGUSR2), "__self__", None), "has_timed_out", None)
    signal.signal(signal.SIGUSR2, _handler)


_timed_out = None  # submitit's has_timed_out() of this job, when submitit started it


_stopping = False  # this process took a SIGTERM: a sweep job it is handed next returns at once


def stopping():
    """True once this process took a SIGTERM (a parallel sweep's worker whose sweep is ending)."""
    return _stopping


def raise_or_defer(error):
    """Raise `error` now, or when the outermost deferred() block ends if one is running."""
    global _pending
    if _depth:
        _pending = _pending or error
        return
    raise error


def _handler(signum, frame):
    global _pending, _stopping
    if signum == signal.SIGTERM:
        _stopping = True
    if signum in (signal.SIGTERM, signal.SIGUSR2):
        # Once: a second `kill` (or SLURM's SIGTERM at the limit) while the run records how it ended
        # must not cut that short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        error = Terminated("terminated by SIGTERM" if signum == signal.SIGTERM else _usr2_reason())
    else:
        error = KeyboardInterrupt()
    if _depth:
        _pending = _pending or error
        return
    raise error


def _usr2_reason():
    timed_out = _timed_out() if _timed_out else None
    case = {True: "its time limit is near", False: "it is preempted"}.get(timed_out, "time limit or preemption")
    return f"the SLURM job got SIGUSR2 ({case})"


@contextmanager
def deferred():
    """Run the block to its end; a SIGTERM or Ctrl-C that arrives meanwhile is raised after it."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only ever handled in the main thread
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            error, _pending = _pending, None
            raise error


def watch_launcher(environ=os.environ):
    """In a sweep job that runs in a child of the sweep's launcher (the parallel launcher's workers):
    when the launcher dies (`kill -9`), end this job as after SIGTERM (its run KILLED, its checkpoint
    kept) within a second or two, then leave: no worker outlives its sweep. Elsewhere, nothing."""
    launcher, parent = environ.get("RUNNER_SWEEP_PID"), os.getppid()
    if launcher != str(parent) or any(t.name == "runner-launcher-watch" for t in threading.enumerate()):
        return

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)  # the run ends KILLED through _handler
        time.sleep(120)  # its ending written by then; a worker has no sweep left to serve
        os._exit(143)

    threading.Thread(target=watch, name="runner-launcher-watch", daemon=True).start()


def launcher_gone(environ=os.environ):
    """True in a job that watch_launcher watches (a child of the sweep's launcher) once that launcher died."""
    watched = any(t.name == "runner-launcher-watch" for t in threading.enumerate())
    return watched and str(os.getppid()) != environ.get("RUNNER_SWEEP_PID")
