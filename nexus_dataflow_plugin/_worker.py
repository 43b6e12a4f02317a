"""The worker process: imports candidate files so the server never has to.

Runs as ``python -m nexus_dataflow_plugin._worker TASK_FD EVENT_FD``. It may
import only the standard library, Kailash, ``_protocol``, ``_probe``, ``_paths``,
``_guard`` and ``transfer`` (which themselves import only those): never Nexus,
DataFlow or this package's server-side modules: a candidate must find the process as a bare Kailash
program would, plus the node libraries the server has (imported on first use).

Shape: the worker warms up once (imports Kailash's core), then for each batch
of files forks a child from this clean, single-threaded process. The child
closes both pipes, runs the candidates one by one, publishes a JSON result
file for each and reports its id on a progress pipe; the worker relays
``started`` / ``file_done`` / ``done`` and kills whatever the child left
behind. The parent owns the timeouts. A worker supervises several children
at once when the parent sends it a batch while an earlier one is stuck on a
slow file.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import resource
import select
import signal
import sys
import time
import types
from dataclasses import dataclass
from typing import Any

from nexus_dataflow_plugin import _guard, transfer
from nexus_dataflow_plugin import _protocol as proto
from nexus_dataflow_plugin._probe import (
    MSG_IMPORT_MEMORY,
    MSG_IMPORT_RAISED,
    describe,
    probe,
    where,
)

_PR_SET_CHILD_SUBREAPER = 36


class _ImportTimeout(BaseException):
    """Raised by the inner alarm so the child can say where it was stuck."""


def _become_subreaper() -> None:
    """Orphans of a task (forks, daemons) re-parent to us, so we can kill and reap them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _children() -> list[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as handle:
            return [int(pid) for pid in handle.read().split()]
    except OSError:
        return []


def _kill_leftovers(pgid: int, keep: set[int], patience_s: float = 5.0) -> None:
    """Kill the finished child's group and every orphan re-parented to us, then reap.

    ``keep`` are the children still running other batches. Repeated until
    nothing else is left, because killing an orphan re-parents its own
    children to us in turn.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + patience_s
    while True:
        strays = [pid for pid in _children() if pid not in keep]
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if not strays or time.monotonic() > deadline:
            return
        time.sleep(0.005)


def _probe(module: types.ModuleType, task: dict[str, Any]) -> dict[str, Any]:
    """Probe the namespace, then encode each workflow for the trip to the server."""
    probed = probe(vars(module), task["path"], task["factories"], (_ImportTimeout,))
    found = []
    for name, workflow in probed.workflows.items():
        encoded = transfer.encode(workflow, task["base"], {module.__name__})
        found.append(
            {
                "attr": name,
                "data": encoded.data,
                "node_modules": encoded.node_modules,
                "problems": list(encoded.problems),
            }
        )
    return {"workflows": found, "failures": probed.failures}


def _load(task: dict[str, Any]) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(task["module"], task["path"])
    if spec is None or spec.loader is None:
        raise ImportError(f"no loader for {task['path']}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _on_alarm(signum: int, frame: Any) -> None:
    raise _ImportTimeout()


def _run_file(task: dict[str, Any], inner_timeout: float) -> dict[str, Any]:
    """Import one candidate and probe it; a guard stop wins over any other outcome, even
    if the file swallowed the stop (this worker lets ``on_stop`` return)."""
    _guard.install(lambda verdict: None, task["path"])
    result = _import_and_probe(task, inner_timeout)
    stopped = _guard.verdict()
    if stopped is not None:
        return {"guard": {"status": stopped.status, "reason": stopped.detail,
                          "chain": [list(step) for step in stopped.chain]}}
    return result


def _import_and_probe(task: dict[str, Any], inner_timeout: float) -> dict[str, Any]:
    """Import one candidate and probe it; every way it can fail becomes a result."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, inner_timeout)
    try:
        return _probe(_load(task), task)
    except _ImportTimeout as exc:
        return {"timeout": where(exc, task["path"])}
    except MemoryError as exc:
        return {"error": MSG_IMPORT_MEMORY.format(where=where(exc, task["path"]))}
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, anything
        return {
            "error": MSG_IMPORT_RAISED.format(
                exc=type(exc).__name__, where=where(exc, task["path"]), message=describe(exc)
            )
        }
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)


