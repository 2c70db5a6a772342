"""Child processes that stop with their parent: the one way the project runs a long command (``airflow dags
test`` for the demo, ``torchrun`` for data-parallel training).

The child gets a process group of its own, so a terminal's Ctrl-C reaches only this process, which then stops
the whole group: SIGTERM, and SIGKILL for whatever is still alive ``grace`` seconds later (``airflow dags
test`` ignored SIGTERM for more than 7 s). Descendants that left the group are found through psutil (a
BentoML dependency) and stopped the same way. An interrupted command therefore leaves no process behind.

The other side: a long task that receives SIGTERM ends promptly and cleans up (``stop_on_sigterm``). Airflow 3's
task runner replaces SIGTERM's default with a handler that only calls the operator's ``on_kill`` and lets a
Python task run on (so ``airflow dags test hrnn_retrain`` kept training after a SIGTERM until the SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence

GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL after this long


def stop_tree(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """Stop ``proc``, its process group and every descendant: SIGTERM, then SIGKILL after ``grace`` seconds."""
    import psutil  # noqa: PLC0415

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in family:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, family = psutil.wait_procs(family, timeout=grace if sig == signal.SIGTERM else 5.0)
        if not family:
            break
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        pass


def run_group(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, grace: float = GRACE_SECONDS) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a process group of its own (text output captured unless redirected). A SIGINT or
    SIGTERM to this process, or the timeout, stops the child's whole tree first; the signal then ends this
    process as it would have (KeyboardInterrupt, or exit status 128 + 15)."""
    proc = subprocess.Popen(list(args), env=env, stdout=stdout, stderr=stderr, text=True, start_new_session=True)
    received: list[int] = []

    def forward(sig: int, _frame) -> None:
        received.append(sig)
        stop_tree(proc, grace)

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: no handlers (the caller's own stop applies)
        previous = {}
    started = time.time()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_tree(proc, grace)
        raise subprocess.TimeoutExpired(args, time.time() - started) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        if received[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + received[0])
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` in the main thread (after calling the handler it
    replaces, e.g. Airflow's ``on_kill``): the block's ``finally``/``except`` clean-ups run and the process ends
    within seconds instead of running on (Airflow) or dying mid-write (the default). Outside the main thread
    (no handlers there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def stop(sig: int, frame) -> None:
        if callable(previous):
            previous(sig, frame)
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
