"""Stage 4: run candidate imports in processes of their own, with the server's deadlines.

``WorkerPool.run`` is the event loop: it hands files to warm workers as
``schedule`` says, each file in a fresh process forked for it alone, reads
each file's result from that process's own channel, and kills every file in
flight at its timeout, whatever its worker is doing. A worker that is
stopped or gone is replaced; the files it had not started yet go to other
workers, and the files it had started go on, because they report to the
server directly. Process mechanics are ``processes``'s, the messages
``protocol``'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import selectors
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import early, schedule
from . import protocol as proto
from . import report as r
from .config import Settings
from .paths import in_project
from .processes import (
    FileChannels,
    ReadAheadProcess,
    WorkerProcess,
    kill_file,
    new_token,
    renice,
    sweep,
    usable_cores,
)

logger = logging.getLogger(__name__)

# How long a worker may take to import Kailash before it counts as failed to start.
WARMUP_TIMEOUT_S = 120.0
# Workers failing to start in a row, with no file in flight that could be the cause,
# before the files still queued are given up (each with the reason) instead of waiting.
MAX_START_FAILURES = 3
# A file sent to a worker but not started after this long has its worker checked
# (stopped by a candidate?), and after DISPATCH_GRACE_S its worker is replaced.
DISPATCH_CHECK_S = 0.25
DISPATCH_GRACE_S = 10.0
# After a file's process died without a result, how long its worker has to say how.
EXIT_GRACE_S = 1.0
# How long closing waits for the workers to clean up after their children and exit.
CLOSE_GRACE_S = 3.0
# How far a slow file's processes yield the CPU to the rest of the scan.
SLOW_NICE = 10

# Where DataFlow puts the node classes it generates per model: they belong to the
# app's DataFlow instance and cannot be re-created by importing a module.
GENERATED_NODES_MODULE = "dataflow.core.nodes"

# How a file's process failed, for the crash reason.
DETAIL_EXITED = "exited with status {code} before reporting"
DETAIL_SIGNAL = "killed by {signal}"
DETAIL_CPU = "hit the CPU limit (SIGXCPU)"
DETAIL_NO_CHANNEL = (
    "its result channel was gone when it had a result (it closed descriptors it did not open?)"
)
DETAIL_NO_STATUS = "it ended without a result, and its worker was not there to say how"
DETAIL_NO_WORKER = "no worker process could start ({tail})"

OUTCOME_RESULT = "result"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_CRASHED = "crashed"
OUTCOME_INVALID = "invalid"


@dataclass(frozen=True)
class Task:
    """One file for a worker: where it is, its module name, its factory names, the node
    types the screen saw it use, and the digest of the bytes the screen judged."""

    id: int
    path: str
    module: str
    factories: tuple[str, ...]
    node_types: tuple[str, ...] = ()
    last_duration_s: float | None = None  # how long it took in the previous scan
    may_block: bool = False  # the screen saw it loop or wait at import
    digest: str | None = None
    standins: tuple[str, ...] = ()  # DataFlow node types of the project's models


@dataclass(frozen=True)
class Limits:
    """Per-file limits: applied in each file's process, and to what it sends back."""

    timeout_s: float
    memory_bytes: int | None
    cpu_seconds: int | None
    max_result_bytes: int
    # Nodes and connections per result: 2,000 rebuild in about half a second at worst
    # (2,000 connections between one pair of nodes; real workflows have tens).
    max_result_nodes: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The limits ``settings`` set (their defaults are declared there alone)."""
        memory = settings.memory_limit_mb
        return cls(timeout_s=settings.timeout,
                   memory_bytes=memory * 1024 * 1024 if memory else None,
                   cpu_seconds=settings.cpu_limit_s,
                   max_result_bytes=settings.max_result_bytes,
                   max_result_nodes=settings.max_result_nodes)


@dataclass
class Outcome:
    """What came back for a task: a result, or how its process failed."""

    task: Task
    kind: str
    result: proto.Result | None = None
    detail: str = ""
    stderr_tail: str = ""
    duration_s: float = 0.0


@dataclass
class _Flight:
    """A file handed to a worker, until its outcome is known."""

    task: Task
    worker: WorkerProcess
    channels: FileChannels
    dispatched_at: float
    slow: bool
    pid: int | None = None
    started_at: float | None = None
    exit: tuple[int | None, int | None] | None = None
    dead_at: float | None = None
    result_open: bool = True
    orphaned: bool = False  # its worker was retired before the file reported Started
    # What the worker calls it (``RunFile.id``, then ``Exited.id``): unique in the pool,
    # unlike the task's id (its place in a scan), so a late ``Exited`` of an earlier
    # scan's file is never taken for this one's.
    dispatch: int = 0

    def running_s(self, now: float) -> float:
        return now - (self.started_at if self.started_at is not None else self.dispatched_at)


def library_node_modules(project_root: Path) -> dict[str, str]:
    """Node type -> the installed library module that defines it, as the server has them.

    The worker imports a module from this map the first time a workflow asks
    for its node type, so node types resolve there as they do in the server.
    Project modules and DataFlow's generated model nodes are left out.
    """
    from kailash.nodes.base import NodeRegistry

    modules: dict[str, str] = {}
    library: dict[str, bool] = {}  # per module: hundreds of node types share a few dozen
    for node_type, cls in list(NodeRegistry._nodes.items()):
        name = getattr(cls, "__module__", "") or ""
        if name not in library:
            origin = getattr(sys.modules.get(name), "__file__", None) or ""
            library[name] = bool(origin) and name not in ("__main__", GENERATED_NODES_MODULE) \
                and not in_project(origin, project_root)
        if library[name]:
            modules[node_type] = name
    return modules


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def crash_detail(code: int | None, sig: int | None) -> str:
    if sig is not None:
        return DETAIL_CPU if sig == signal.SIGXCPU else DETAIL_SIGNAL.format(
            signal=_signal_name(sig))
    if code == proto.EXIT_NO_CHANNEL:
        return DETAIL_NO_CHANNEL
    return DETAIL_EXITED.format(code=code)


class WorkerPool:
    """Warm workers that import each candidate file in a process forked for it alone."""

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
        self.slow_after = schedule.slow_after(limits.timeout_s)
        paths = sys_path if sys_path is not None else sys.path
        self.init = proto.Init(
            sys_path=tuple([str(base)] + [p for p in paths if p and p != str(base)]),
            library_path=tuple(p for p in paths if p and not in_project(p, base)),
            base=str(base),
            node_modules=dict(node_modules or {}),
            memory_bytes=limits.memory_bytes,
            cpu_seconds=limits.cpu_seconds,
            max_result_bytes=limits.max_result_bytes,
        )
        # Workers started as ``import nexus`` began, if they are for this directory:
        # they carry that start's marker, so the pool takes its token too.
        early_token, self._early = early.claim(base)
        self.token = early_token or new_token()
        # Its workers answer to this process alone: a child forked from it (a preforking
        # server) must neither send them files nor end them.
        self.owner = os.getpid()
        self._start_failures = 0
        self._broken: str | None = None  # why no worker can start, once that is clear
        self._workers: list[WorkerProcess] = []
        self._flights: dict[int, _Flight] = {}
        self._dispatches = itertools.count()
        self._selector = selectors.DefaultSelector()

    # -- lifecycle ---------------------------------------------------------

    def owned(self) -> bool:
        """Whether this process made the pool (not a child forked after)."""
        return self.owner == os.getpid()

    def _spawn(self) -> WorkerProcess:
        worker = self._early.pop() if self._early else WorkerProcess(self.init.base, self.token)
        worker.configure(self.init)
        self._selector.register(worker.control, selectors.EVENT_READ, ("control", worker))
        self._selector.register(worker.stderr, selectors.EVENT_READ, ("wstderr", worker))
        self._workers.append(worker)
        return worker

    def wanted(self, files: int) -> int:
        """Workers worth having for ``files`` files: at least one, at most ``size``."""
        return schedule.wanted_workers(files, self.size)

    def start(self, files: int | None = None) -> WorkerPool:
        """Start workers now (as many as ``files`` files warrant, else ``size``), so their
        warm-up overlaps the caller's own work."""
        count = self.size if files is None else self.wanted(files)
        while len(self._workers) < count:
            self._spawn()
        return self

    def _unwatch(self, obj: Any) -> None:
        try:
            self._selector.unregister(obj)
        except (KeyError, ValueError):
            pass

    def _retire(self, worker: WorkerProcess, pending: deque[Task]) -> list[Outcome]:
        """Kill a worker that is stopped or gone. The files it had started go on,
        reporting to us directly. A file it had not started goes back to the queue only
        once its channel shows that no process of it can start: its ``Started`` comes
        before any of the file runs, so a channel at its end without one proves the file
        never ran; one still open may belong to a process just forked (it is orphaned
        and waited for), which must not run the file a second time elsewhere. Its channel
        may also hold its whole result, unread (it ran while we were busy): that outcome
        is returned, or the scan would wait for it forever."""
        self._unwatch(worker.control)
        self._unwatch(worker.stderr)
        worker.kill()
        if worker in self._workers:
            self._workers.remove(worker)
        outcomes: list[Outcome] = []
        for flight in [f for f in self._flights.values() if f.worker is worker]:
            if flight.started_at is None:
                flight.orphaned = True
                outcomes += self._result(flight)
                self._requeue_unstarted(flight, pending)
        return outcomes

    def _requeue_unstarted(self, flight: _Flight, pending: deque[Task]) -> None:
        if (self._flights.get(flight.task.id) is flight and flight.orphaned
                and flight.started_at is None and not flight.result_open):
            self._drop(flight)
            pending.appendleft(flight.task)

    def close(self) -> None:
        """End every worker and every process of the scan.

        Each ready worker is first asked to go: it kills what its children left
        behind (it is their subreaper); one still warming up has none and is killed
        at once. A worker that does not exit in time is
        killed; then every process still carrying the pool's marker is. In a process
        forked from the pool's owner nothing is the child's to end: it does nothing.
        """
        if not self.owned():
            return
        for flight in list(self._flights.values()):
            kill_file(flight.pid, flight.channels.pidfd)
            self._drop(flight)
        for worker in self._early:
            worker.kill()  # started early, never needed: it holds nothing yet
        self._early.clear()
        for worker in self._workers:
            if worker.ready:
                worker.close_control()
            else:  # still warming up: it was sent no file, so it forked nothing to clean
                self._unwatch(worker.control)  # up, and asking it to go would wait for
                self._unwatch(worker.stderr)  # its warm-up (up to a second, in start())
                worker.kill()
        deadline = time.monotonic() + CLOSE_GRACE_S
        for worker in self._workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - TimeoutExpired: killed below
                pass
        for worker in list(self._workers):
            self._unwatch(worker.control)
            self._unwatch(worker.stderr)
            worker.kill()
        self._workers.clear()
        sweep(self.token)
        self._selector.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- read-ahead ------------------------------------------------------------

    def read_ahead(self, listing: proto.ReadFiles) -> list[tuple[ReadAheadProcess, list[int]]]:
        """Read-ahead processes for ``listing`` on the idle warm workers (none while no
        worker is warm: a screen never waits for one), each with its share: the places
        in ``listing.items`` of the files it answers, in its own list's order."""
        if not self.owned() or self._broken is not None or self._flights:
            return []
        for worker in self._workers:
            if not worker.ready:
                self._control(worker, deque())  # a Ready not read yet (no file is in flight)
        idle = [w for w in self._workers if w.ready and w.alive]
        items = listing.items
        count = schedule.read_ahead_processes(len(items), len(idle), usable_cores())
        started = []
        for number in range(count):
            share = list(range(number, len(items), count))
            mine = dataclasses.replace(listing, items=tuple(items[i] for i in share))
            try:
                process = ReadAheadProcess(idle[number], -1 - number, mine,
                                           self.limits.max_result_bytes + 4096)
            except (OSError, AttributeError) as exc:  # AttributeError: no memfd_create
                logger.debug("read-ahead not started: %s", exc)
                break
            started.append((process, share))
        return started

    # -- the event loop ------------------------------------------------------

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
        finished = 0
        held: list[Outcome] = []
        self.start(expected)
        while stream is not None or finished < taken:
            # Take from an open stream between events: a file the screen sees may
            # block must start as soon as it is screened, not after the files behind it.
            if stream is not None:
                got, more = self._take(stream, pending, schedule.PER_WORKER * self.size)
                taken += got
                if not more:
                    stream = None
            held += self._dispatch(pending)
            now = time.monotonic()
            wait = 0.0 if stream is not None else max(0.0, self._next_wakeup(now) - now)
            for key, _ in self._selector.select(timeout=min(wait, 1.0)):
                held += self._event(key.data, pending)
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
        return schedule.expected_slow(task.last_duration_s, task.may_block, self.slow_after)

    def _slow_running(self) -> int:
        return sum(f.slow for f in self._flights.values())

    def _dispatch(self, pending: deque[Task]) -> list[Outcome]:
        """Send what ``schedule.assign`` picks from the front of the queue; with no worker
        able to start, give the queued files up, each with the reason."""
        if self._broken is not None:
            outcomes = [Outcome(task, OUTCOME_CRASHED, detail=self._broken) for task in pending]
            pending.clear()
            return outcomes
        if not pending:
            return []
        loads = [
            schedule.Load(w.ready, sum(1 for f in self._flights.values()
                                       if f.worker is w and not f.slow))
            for w in self._workers
        ]
        size = min(len(pending), len(loads) * schedule.PER_WORKER + schedule.MAX_SLOW)
        window = [pending.popleft() for _ in range(size)]
        plan = schedule.assign([self._slow(t) for t in window], loads, self._slow_running())
        for index, worker_index, slow in plan:
            self._send(window[index], self._workers[worker_index], slow)
        chosen = {index for index, _, _ in plan}
        pending.extendleft(reversed([t for i, t in enumerate(window) if i not in chosen]))
        return []

    def _send(self, task: Task, worker: WorkerProcess, slow: bool) -> None:
        inner = max(self.limits.timeout_s * 0.8, self.limits.timeout_s - 1.0)
        modules = self.init.node_modules
        preload = sorted({modules[t] for t in task.node_types if t in modules})
        dispatch = next(self._dispatches)
        run = proto.RunFile(dispatch, task.path, task.module, tuple(task.factories),
                            tuple(preload), inner, task.digest, tuple(task.standins))
        channels, child_fds = FileChannels.open(self.limits.max_result_bytes + 4096)
        sent = worker.send(run, child_fds)
        for fd in child_fds:
            _close(fd)
        flight = _Flight(task, worker, channels, time.monotonic(), slow, dispatch=dispatch)
        self._flights[task.id] = flight
        self._selector.register(channels.result, selectors.EVENT_READ, ("result", flight))
        self._selector.register(channels.stderr, selectors.EVENT_READ, ("fstderr", flight))
        if not sent:
            logger.debug("worker %s is gone; %s waits for another", worker.pid, task.path)

    def _next_wakeup(self, now: float) -> float:
        wakeups = [max(now + 0.05, w.started_at + DISPATCH_CHECK_S)
                   for w in self._workers if not w.ready]  # a warm-up stopped from outside
        for flight in self._flights.values():
            if flight.started_at is None:
                wakeups.append(max(now + 0.05, flight.dispatched_at + DISPATCH_CHECK_S))
                continue
            wakeups.append(flight.started_at + self.limits.timeout_s)
            if not flight.slow:
                wakeups.append(flight.started_at + self.slow_after)
            if flight.dead_at is not None:
                wakeups.append(flight.dead_at + EXIT_GRACE_S)
        return min(wakeups) if wakeups else now + 1.0

    def _event(self, data: tuple[str, Any], pending: deque[Task]) -> list[Outcome]:
        kind, obj = data
        if kind == "control":
            return self._control(obj, pending)
        if kind == "wstderr":
            obj.read_stderr()
            return []
        flight: _Flight = obj
        if self._flights.get(flight.task.id) is not flight:
            return []
        if kind == "fstderr":
            if not flight.channels.read_stderr():
                self._unwatch(flight.channels.stderr)
            return []
        if kind == "result":
            outcomes = self._result(flight)
            self._requeue_unstarted(flight, pending)
            return outcomes
        # The file's process is gone: what it sent may still be unread.
        self._unwatch(flight.channels.pidfd)
        outcomes = self._result(flight) if flight.result_open else []
        if outcomes or self._flights.get(flight.task.id) is not flight:
            return outcomes
        flight.dead_at = time.monotonic()
        if flight.exit is not None:
            return [self._finish(flight, OUTCOME_CRASHED, detail=crash_detail(*flight.exit))]
        return []

    def _control(self, worker: WorkerProcess, pending: deque[Task]) -> list[Outcome]:
        messages, alive = worker.events()
        outcomes: list[Outcome] = []
        for message in messages:
            if isinstance(message, proto.Ready):
                worker.ready = True
                self._start_failures = 0
                continue
            flight = next((f for f in self._flights.values() if f.dispatch == message.id),
                          None)
            if flight is None or flight.worker is not worker:
                continue  # a file already finished (killed after its result): expected
            flight.exit = (message.code, message.signal)
            if flight.dead_at is not None or not flight.result_open:
                detail = crash_detail(message.code, message.signal)
                outcomes.append(self._finish(flight, OUTCOME_CRASHED, detail=detail))
        if not alive:
            if not worker.ready:
                outcomes += self._failed_start(worker, pending)
            else:
                outcomes += self._retire(worker, pending)
        return outcomes

    def _failed_start(self, worker: WorkerProcess, pending: deque[Task]) -> list[Outcome]:
        """A worker died, hung or was stopped before it was ready. Another is started in
        its place, unless several in a row failed while no file ran that could have
        done it (a broken environment): then the queued files are given up."""
        outcomes = self._retire(worker, pending)
        self._start_failures += 1
        running = any(f.started_at is not None for f in self._flights.values())
        if self._start_failures >= MAX_START_FAILURES and not running:
            self._broken = DETAIL_NO_WORKER.format(tail=worker.tail.text()[-300:] or "no output")
            logger.error("discovery: %s", self._broken)
        return outcomes

    def _result(self, flight: _Flight) -> list[Outcome]:
        """Read the file's own channel: ``Started`` once, then one ``Result``."""
        try:
            while True:
                frames, flight.result_open = flight.channels.read_frames()
                for kind, body in frames:
                    if kind == proto.FRAME_STARTED:
                        if flight.started_at is not None:
                            raise proto.ProtocolError("a second Started")
                        self._started(flight, proto.decode(body, proto.Started))
                        continue
                    if flight.started_at is None:
                        raise proto.ProtocolError("a Result before Started")
                    return [self._delivered(flight, proto.decode(body, proto.Result))]
                if not frames or not flight.result_open:
                    break
        except proto.OversizeFrame as exc:
            return [self._finish(flight, OUTCOME_INVALID, detail=r.PROBLEM_TOO_LARGE.format(
                size=exc.size, limit=self.limits.max_result_bytes))]
        except proto.ProtocolError as exc:
            return [self._finish(flight, OUTCOME_INVALID, detail=str(exc))]
        if not flight.result_open:
            self._unwatch(flight.channels.result)
            if flight.exit is not None:
                return [self._finish(flight, OUTCOME_CRASHED, detail=crash_detail(*flight.exit))]
        return []

    def _started(self, flight: _Flight, started: proto.Started) -> None:
        flight.pid = started.pid
        flight.started_at = time.monotonic()
        flight.channels.watch(started.pid)
        if flight.channels.pidfd is not None:
            self._selector.register(flight.channels.pidfd, selectors.EVENT_READ,
                                    ("pidfd", flight))
        if flight.slow:
            renice(started.pid, SLOW_NICE)

    def _delivered(self, flight: _Flight, result: proto.Result) -> Outcome:
        if result.oversize is not None:
            return self._finish(flight, OUTCOME_INVALID, detail=r.PROBLEM_TOO_LARGE.format(
                size=result.oversize, limit=self.limits.max_result_bytes))
        nodes = proto.node_count(result)
        if nodes > self.limits.max_result_nodes:
            return self._finish(flight, OUTCOME_INVALID, detail=r.PROBLEM_TOO_MANY_NODES.format(
                count=nodes, limit=self.limits.max_result_nodes))
        outcome = self._finish(flight, OUTCOME_RESULT, result=result)
        if result.elapsed is not None and 0 <= result.elapsed < outcome.duration_s:
            outcome.duration_s = result.elapsed
        return outcome

    def _finish(self, flight: _Flight, kind: str, *, result: proto.Result | None = None,
                detail: str = "") -> Outcome:
        """The file's outcome is known: end its processes, close its channels."""
        now = time.monotonic()
        kill_file(flight.pid, flight.channels.pidfd)
        flight.channels.read_stderr()
        outcome = Outcome(flight.task, kind, result=result, detail=detail,
                          stderr_tail=flight.channels.tail.text(),
                          duration_s=flight.running_s(now))
        self._drop(flight)
        return outcome

    def _drop(self, flight: _Flight) -> None:
        for obj in (flight.channels.result, flight.channels.stderr, flight.channels.pidfd):
            if obj is not None:
                self._unwatch(obj)
        flight.channels.close()
        self._flights.pop(flight.task.id, None)

    def _enforce(self, pending: deque[Task]) -> list[Outcome]:
        """Kill what overran; mark what is slow; replace workers that are stuck or gone."""
        now = time.monotonic()
        outcomes: list[Outcome] = []
        for worker in list(self._workers):
            if not worker.ready and (now > worker.started_at + WARMUP_TIMEOUT_S or (
                    now > worker.started_at + DISPATCH_CHECK_S and worker.stopped())):
                outcomes += self._failed_start(worker, pending)
        stuck: set[WorkerProcess] = set()
        for flight in list(self._flights.values()):
            if flight.started_at is None:
                waited = now - flight.dispatched_at
                if flight.orphaned:
                    if waited >= DISPATCH_GRACE_S:  # forked, then stuck before it began
                        outcomes.append(self._finish(flight, OUTCOME_CRASHED,
                                                     detail=DETAIL_NO_STATUS))
                elif waited >= DISPATCH_GRACE_S or (
                    waited >= DISPATCH_CHECK_S and flight.worker.stopped()
                ):
                    stuck.add(flight.worker)
                continue
            if now >= flight.started_at + self.limits.timeout_s:
                outcomes.append(self._finish(flight, OUTCOME_TIMEOUT))
            elif flight.dead_at is not None and now >= flight.dead_at + EXIT_GRACE_S:
                outcomes.append(self._finish(flight, OUTCOME_CRASHED, detail=DETAIL_NO_STATUS))
            elif not flight.slow and schedule.becomes_slow(
                now - flight.started_at, self.slow_after, self._slow_running()
            ):
                flight.slow = True
                if flight.pid is not None:
                    renice(flight.pid, SLOW_NICE)
        for worker in stuck:
            logger.info("worker %s is stopped or stuck; replacing it", worker.pid)
            outcomes += self._retire(worker, pending)
        unstarted = sum(1 for f in self._flights.values() if f.started_at is None)
        remaining = len(pending) + unstarted
        while remaining and self._broken is None and len(self._workers) < self.wanted(remaining):
            self._spawn()
        return outcomes


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def timeout_bound(hanging: int, workers: int, timeout_s: float) -> float:
    """The most a scan's hanging or stalling files may add to its good files' time."""
    return math.ceil(hanging / max(1, workers)) * timeout_s + 2.0