def _limit_cpu(seconds: int | None) -> None:
    """Give the next file ``seconds`` of CPU on top of what the batch already used.

    Only the soft limit moves (SIGXCPU when reached); raising the hard limit
    needs privileges a worker may not have.
    """
    if not seconds:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cap = int(usage.ru_utime + usage.ru_stime) + int(seconds)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (cap, hard))


def _child(batch: dict[str, Any], init: dict[str, Any], progress_fd: int) -> None:
    """Runs in the forked child: import each file of the batch in turn. Never returns.

    After each file the result is published as a file, then its id is written
    to the progress pipe, so the parent can time every file on its own.
    State a file may have changed (cwd, sys.path) is restored before the next.
    """
    code = 0
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        limits = init["limits"]
        if limits.get("memory_bytes"):
            cap = int(limits["memory_bytes"])
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        directory = init["directory"]
        clean_path = list(sys.path)
        me = os.getpid()
        for number, task in enumerate(batch["files"]):
            if number and not proto.claim(directory, batch["batch"], task["id"]):
                break  # the parent gave the rest of this batch to other children
            err = os.open(proto.stderr_path(directory, task["id"]), os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(err, 2)
            os.close(err)
            os.chdir(init["base"])
            sys.path[:] = clean_path
            _limit_cpu(limits.get("cpu_seconds"))
            result = _run_file(task, float(batch["inner_timeout"]))
            if os.getpid() != me:
                os._exit(0)  # a copy forked by the candidate: only the child itself reports
            proto.write_result(directory, task["id"], result)
            proto.write_all(progress_fd, f"{task['id']}\n".encode())
    except BaseException:  # noqa: BLE001 - report via exit status; the parent explains
        code = 70
    os._exit(code)


@dataclass
class _Run:
    """A forked child working through one batch, as its worker sees it."""

    batch: int
    pid: int
    progress_fd: int
    pidfd: int | None
    buffer: bytes = b""
    reading: bool = True  # until the progress pipe reaches EOF

    def fds(self) -> list[int]:
        return [self.progress_fd] + ([self.pidfd] if self.pidfd is not None else [])


def _relay(run: _Run, data: bytes, event_fd: int) -> None:
    """Forward each completed file id from the child's progress pipe as an event."""
    run.buffer += data
    while b"\n" in run.buffer:
        line, run.buffer = run.buffer.split(b"\n", 1)
        if line.strip().isdigit():
            message = {"event": proto.FILE_DONE, "batch": run.batch, "id": int(line)}
            proto.write_all(event_fd, proto.encode(message))


def _start(batch: dict[str, Any], init: dict[str, Any], private: list[int], event_fd: int) -> _Run:
    """Fork a child for ``batch`` from this clean process; the child never returns.

    ``private`` are this worker's descriptors (its pipes, the other children's
    progress pipes and pidfds): the child closes them before any candidate runs,
    so no candidate can read a sibling's progress or signal it.
    """
    for module in batch.get("preload", []):
        _import_quietly(module)  # once here, inherited by every later child
    gc.freeze()  # what the batch's imports added, too
    progress_r, progress_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (*private, progress_r):
            os.close(fd)
        _child(batch, init, progress_w)
    os.close(progress_w)
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass
    proto.write_all(
        event_fd, proto.encode({"event": proto.STARTED, "batch": batch["batch"], "pid": pid})
    )
    return _Run(batch["batch"], pid, progress_r, pidfd)


def _finish(run: _Run, runs: dict[int, _Run], event_fd: int, status: int) -> None:
    """A child exited: relay its last progress, clean up after it, report ``done``."""
    os.set_blocking(run.progress_fd, False)
    try:
        _relay(run, os.read(run.progress_fd, 1 << 20), event_fd)
    except (BlockingIOError, OSError):
        pass
    _close(run)
    del runs[run.pid]
    _kill_leftovers(run.pid, keep=set(runs))
    if os.WIFSIGNALED(status):
        outcome = {"exit": None, "signal": os.WTERMSIG(status)}
    else:
        outcome = {"exit": os.waitstatus_to_exitcode(status), "signal": None}
    proto.write_all(event_fd, proto.encode({"event": proto.DONE, "batch": run.batch, **outcome}))


def _close(run: _Run) -> None:
    for fd in run.fds():
        os.close(fd)


def _serve(init: dict[str, Any], task_fd: int, event_fd: int, buffer: bytes) -> None:
    """Start a child per batch and supervise them all, until the parent closes the pipe.

    Nothing is imported ahead of time while idle: one heavy node library (some
    take 0.4 s) would hold up the batch that arrives meanwhile. A batch brings
    the libraries its files name; anything else is imported on first use.
    """
    runs: dict[int, _Run] = {}
    try:
        while True:
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                private = [task_fd, event_fd, *(fd for r in runs.values() for fd in r.fds())]
                run = _start(proto.decode(line), init, private, event_fd)
                runs[run.pid] = run
            watch = [task_fd]
            for run in runs.values():
                if run.reading:
                    watch.append(run.progress_fd)
                if run.pidfd is not None:
                    watch.append(run.pidfd)
            polling = any(run.pidfd is None for run in runs.values())
            ready, _, _ = select.select(watch, [], [], 0.02 if polling else None)
            if task_fd in ready:
                chunk = os.read(task_fd, 65536)
                if not chunk:
                    return
                buffer += chunk
            for run in list(runs.values()):
                if run.reading and run.progress_fd in ready:
                    data = os.read(run.progress_fd, 65536)
                    run.reading = bool(data)
                    _relay(run, data, event_fd)
                waited, status = os.waitpid(run.pid, os.WNOHANG)
                if waited:
                    _finish(run, runs, event_fd, status)
    finally:
        for run in runs.values():
            _close(run)
            _kill_leftovers(run.pid, keep=set())


def _first_line(fd: int) -> tuple[bytes, bytes]:
    """The init message, and whatever arrived after it."""
    buffer = b""
    while b"\n" not in buffer:
        chunk = os.read(fd, 65536)
        if not chunk:
            raise SystemExit(0)
        buffer += chunk
    line, rest = buffer.split(b"\n", 1)
    return line, rest


def _import_quietly(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - Kailash's own error surfaces when the node is used
        pass


def _lazy_node_library(node_modules: dict[str, str]) -> None:
    """Resolve a missing node type by importing the library module the server has it from.

    Kailash registers its node library lazily, by category; the server has
    imported Nexus (and more), so it knows node types a bare worker does not.
    Importing on first use keeps the worker's warm-up to Kailash's core.
    """
    from kailash.nodes.base import NodeRegistry

    original = NodeRegistry.get.__func__

    def get(cls: Any, node_name: str) -> Any:
        module = node_modules.get(node_name)
        if node_name not in cls._nodes and module:
            _import_quietly(module)
        return original(cls, node_name)

    NodeRegistry.get = classmethod(get)  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    task_fd, event_fd = int(argv[0]), int(argv[1])
    _become_subreaper()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    line, rest = _first_line(task_fd)
    init = proto.decode(line)
    sys.path[:] = init["sys_path"]
    os.chdir(init["base"])
    _lazy_node_library(init["node_modules"])
    gc.collect()
    gc.freeze()  # forked children then share these pages instead of copying them
    proto.write_all(event_fd, proto.encode({"event": proto.READY, "pid": os.getpid()}))
    _serve(init, task_fd, event_fd, rest)
    # No interpreter teardown: nothing is buffered (events go out with os.write), and
    # freeing Kailash's heap takes tens of milliseconds the server's close() waits for.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
