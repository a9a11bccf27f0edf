"""Child processes that onvm starts: how they are started (environment,
death with their parent) and the one way they are stopped.

`stop(proc)` is "terminate, wait, kill": SIGTERM (or another signal), a
grace period, then SIGKILL.  Every part of onvm that ends a process it
started calls it, so a process that ignores SIGTERM is handled, and
logged, the same way everywhere.

Not here: what the processes are (services.py, emulate.py), nor which
ones to stop (each owner knows its own, by their Popen object: never by
name).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time

LOG = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PR_SET_PDEATHSIG = 1


def stop(proc, what="process", grace=3.0, sig=signal.SIGTERM):
    """End `proc` (a Popen we started): send `sig`, wait `grace` seconds,
    then SIGKILL and reap it.  Nothing happens to a process that already
    ended, or to None.  Returns its exit code (None for None)."""
    if proc is None:
        return None
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        LOG.warning("%s (pid %d) still runs %g s after signal %d; killing it",
                    what, proc.pid, grace, sig)
        proc.kill()
        return proc.wait(max(grace, 5.0))


def stop_all(procs, grace=3.0, sig=signal.SIGTERM):
    """`stop` for {what: proc} at once: every one gets `sig` first, then
    each is waited for until `grace` seconds after, then SIGKILLed."""
    live = {what: p for what, p in procs.items() if p is not None and p.poll() is None}
    for p in live.values():
        p.send_signal(sig)
    deadline = time.monotonic() + grace
    for what, p in live.items():
        stop(p, what, grace=max(0.0, deadline - time.monotonic()), sig=sig)


def kill(proc, grace=5.0):
    """SIGKILL `proc` at once (a crash, as tests and failover want) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(grace)


def tail(path, lines=20):
    """The last `lines` lines of a log file, for error messages."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as err:
        return f"(no log at {path}: {err.strerror})"


def die_with_parent():
    """A Popen preexec_fn: the child gets SIGKILL if its parent dies without
    stopping it (a crash of `onvm emulate` leaves no controller behind)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def child_env():
    """This process's environment for a Python child that must import this
    tree's code (first on PYTHONPATH) and write its output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env
