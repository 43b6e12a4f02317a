"""Finding a test's processes through /proc, wherever they were re-parented."""

from __future__ import annotations

import os
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
