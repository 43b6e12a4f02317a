"""The worker process: imports candidate files so the server never has to.

Runs as ``python -m nexus_dataflow_plugin._worker TASK_FD EVENT_FD``. It may
import only the standard library, Kailash, ``_protocol``, ``_probe`` and
``transfer`` (which themselves import only those): never Nexus, DataFlow or this package's
server-side modules, so what it preloads is exactly what the parent asks for.

Shape: the worker warms up once (imports Kailash and the node libraries the
server has loaded), then for each task forks a child from this clean,
single-threaded process. The child closes both pipes, runs the candidate, and
publishes a JSON result file; the worker reports ``started`` / ``done`` and
kills whatever the child left behind. The parent owns the timeouts.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import resource
import select
import signal
import sys
import types
from collections.abc import Iterator
from typing import Any

from nexus_dataflow_plugin import _protocol as proto
from nexus_dataflow_plugin import transfer
from nexus_dataflow_plugin._probe import describe, probe, where

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


def _kill_leftovers(pgid: int) -> None:
    """Kill the finished child's process group and any orphan re-parented to us, then reap."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in _children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if not _children():
                return
            select.select([], [], [], 0.01)


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


def _child(task: dict[str, Any], directory: str, limits: dict[str, Any]) -> None:
    """Runs in the forked child: isolate, import, probe, publish. Never returns."""
    result: dict[str, Any]
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        err = os.open(proto.stderr_path(directory, task["id"]), os.O_WRONLY | os.O_CREAT, 0o600)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        if limits.get("memory_bytes"):
            cap = int(limits["memory_bytes"])
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        if limits.get("cpu_seconds"):
            cap = int(limits["cpu_seconds"])
            resource.setrlimit(resource.RLIMIT_CPU, (cap, cap + 1))
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, float(task["inner_timeout"]))
        try:
            module = _load(task)
            result = _probe(module, task)
        except _ImportTimeout as exc:
            result = {"timeout": f"still running{where(exc, task['path'])}"}
        except MemoryError as exc:
            result = {"error": f"hit the memory limit{where(exc, task['path'])}"}
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, anything
            result = {
                "error": f"Raised {type(exc).__name__} while importing{where(exc, task['path'])}: "
                f"{describe(exc)}"
            }
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        proto.write_result(directory, task["id"], result)
        code = 0
    except BaseException:  # noqa: BLE001 - report via exit status; the parent explains
        code = 70
    os._exit(code)


def _wait_child(pid: int, task_fd: int) -> tuple[int | None, int | None, bool]:
    """Wait for the child; return (exit code, signal, parent_gone).

    The parent never writes while a task runs, so the task pipe turning
    readable means it reached EOF: the parent is gone and so should we be.
    """
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass
    watch = [task_fd] + ([pidfd] if pidfd is not None else [])
    try:
        while True:
            waited, status = os.waitpid(pid, os.WNOHANG)
            if waited:
                if os.WIFSIGNALED(status):
                    return None, os.WTERMSIG(status), False
                return os.waitstatus_to_exitcode(status), None, False
            ready, _, _ = select.select(watch, [], [], 1.0 if pidfd is not None else 0.02)
            if task_fd in ready:
                return None, None, True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _lines(fd: int) -> Iterator[bytes]:
    """JSON lines from the task pipe until the parent closes it."""
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        yield line


def _preload(modules: list[str]) -> None:
    """Import the node libraries the server has, so the same node types resolve here."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a missing optional library is not fatal
            pass


def main(argv: list[str]) -> int:
    task_fd, event_fd = int(argv[0]), int(argv[1])
    _become_subreaper()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lines = _lines(task_fd)
    init = proto.decode(next(lines))
    sys.path[:] = init["sys_path"]
    os.chdir(init["base"])
    _preload(init["preload"])
    proto.write_all(event_fd, proto.encode({"event": proto.READY, "pid": os.getpid()}))
    for line in lines:
        task = proto.decode(line)
        pid = os.fork()
        if pid == 0:
            os.close(task_fd)
            os.close(event_fd)
            _child(task, init["directory"], init["limits"])
        proto.write_all(
            event_fd, proto.encode({"event": proto.STARTED, "id": task["id"], "pid": pid})
        )
        code, sig, parent_gone = _wait_child(pid, task_fd)
        _kill_leftovers(pid)
        if parent_gone:
            return 0
        proto.write_all(
            event_fd,
            proto.encode({"event": proto.DONE, "id": task["id"], "exit": code, "signal": sig}),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
