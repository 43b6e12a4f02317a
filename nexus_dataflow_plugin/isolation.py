"""Stage 4: run candidate imports in worker processes, with timeouts and kills.

The parent (the server) owns every deadline. Each worker is a warm process
(``python -m nexus_dataflow_plugin._worker``, its own session) that forks one
child per batch of files; the child reports each file as it finishes, so each
file has its own timeout. A file that runs long is slow: the rest of its
batch goes to other children, its process group is niced, and its worker
may fork another child beside it, so a few hanging files overlap each other
and the rest of the scan instead of queueing. Files known or suspected to be
slow start first, each alone. A child that overruns is killed with its whole
process group; a worker that stops answering is killed with its session and
replaced; the scan goes on.
"""

from __future__ import annotations

import logging
import math
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
from ._paths import in_project

logger = logging.getLogger(__name__)

# How long a worker may take to import Kailash before its tasks are failed.
WARMUP_TIMEOUT_S = 120.0
# After a child is killed, how long its worker has to report before it is replaced.
KILL_GRACE_S = 2.0
# How long closing waits for each worker to clean up after its children and exit.
CLOSE_GRACE_S = 3.0
# Files per child: enough to amortise a fork, small enough to spread the work. (A slow
# file hands the rest of its batch on, so a large batch cannot stall behind one.)
MAX_BATCH = 64
BATCHES_PER_WORKER = 4
# One worker per this many files to import, up to ``workers``. A worker's warm-up
# (importing Kailash, about 0.45 s of CPU) is worth it once it has a share of the work:
# a small project gets one worker, whose warm-up then competes less with the app's.
FILES_PER_WORKER = 50
# A file running longer than this (or half the timeout, if less) is slow. Most files
# import in milliseconds; detaching a legitimately slow one costs nothing.
SLOW_FILE_S = 0.5
# Slow files running beside the workers' regular batches, pool-wide, at most.
MAX_SLOW_RUNS = 8
# How far a slow file's processes yield the CPU to the rest of the scan.
SLOW_NICE = 10

# Where DataFlow puts the node classes it generates per model: they belong to the
# app's DataFlow instance and cannot be re-created by importing a module.
GENERATED_NODES_MODULE = "dataflow.core.nodes"

# How a child failed, for the crash reason.
DETAIL_EXITED = "exited with status {code} before reporting"
DETAIL_SIGNAL = "killed by {signal}"
DETAIL_CPU = "hit the CPU limit (SIGXCPU)"
DETAIL_UNREADABLE = "its result could not be read ({error})"
DETAIL_WORKER_DIED = "the worker process died"

OUTCOME_RESULT = "result"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_CRASHED = "crashed"


@dataclass(frozen=True)
class Task:
    """One file for a worker: where it is, its module name, its factory names and the
    node types the screen saw it use."""

    id: int
    path: str
    module: str
    factories: tuple[str, ...]
    node_types: tuple[str, ...] = ()
    last_duration_s: float | None = None  # how long it took in the previous scan
    may_block: bool = False  # the screen saw it loop or wait at import


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
class _Batch:
    """Files one child imports in turn; ``index`` is the file running now.

    ``slow`` batches run beside their worker's regular one; ``detached`` ones
    have given the rest of their files to other children.
    """

    id: int
    tasks: list[Task]
    index: int = 0
    child_pid: int | None = None
    file_started_at: float = field(default_factory=time.monotonic)
    deadline: float = 0.0
    killed: bool = False
    slow: bool = False
    detached: bool = False
    claims: tuple[int, ...] = ()  # files after the first: claimed by the child or the parent

    @property
    def current(self) -> Task | None:
        return self.tasks[self.index] if self.index < len(self.tasks) else None


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    task_fd: int
    event_fd: int
    ready: bool = False
    started_at: float = field(default_factory=time.monotonic)
    buffer: bytes = b""
    batches: dict[int, _Batch] = field(default_factory=dict)


