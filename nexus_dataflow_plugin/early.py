"""A worker started as ``import nexus`` begins, when the configuration flag is on.

A worker's warm-up (importing Kailash and rehearsing, about 0.3 s of CPU) then
runs beside Nexus's own import (about 0.9 s) instead of inside ``start()``.
Only where the flag (``NEXUS_DATAFLOW_COMPATIBLE`` or ``[tool.nexus]
dataflow_compatible``) turns smart discovery on for the whole process, without a
manifest, and never inside a scan's own processes; with the flag off nothing
starts. One worker: on two cores it costs the server's import nothing, where a
second would compete with it; the pool starts the rest once it knows the files.

The worker waits for its settings (``WorkerProcess.configure``). The first
``WorkerPool`` of the process takes it if it is for the same directory and the
environment has not changed since the worker started (the worker and every
file's process inherit it); otherwise the worker is killed. So is one that
nothing takes: when the first Nexus is built without auto-discovery, and at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .processes import WorkerProcess

logger = logging.getLogger(__name__)


@dataclass
class _Early:
    base: Path
    environ: dict[str, str]
    token: str
    workers: list[WorkerProcess]


_lock = threading.Lock()
_early: _Early | None = None


def _forget() -> None:
    """In a forked child: the early worker is the parent's (a preforking server forks
    after ``import nexus``); the child neither uses it nor kills it."""
    global _early, _lock
    _early = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget)


def begin() -> None:
    """Start the worker if the flag is on here (called as ``import nexus`` begins)."""
    global _early
    from .config import load_settings

    base = Path.cwd()
    try:
        settings = load_settings(base)
    except Exception:  # noqa: BLE001 - the same error is raised when discovery reads them
        return
    if not settings.enabled or settings.manifest is not None:
        return
    from .processes import MARKER_ENV, WorkerProcess, new_token

    if MARKER_ENV in os.environ:
        return  # a process of a scan (a file importing nexus): never workers of its own
    with _lock:
        if _early is not None:
            return
        token = new_token()
        _early = _Early(base, dict(os.environ), token, [WorkerProcess(str(base), token)])
    atexit.register(release)
    logger.debug("started a worker early for %s", base)


def claim(base: Path) -> tuple[str | None, list[WorkerProcess]]:
    """The early workers and their marker's token, if they suit a pool for ``base``;
    else ``(None, [])``, and any early worker is killed (the first pool decides)."""
    global _early
    with _lock:
        early, _early = _early, None
    if early is None:
        return None, []
    if early.base.resolve() == Path(base).resolve() and early.environ == dict(os.environ):
        return early.token, early.workers
    logger.debug("early worker not used: it started for %s or another environment", early.base)
    _kill(early.workers)
    return None, []


def release() -> None:
    """Kill the early worker if nothing took it."""
    global _early
    with _lock:
        early, _early = _early, None
    if early is not None:
        _kill(early.workers)


def _kill(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.kill()  # still waiting for its settings: it has started nothing
