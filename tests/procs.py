"""Finding a test's processes through /proc, wherever they were re-parented."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def processes_with_env(key: str, value: str) -> list[tuple[int, str]]:
    """(pid, command line) of live (not zombie) processes whose environment has
    ``key=value``: every descendant of a process started with it, whatever its parent."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append((int(entry.name), cmdline))
    return found


@contextmanager
def processes_seen_with_env(key: str, value: str, every_s: float = 0.005) -> Iterator[set[int]]:
    """Pids of every process with ``key=value`` alive at any moment while the block runs
    (sampled every ``every_s``), for proving that a block started no such process."""
    seen: set[int] = set()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.update(pid for pid, _ in processes_with_env(key, value))
            done.wait(every_s)

    thread = threading.Thread(target=sample, name="procs-sampler", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


_WATCHING: list[list[str]] = []  # one list per open started_commands() block
_HOOKED: list[object] = []  # audit hooks cannot be removed: ours is added once


def _record_popen(event: str, args: tuple) -> None:
    if event == "subprocess.Popen" and _WATCHING:
        _WATCHING[-1].append(" ".join(map(str, args[1])))


@contextmanager
def started_commands() -> Iterator[list[str]]:
    """The command lines of the processes this process starts while the block runs
    (from the interpreter's audit events: none is missed, however short-lived)."""
    if not _HOOKED:
        sys.addaudithook(_record_popen)
        _HOOKED.append(_record_popen)
    commands: list[str] = []
    _WATCHING.append(commands)
    try:
        yield commands
    finally:
        _WATCHING.remove(commands)