def library_node_modules(project_root: Path) -> dict[str, str]:
    """Node type -> the installed library module that defines it, as the server has them.

    The worker imports a module from this map the first time a workflow asks
    for its node type, so node types resolve there as they do in the server.
    Project modules and DataFlow's generated model nodes are left out.
    """
    from kailash.nodes.base import NodeRegistry

    modules: dict[str, str] = {}
    for node_type, cls in list(NodeRegistry._nodes.items()):
        name = getattr(cls, "__module__", "") or ""
        origin = getattr(sys.modules.get(name), "__file__", None) or ""
        if not origin or name in ("__main__", GENERATED_NODES_MODULE):
            continue
        if in_project(origin, project_root):
            continue
        modules[node_type] = name
    return modules


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
        node_modules: dict[str, str] | None = None,
        sys_path: Sequence[str] | None = None,
    ) -> None:
        self.base = base
        self.size = max(1, workers)
        self.limits = limits
        self.slow_after = min(SLOW_FILE_S, limits.timeout_s / 2)
        self.node_modules = dict(node_modules or {})
        self.sys_path = [str(base)] + [
            p for p in (sys_path if sys_path is not None else sys.path) if p and p != str(base)
        ]
        self.directory = tempfile.mkdtemp(prefix="nexus-dataflow-")
        self._workers: list[_Worker] = []
        self._selector = selectors.DefaultSelector()
        self._batches = 0

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
            "node_modules": self.node_modules,
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

    def wanted(self, files: int) -> int:
        """Workers worth having for ``files`` files: at least one, at most ``size``."""
        return max(1, min(self.size, math.ceil(files / FILES_PER_WORKER)))

    def start(self, files: int | None = None) -> WorkerPool:
        """Start workers now (as many as ``files`` files warrant, else ``size``), so their
        warm-up overlaps the caller's own work."""
        count = self.size if files is None else self.wanted(files)
        while len(self._workers) < count:
            self._spawn()
        return self

    def _retire(self, worker: _Worker) -> None:
        """Kill a worker's whole session and its children's groups, and forget it."""
        children = [batch.child_pid for batch in worker.batches.values()]
        for pid in (*children, worker.process.pid):
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._selector.unregister(worker.event_fd)
        self._close_task_pipe(worker)
        os.close(worker.event_fd)
        try:
            worker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.warning("worker %s did not exit after SIGKILL", worker.process.pid)
        self._workers.remove(worker)

    @staticmethod
    def _close_task_pipe(worker: _Worker) -> None:
        """Close once: a descriptor number closed twice may already belong to someone else."""
        if worker.task_fd >= 0:
            os.close(worker.task_fd)
            worker.task_fd = -1

    def close(self) -> None:
        """End every worker and child and remove the scratch directory.

        Each worker is first asked to go (its task pipe closes): it then kills what
        its last child left behind, processes in sessions of their own included,
        which only it can see. A worker that does not exit in time is killed.
        """
        for worker in self._workers:
            self._close_task_pipe(worker)
        deadline = time.monotonic() + CLOSE_GRACE_S
        for worker in self._workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for worker in list(self._workers):
            self._retire(worker)
        self._selector.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scheduling --------------------------------------------------------

    def run(self, tasks: Iterable[Task], expected: int | None = None) -> Iterator[Outcome]:
        """Run every task; yield one outcome per task, in completion order.

        With ``expected`` (at most how many tasks will come), ``tasks`` is taken
        as it is produced: a screen still running hands files on as it finds
        them, and workers start on the first ones while it goes on; outcomes
        follow once it is done. Without it, all tasks are taken first.
        """
        stream: Iterator[Task] | None = None
        if expected is None:
            pending = deque(sorted(tasks, key=lambda task: not self._slow(task)))
            expected = len(pending)
        else:
            pending, stream = deque(), iter(tasks)
        taken = len(pending)
        workers = max(self.wanted(expected), len(self._workers))  # started ones are free
        # Several batches per worker balance the load at the end; one worker has no one
        # to balance with, and every batch costs a fork.
        batches = workers * BATCHES_PER_WORKER if workers > 1 else 1
        batch_size = max(1, min(MAX_BATCH, math.ceil(expected / batches)))
        finished = 0
        held: list[Outcome] = []
        self.start(expected)
        while stream is not None or finished < taken:
            # Take from an open stream between events, not only when the queue runs
            # low: a file the screen sees may block must reach a worker (first, alone)
            # as soon as it is screened, not after every file sorted before it.
            if stream is not None:
                got, more = self._take(stream, pending, batch_size)
                taken += got
                if not more:
                    stream = None
            for worker in list(self._workers):
                if worker.ready:
                    self._fill(worker, pending, batch_size, complete=stream is None)
            now = time.monotonic()
            wakeups = [w.started_at + WARMUP_TIMEOUT_S for w in self._workers if not w.ready]
            for batch in self._running():
                wakeups.append(batch.deadline)
                if not batch.detached and batch.child_pid is not None:
                    wakeups.append(batch.file_started_at + self.slow_after)
            wait = max(0.0, min(wakeups) - now) if wakeups else 1.0
            if stream is not None:
                wait = 0.0  # look at events, then take more from the stream
            for key, _ in self._selector.select(timeout=min(wait, 1.0)):
                held += self._read(key.data, pending)
            held += self._enforce(pending)
            # Outcomes wait while the stream is open: whoever consumes them (the
            # server rebuilding workflows) would otherwise slow the screen that
            # feeds the workers.
            if stream is None:
                finished += len(held)
                yield from held
                held.clear()

    def _take(self, stream: Iterator[Task], pending: deque[Task], count: int) -> tuple[int, bool]:
        """Up to ``count`` more tasks from ``stream``; how many, and whether more may come.

        A slow task goes to the front of the queue and ends the take: it starts
        now, not after the screen has gone through the files behind it.
        """
        for got in range(count):
            task = next(stream, None)
            if task is None:
                return got, False
            if self._slow(task):
                pending.appendleft(task)
                return got + 1, True
            pending.append(task)
        return count, True

    def _slow(self, task: Task) -> bool:
        """Expected to be slow: such files start first, each alone."""
        return task.may_block or (task.last_duration_s or 0.0) >= self.slow_after

    def _running(self) -> list[_Batch]:
        return [batch for worker in self._workers for batch in worker.batches.values()]

    def _fill(self, worker: _Worker, pending: deque[Task], batch_size: int, *,
              complete: bool) -> None:
        """Give a ready worker work: slow files alone and beside it (up to the pool's
        limit), and one regular batch when it has none running: a full one, unless
        the queue is ``complete`` (no more tasks are coming)."""
        while pending:
            slow = self._slow(pending[0])
            if slow and sum(b.slow for b in self._running()) < MAX_SLOW_RUNS:
                self._dispatch(worker, [pending.popleft()], slow=True)
            elif any(not batch.slow for batch in worker.batches.values()):
                return
            elif not (slow or complete or len(pending) >= batch_size):
                return
            elif slow:
                self._dispatch(worker, [pending.popleft()])
            else:
                chunk = [pending.popleft()]
                while pending and len(chunk) < batch_size and not self._slow(pending[0]):
                    chunk.append(pending.popleft())
                self._dispatch(worker, chunk)

    def _dispatch(self, worker: _Worker, tasks: list[Task], slow: bool = False) -> None:
        self._batches += 1
        inner = max(self.limits.timeout_s * 0.8, self.limits.timeout_s - 1.0)
        wanted = {node_type for task in tasks for node_type in task.node_types}
        preload = {self.node_modules[t] for t in wanted if t in self.node_modules}
        message = {
            "op": proto.TASK,
            "batch": self._batches,
            "inner_timeout": inner,
            "preload": sorted(preload),
            "files": [
                {
                    "id": t.id,
                    "path": t.path,
                    "module": t.module,
                    "factories": list(t.factories),
                    "base": str(self.base),
                }
                for t in tasks
            ],
        }
        # The file's own clock starts when the child is forked; until then the worker
        # loads the batch's node libraries, bounded by the warm-up limit.
        batch = _Batch(self._batches, tasks, slow=slow, claims=tuple(t.id for t in tasks[1:]))
        batch.deadline = batch.file_started_at + WARMUP_TIMEOUT_S
        worker.batches[batch.id] = batch
        proto.write_all(worker.task_fd, proto.encode(message))

    def _read(self, worker: _Worker, pending: deque[Task]) -> list[Outcome]:
        try:
            chunk = os.read(worker.event_fd, 65536)
        except BlockingIOError:
            return []
        if not chunk:
            return self._worker_died(worker, pending)
        worker.buffer += chunk
        outcomes: list[Outcome] = []
        while b"\n" in worker.buffer:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            try:
                event = proto.decode(line)
            except ValueError:
                return outcomes + self._worker_died(worker, pending)
            outcomes += self._event(worker, event, pending)
        if len(worker.buffer) > proto.MAX_EVENT_BYTES:
            return outcomes + self._worker_died(worker, pending)
        return outcomes

    def _event(self, worker: _Worker, event: dict[str, Any], pending: deque[Task]) -> list[Outcome]:
        kind = event.get("event")
        if kind == proto.READY:
            worker.ready = True
            return []
        batch = worker.batches.get(event.get("batch"))  # type: ignore[arg-type]
        if batch is None:
            return []
        now = time.monotonic()
        if kind == proto.STARTED:
            batch.child_pid = int(event["pid"])
            batch.file_started_at = now
            batch.deadline = now + self.limits.timeout_s
        elif kind == proto.FILE_DONE and batch.current and event.get("id") == batch.current.id:
            outcome = self._result(batch.current, now - batch.file_started_at)
            batch.index += 1
            batch.file_started_at = now
            batch.deadline = now + self.limits.timeout_s
            return [outcome]
        elif kind == proto.DONE:
            del worker.batches[batch.id]
            for task_id in batch.claims:
                proto.unclaim(self.directory, batch.id, task_id)
            # Results published without progress (a candidate closed or reused the
            # descriptor) still count: the result files are what matter.
            published: list[Outcome] = []
            while batch.current and os.path.exists(
                proto.result_path(self.directory, batch.current.id)
            ):
                published.append(self._result(batch.current, now - batch.file_started_at))
                batch.index += 1
            current = batch.current
            if current is None:
                return published
            pending.extendleft(reversed(batch.tasks[batch.index + 1 :]))
            detail = DETAIL_EXITED.format(code=event.get("exit"))
            if event.get("signal"):
                number = int(event["signal"])
                detail = DETAIL_SIGNAL.format(signal=_signal_name(number))
                if number == signal.SIGXCPU:
                    detail = DETAIL_CPU
            crashed = self._failed(current, OUTCOME_CRASHED, detail, now - batch.file_started_at)
            return [*published, crashed]
        return []

    def _result(self, task: Task, duration: float) -> Outcome:
        result_file = proto.result_path(self.directory, task.id)
        tail = _tail(proto.stderr_path(self.directory, task.id))
        try:
            with open(result_file, encoding="utf-8") as handle:
                result = proto.decode(handle.read().encode())
            return Outcome(task, OUTCOME_RESULT, result=result, stderr_tail=tail,
                           duration_s=duration)
        except (OSError, ValueError) as exc:
            return Outcome(task, OUTCOME_CRASHED, detail=DETAIL_UNREADABLE.format(error=exc),
                           stderr_tail=tail, duration_s=duration)
        finally:
            self._forget(task)

    def _failed(self, task: Task, kind: str, detail: str, duration: float) -> Outcome:
        tail = _tail(proto.stderr_path(self.directory, task.id))
        self._forget(task)
        return Outcome(task, kind, detail=detail, stderr_tail=tail, duration_s=duration)

    def _forget(self, task: Task) -> None:
        for path in (proto.result_path(self.directory, task.id),
                     proto.stderr_path(self.directory, task.id)):
            try:
                os.unlink(path)
            except OSError:
                pass

    def _worker_died(self, worker: _Worker, pending: deque[Task]) -> list[Outcome]:
        if not worker.ready:
            self._retire(worker)
            tail = _tail(os.path.join(self.directory, "worker.err"))
            raise RuntimeError(f"discovery worker failed to start: {tail or 'no output'}")
        return self._abandon(worker, pending)

    def _abandon(self, worker: _Worker, pending: deque[Task]) -> list[Outcome]:
        """Retire a worker: the file each of its batches was running crashed with it,
        and the rest of each batch goes back to the queue."""
        self._retire(worker)
        now = time.monotonic()
        outcomes = []
        for batch in worker.batches.values():
            if batch.current is not None:
                pending.extendleft(reversed(batch.tasks[batch.index + 1 :]))
                duration = now - batch.file_started_at
                outcomes.append(
                    self._failed(batch.current, OUTCOME_CRASHED, DETAIL_WORKER_DIED, duration)
                )
        worker.batches.clear()
        return outcomes

    def _time_out(self, batch: _Batch, pending: deque[Task], now: float) -> Outcome | None:
        """The running file's time is up; the rest of the batch goes back to the queue."""
        current = batch.current
        if current is None:
            return None
        pending.extendleft(reversed(batch.tasks[batch.index + 1 :]))
        del batch.tasks[batch.index + 1 :]
        batch.index += 1
        return self._failed(current, OUTCOME_TIMEOUT, "", now - batch.file_started_at)

    def _detach(self, batch: _Batch, pending: deque[Task]) -> None:
        """A slow file: hand the rest of its batch to other children, make room beside
        it and let it yield the CPU.

        The child claims each file before it starts it and the parent claims the
        ones it hands on, so a file the child had already started stays with it.
        """
        batch.detached = True
        rest = batch.tasks[batch.index + 1 :]
        given = [t for t in rest if proto.claim(self.directory, batch.id, t.id)]
        batch.tasks[batch.index + 1 :] = [t for t in rest if t not in given]
        pending.extendleft(reversed(given))
        if not batch.slow and sum(b.slow for b in self._running()) < MAX_SLOW_RUNS:
            batch.slow = True
        if batch.child_pid:  # never 0: that would mean this process's own group
            try:
                os.setpriority(os.PRIO_PGRP, batch.child_pid, SLOW_NICE)
            except OSError:
                pass  # already gone, or a group the candidate moved out of

    def _enforce(self, pending: deque[Task]) -> Iterator[Outcome]:
        """Kill what overran, detach what is slow; replace workers that are gone or stuck."""
        now = time.monotonic()
        for worker in list(self._workers):
            if not worker.ready and now > worker.started_at + WARMUP_TIMEOUT_S:
                self._retire(worker)
                raise RuntimeError(
                    "discovery worker did not start within "
                    f"{WARMUP_TIMEOUT_S:.0f}s: {_tail(os.path.join(self.directory, 'worker.err'))}"
                )
            for batch in list(worker.batches.values()):
                if now >= batch.deadline:
                    if batch.killed or batch.child_pid is None:
                        # Stuck: it did not report the kill, or never forked.
                        if timed_out := self._time_out(batch, pending, now):
                            yield timed_out
                        yield from self._abandon(worker, pending)
                        break
                    batch.killed = True
                    batch.deadline = now + KILL_GRACE_S
                    try:
                        os.killpg(batch.child_pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    if timed_out := self._time_out(batch, pending, now):
                        yield timed_out
                elif (
                    not batch.detached
                    and batch.child_pid is not None
                    and now >= batch.file_started_at + self.slow_after
                ):
                    self._detach(batch, pending)
        remaining = len(pending) + sum(len(b.tasks) - b.index for b in self._running())
        while remaining and len(self._workers) < self.wanted(remaining):
            self._spawn()
