"""Which file goes to which worker, and when: pure functions over plain data.

No processes, no clocks of their own: ``isolation`` feeds them what it knows
and carries out what they return, so the policy is tested in milliseconds
(``tests/test_schedule.py``).

The policy: each worker runs up to ``PER_WORKER`` regular files at once (one
forks while the other runs, so a worker never waits on the server's round
trip). A file that runs long is slow: it stops counting against its
worker, so the files behind it go on, and it yields the CPU. Files known or
suspected to be slow (the last scan timed them, or the screen saw them wait
at import) start first and as slow, up to ``MAX_SLOW`` pool-wide, so a few
hanging files overlap each other and the rest of the scan instead of queueing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Regular files in flight per worker.
PER_WORKER = 2
# Slow files in flight, pool-wide, beside the regular ones.
MAX_SLOW = 8
# A file running longer than this (or half the timeout, if less) is slow. Most files
# import in milliseconds; treating a legitimately slow one as slow costs nothing.
SLOW_FILE_S = 0.5
# One worker per this many files to import, up to the pool's size. A worker's warm-up
# (importing Kailash, about 0.45 s of CPU) is worth it once it has a share of the work:
# a small project gets one worker, whose warm-up then competes less with the app's.
FILES_PER_WORKER = 50


# A read-ahead process is worth starting for at least this many files: it needs about
# 10 ms to fork and import the screen, in which the server screens a dozen itself.
READ_AHEAD_MIN_FILES = 32


def read_ahead_processes(files: int, idle_workers: int, cores: int) -> int:
    """Read-ahead processes for a screen of ``files`` uncached files: one per core the
    server leaves free, each on an idle warm worker, each with enough files."""
    return max(0, min(idle_workers, cores - 1, files // READ_AHEAD_MIN_FILES))


@dataclass(frozen=True)
class Load:
    """A worker as the scheduler sees it."""

    ready: bool
    regular: int  # regular files in flight (dispatched, not yet finished or slow)


def slow_after(timeout_s: float) -> float:
    return min(SLOW_FILE_S, timeout_s / 2)


def expected_slow(last_duration_s: float | None, may_block: bool, threshold: float) -> bool:
    """Expected to be slow: such files start first, as slow."""
    return may_block or (last_duration_s or 0.0) >= threshold


def wanted_workers(files: int, size: int) -> int:
    """Workers worth having for ``files`` files: at least one, at most ``size``."""
    return max(1, min(size, math.ceil(files / FILES_PER_WORKER)))


def assign(
    pending_slow: Sequence[bool], workers: Sequence[Load], slow_running: int
) -> list[tuple[int, int, bool]]:
    """What to dispatch now: (index into pending, worker index, as slow), in order.

    ``pending_slow`` says, for each queued file in queue order, whether it is
    expected to be slow. Only the front of the queue is taken, so the queue's
    order is the start order.
    """
    loads = {i: w.regular for i, w in enumerate(workers) if w.ready}
    out: list[tuple[int, int, bool]] = []
    for index, slow in enumerate(pending_slow):
        if not loads:
            break
        if slow and slow_running < MAX_SLOW:
            worker = min(loads, key=lambda i: loads[i])
            slow_running += 1
            out.append((index, worker, True))
            continue
        free = [i for i, n in loads.items() if n < PER_WORKER]
        if not free:
            break
        worker = min(free, key=lambda i: loads[i])
        loads[worker] += 1
        out.append((index, worker, False))
    return out


def becomes_slow(running_s: float, threshold: float, slow_running: int) -> bool:
    """A regular file that has run ``running_s`` is now slow (if there is room)."""
    return running_s >= threshold and slow_running < MAX_SLOW
