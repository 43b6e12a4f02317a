"""Stage 4: run candidate imports in worker processes, with timeouts and kills.

The parent (the server) owns every deadline. Each worker is a warm process
(``python -m nexus_dataflow_plugin._worker``, its own session) that forks one
child per file; a child that overruns its timeout is killed with its whole
process group, a worker that stops answering is killed with its session and
replaced, and the scan goes on with the remaining files.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _protocol as proto

logger = logging.getLogger(__name__)

# How long a worker may take to import Kailash before its tasks are failed.
WARMUP_TIMEOUT_S = 120.0
# After a child is killed, how long its worker has to report before it is replaced.
KILL_GRACE_S = 2.0

OUTCOME_RESULT = "result"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_CRASHED = "crashed"


@dataclass(frozen=True)
class Task:
    """One file for a worker: where it is, its module name, its factory names."""

    id: int
    path: str
    module: str
    factories: tuple[str, ...]


@dataclass(frozen=True)
class Limits:
    """Per-file limits applied in each child."""

    timeout_s: float = 10.0
    memory_bytes: int | None = 4 * 1024**3
    cpu_seconds: int | None = 60


@dataclass
class Outcome:
    """What came back for a task: a result dict, or how the child failed."""

    task: Task
    kind: str
    result: dict[str, Any] | None = None
    detail: str = ""
    stderr_tail: str = ""
    duration_s: float = 0.0


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    task_fd: int
    event_fd: int
    ready: bool = False
    started_at: float = field(default_factory=time.monotonic)
    buffer: bytes = b""
    task: Task | None = None
    child_pid: int | None = None
    dispatched_at: float = 0.0
    deadline: float = 0.0
    killed: bool = False


def library_modules(project_root: Path) -> list[str]:
    """Modules that define the node classes the server has, outside the project.

    The worker imports these at warm-up so that a workflow resolves the same
    node types there as natively in the server.
    """
    from kailash.nodes.base import NodeRegistry

    root = str(project_root.resolve())
    modules: dict[str, None] = {"kailash.workflow.builder": None}
    for cls in list(NodeRegistry._nodes.values()):
        name = getattr(cls, "__module__", "")
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) or ""
        if not name or name == "__main__" or not origin:
            continue
        if os.path.realpath(origin).startswith(root + os.sep):
            continue
        if name.split(".")[0] in {"dataflow"}:
            continue  # generated model nodes live in the app; never re-create them
        modules[name] = None
    return list(modules)


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class WorkerPool:
    """Warm workers that import candidate files in forked, killable children."""

    def __init__(
        self,
        base: Path,
        *,
        workers: int,
        limits: Limits,
        preload: Sequence[str] = (),
        sys_path: Sequence[str] | None = None,
    ) -> None:
        self.base = base
        self.size = max(1, workers)
        self.limits = limits
        self.preload = list(preload)
        self.sys_path = [str(base)] + [
            p for p in (sys_path if sys_path is not None else sys.path) if p and p != str(base)
        ]
        self.directory = tempfile.mkdtemp(prefix="nexus-dataflow-")
        self._workers: list[_Worker] = []
        self._selector = selectors.DefaultSelector()

    # -- lifecycle ---------------------------------------------------------

    def _spawn(self) -> _Worker:
        task_r, task_w = os.pipe()
        event_r, event_w = os.pipe()
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            [package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        env["PYTHONSAFEPATH"] = "1"
        with open(os.path.join(self.directory, "worker.err"), "ab") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", proto.WORKER_MODULE, str(task_r), str(event_w)],
                pass_fds=(task_r, event_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.directory,
                env=env,
                start_new_session=True,
            )
        os.close(task_r)
        os.close(event_w)
        os.set_blocking(event_r, False)
        init = {
            "op": proto.INIT,
            "sys_path": self.sys_path,
            "base": str(self.base),
            "directory": self.directory,
            "preload": self.preload,
            "limits": {
                "memory_bytes": self.limits.memory_bytes,
                "cpu_seconds": self.limits.cpu_seconds,
            },
        }
        proto.write_all(task_w, proto.encode(init))
        worker = _Worker(process, task_w, event_r)
        self._selector.register(event_r, selectors.EVENT_READ, worker)
        self._workers.append(worker)
        return worker

    def start(self, count: int | None = None) -> None:
        """Start workers now, so their warm-up overlaps the caller's own work."""
        while len(self._workers) < min(self.size, count or self.size):
            self._spawn()

    def _retire(self, worker: _Worker) -> None:
        """Kill a worker's whole session and forget it."""
        for pid in (worker.child_pid, worker.process.pid):
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._selector.unregister(worker.event_fd)
        for fd in (worker.task_fd, worker.event_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            worker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.warning("worker %s did not exit after SIGKILL", worker.process.pid)
        self._workers.remove(worker)

    def close(self) -> None:
        """End every worker and child and remove the scratch directory."""
        for worker in list(self._workers):
            self._retire(worker)
        self._selector.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scheduling --------------------------------------------------------

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """Run every task; yield one outcome per task, in completion order."""
        pending = deque(tasks)
        total = len(pending)
        finished = 0
        self.start(total)
        while finished < total:
            for worker in list(self._workers):
                if worker.ready and worker.task is None and pending:
                    self._dispatch(worker, pending.popleft())
            now = time.monotonic()
            deadlines = [w.deadline for w in self._workers if w.task is not None]
            deadlines += [w.started_at + WARMUP_TIMEOUT_S for w in self._workers if not w.ready]
            wait = max(0.0, min(deadlines) - now) if deadlines else 1.0
            for key, _ in self._selector.select(timeout=min(wait, 1.0)):
                outcome = self._read(key.data)
                if outcome is not None:
                    finished += 1
                    yield outcome
            for outcome in self._enforce(pending):
                finished += 1
                yield outcome

    def _dispatch(self, worker: _Worker, task: Task) -> None:
        inner = max(self.limits.timeout_s * 0.8, self.limits.timeout_s - 1.0)
        message = {
            "op": proto.TASK,
            "id": task.id,
            "path": task.path,
            "module": task.module,
            "factories": list(task.factories),
            "base": str(self.base),
            "inner_timeout": inner,
        }
        worker.task = task
        worker.child_pid = None
        worker.killed = False
        worker.dispatched_at = time.monotonic()
        worker.deadline = worker.dispatched_at + self.limits.timeout_s
        proto.write_all(worker.task_fd, proto.encode(message))

    def _read(self, worker: _Worker) -> Outcome | None:
        try:
            chunk = os.read(worker.event_fd, 65536)
        except BlockingIOError:
            return None
        if not chunk:
            return self._worker_died(worker)
        worker.buffer += chunk
        outcome = None
        while b"\n" in worker.buffer:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            outcome = self._event(worker, proto.decode(line)) or outcome
        if len(worker.buffer) > proto.MAX_EVENT_BYTES:
            return self._worker_died(worker)
        return outcome

    def _event(self, worker: _Worker, event: dict[str, Any]) -> Outcome | None:
        kind = event.get("event")
        if kind == proto.READY:
            worker.ready = True
            return None
        task = worker.task
        if task is None or event.get("id") != task.id:
            return None
        if kind == proto.STARTED:
            worker.child_pid = int(event["pid"])
            return None
        if kind != proto.DONE:
            return None
        duration = time.monotonic() - worker.dispatched_at
        worker.task = None
        worker.child_pid = None
        if worker.killed:
            return None  # already reported as a timeout
        return self._finish(task, event, duration)

    def _finish(self, task: Task, event: dict[str, Any], duration: float) -> Outcome:
        result_file = proto.result_path(self.directory, task.id)
        err_file = proto.stderr_path(self.directory, task.id)
        tail = _tail(err_file)
        try:
            if event.get("signal"):
                detail = f"killed by {_signal_name(int(event['signal']))}"
                if int(event["signal"]) == signal.SIGXCPU:
                    detail = "hit the CPU limit (SIGXCPU)"
                return Outcome(task, OUTCOME_CRASHED, detail=detail, stderr_tail=tail,
                               duration_s=duration)
            if not os.path.exists(result_file):
                detail = f"exited with status {event.get('exit')} before reporting"
                return Outcome(task, OUTCOME_CRASHED, detail=detail, stderr_tail=tail,
                               duration_s=duration)
            with open(result_file, encoding="utf-8") as handle:
                result = proto.decode(handle.read().encode())
            return Outcome(task, OUTCOME_RESULT, result=result, stderr_tail=tail,
                           duration_s=duration)
        except (OSError, ValueError) as exc:
            return Outcome(task, OUTCOME_CRASHED, detail=f"unreadable result: {exc}",
                           stderr_tail=tail, duration_s=duration)
        finally:
            for path in (result_file, err_file):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _worker_died(self, worker: _Worker) -> Outcome | None:
        task = worker.task
        killed = worker.killed
        self._retire(worker)
        tail = _tail(os.path.join(self.directory, "worker.err"))
        if task is None or killed:
            if not worker.ready:
                logger.error("discovery worker failed to start: %s", tail or "no output")
            return None
        duration = time.monotonic() - worker.dispatched_at
        return Outcome(task, OUTCOME_CRASHED, detail="the worker process died",
                       stderr_tail=tail, duration_s=duration)

    def _enforce(self, pending: deque[Task]) -> Iterator[Outcome]:
        """Kill what overran; replace workers that are gone or stuck."""
        now = time.monotonic()
        for worker in list(self._workers):
            if not worker.ready and now > worker.started_at + WARMUP_TIMEOUT_S:
                self._retire(worker)
                raise RuntimeError(
                    "discovery worker did not start within "
                    f"{WARMUP_TIMEOUT_S:.0f}s: {_tail(os.path.join(self.directory, 'worker.err'))}"
                )
            task = worker.task
            if task is None or now < worker.deadline:
                continue
            if worker.killed:
                self._retire(worker)  # it did not report the kill in time
                continue
            worker.killed = True
            worker.deadline = now + KILL_GRACE_S
            if worker.child_pid:
                try:
                    os.killpg(worker.child_pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            else:
                self._retire(worker)
            yield Outcome(
                task,
                OUTCOME_TIMEOUT,
                stderr_tail=_tail(proto.stderr_path(self.directory, task.id)),
                duration_s=now - worker.dispatched_at,
            )
        active = sum(1 for w in self._workers if w.task is not None)
        while len(self._workers) < min(self.size, active + len(pending)):
            self._spawn()
