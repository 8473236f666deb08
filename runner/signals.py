"""Ctrl-C and `kill` (SIGTERM) end a run like an exception, but never in the middle of a store write.

A signal raises in the main thread wherever it happens to be. Inside an MLflow
write that would leave the store's connection mid-transaction (SQLite then
stays locked for the write that records the KILLED status), so writes run
`deferred()`: a signal that arrives meanwhile is raised when the outermost
deferred block ends. Blocking the signal with pthread_sigmask is not enough:
the kernel hands a process-wide signal to any thread that does not block it.
"""

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the run unwinds like after Ctrl-C."""


_depth = 0  # nesting of deferred() blocks in the main thread
_pending = None  # the interrupt that arrived inside one


def install():
    """Route SIGTERM and SIGINT through the deferral (the command line does this; tests need not)."""
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    # submitit's warning, hydra.launcher.signal_delay_s before a SLURM job's time limit: the run ends
    # KILLED with its checkpoint, as after scancel, not FAILED by the error submitit raises mid-epoch.
    signal.signal(signal.SIGUSR2, _handler)


def _handler(signum, frame):
    global _pending
    if signum in (signal.SIGTERM, signal.SIGUSR2):
        # Once: a second `kill` (or SLURM's SIGTERM at the limit) while the run records how it ended
        # must not cut that short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        error = Terminated("terminated by SIGTERM" if signum == signal.SIGTERM else
                           "the SLURM job's time limit is near (SIGUSR2)")
    else:
        error = KeyboardInterrupt()
    if _depth:
        _pending = _pending or error
        return
    raise error


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
