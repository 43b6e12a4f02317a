"""Messages between the server-side pool and its worker processes.

Shared by both sides, so it imports only the standard library. Everything is
JSON, one object per line; nothing is ever pickled. Two channels exist:

- the task pipe (parent -> worker): ``init`` once, then one ``task`` per batch;
- the event pipe (worker -> parent): ``ready``, ``started``, ``file_done``, ``done``,
  each naming its batch (a worker may run several batches' children at once).

Both pipes are closed in the forked child before any user code runs, so a
candidate file has no handle on them. A child's result is a JSON file written
after the candidate has finished, into a private directory the parent made;
the child then names the finished file on a progress pipe the worker reads.

Before a child starts any file after its batch's first, it claims it with an
exclusive create; the parent claims the same names when it hands the rest of
a slow batch to other children. Whoever creates a claim first runs that file,
so no file is ever imported twice.
"""

from __future__ import annotations

import json
import os
from typing import Any

WORKER_MODULE = "nexus_dataflow_plugin._worker"

# Worker -> parent events
READY = "ready"
STARTED = "started"
FILE_DONE = "file_done"
DONE = "done"

# Parent -> worker operations
INIT = "init"
TASK = "task"

# Largest line the parent accepts on the event pipe: events are tiny, so a
# longer line means something other than our worker wrote it.
MAX_EVENT_BYTES = 64 * 1024


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("message is not an object")
    return message


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def result_path(directory: str, task_id: int) -> str:
    return os.path.join(directory, f"{task_id}.json")


def stderr_path(directory: str, task_id: int) -> str:
    return os.path.join(directory, f"{task_id}.err")


def write_result(directory: str, task_id: int, result: dict[str, Any]) -> None:
    """Atomically publish a child's result: the parent never sees half a file."""
    final = result_path(directory, task_id)
    tmp = final + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        # dumps, not dump: json.dump streams through the pure-Python encoder, 5x slower.
        handle.write(json.dumps(result, separators=(",", ":")))
    os.replace(tmp, final)


def claim(directory: str, batch: int, task_id: int) -> bool:
    """Take the right to run ``task_id`` of ``batch``; False when it was taken first, or
    cannot be taken (then the side that holds the file keeps it)."""
    try:
        os.close(os.open(os.path.join(directory, f"{batch}-{task_id}.claim"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return True
    except OSError:
        return False


def unclaim(directory: str, batch: int, task_id: int) -> None:
    try:
        os.unlink(os.path.join(directory, f"{batch}-{task_id}.claim"))
    except OSError:
        pass
