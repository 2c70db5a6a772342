"""How many CPU threads torch uses: the one policy of every process the project runs (``hrnn train``,
``evaluate`` and ``export``, the retrain and export tasks, ``make demo``, torchrun ranks, the service).

Torch's default is one OpenMP thread per physical core, and its threads spin-wait for each other at every
parallel region. Beside one other busy process that is a disaster on a small machine: a thread waits for a
core the neighbour holds (ml-100k training with torch's default 2 threads ran 4x slower beside a one-thread
CPU burner on this 2-core machine, with this policy 1.04x; ``bench/bench_busy.py``, docs/benchmarks.md).
``OMP_WAIT_POLICY=PASSIVE`` removes the spinning but made this model's small kernels 2x slower alone
(threads sleep and wake at every op), so the policy avoids the oversubscription instead:

    threads = clamp(usable cores - 1 - round(1-minute load average), 1, MAX_AUTO_THREADS)

- usable cores: ``os.sched_getaffinity`` (a container's or taskset's limit), not the host's count;
- the load average counts the cores other processes keep busy when the process starts;
- one core is kept free for a neighbour that starts later (nothing re-reads the load mid-run), so one more
  single-threaded job never makes the run wait on a spinning thread;
- ``share`` processes or request threads that each run torch split what is left (torchrun ranks, the
  service's request threads).

An explicit setting (``train.threads`` / ``serve.torch_threads`` > 0) always wins. The automatic choice is
made once per process (later calls reuse it: the process's own load must not shrink its next choice).
"""

from __future__ import annotations

import functools
import os

# The model's kernels are small (batch 32 x hidden 64 per step): past a few threads the synchronisation
# costs more than it gains (16 threads of the 16-core H200 host trained ml-100k at 14.4k events/s,
# bench/results/gpu_ml-100k.json, below one thread of this 2-core machine, 21.5k, train_throughput.json).
MAX_AUTO_THREADS = 8


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def busy_cores() -> int:
    """Cores other processes keep busy: the 1-minute load average, rounded (0 where the OS has none)."""
    try:
        return round(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


@functools.lru_cache(maxsize=None)
def auto_threads(share: int = 1) -> int:
    """The automatic thread count for each of ``share`` torch users in this process tree (module docstring)."""
    free = usable_cores() - 1 - busy_cores()
    return max(1, min(MAX_AUTO_THREADS, free // max(1, share)))


def choose_threads(explicit: int = 0, share: int = 1) -> int:
    """``explicit`` when > 0, else :func:`auto_threads` (``share``: processes or request threads that each run
    torch with this many threads)."""
    return explicit if explicit > 0 else auto_threads(share)


def apply_torch_threads(explicit: int = 0, share: int = 1) -> int:
    """Set torch's intra-op thread count in the calling thread by :func:`choose_threads`; returns it.

    With OpenMP the count is per OS thread: a thread pool (the service's request threads) calls this in
    each thread that runs torch.
    """
    import torch  # noqa: PLC0415 - the policy itself is torch-free (DAG files, config checks)

    n = choose_threads(explicit, share)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
