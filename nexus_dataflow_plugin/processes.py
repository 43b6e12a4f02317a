"""Worker processes and each file's channels, as the server sees them.

Mechanics only: spawn a worker, send it a file with that file's own channels
attached, read what comes back, kill. No policy: when to send what is
``schedule``'s, deadlines are ``isolation``'s.

No survivors: every worker carries a marker in its environment
(``NEXUS_DATAFLOW_SCAN=<token>``) that its forked children and their forks
inherit. A worker is the subreaper of its files' processes and kills what
each leaves behind; whatever escapes it (the worker was killed or stopped by
a candidate, a daemon in a session of its own) is found by ``sweep``, which
kills every process carrying the pool's marker. Only a process that replaces
its own environment (``exec`` with a new one) after its worker died can
escape both; see docs/containment.md.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import protocol as proto
from .paths import in_project

logger = logging.getLogger(__name__)

MARKER_ENV = "NEXUS_DATAFLOW_SCAN"
STDERR_TAIL = 2000


def new_token() -> str:
    return secrets.token_hex(8)


class Tail:
    """The last bytes read from a stream: enough for a reason, bounded whatever comes."""

    def __init__(self, limit: int = STDERR_TAIL) -> None:
        self.limit = limit
        self.data = b""

    def add(self, chunk: bytes) -> None:
        self.data = (self.data + chunk)[-self.limit:]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace").strip()


def _drain(sock: socket.socket, limit: int = 1 << 20) -> bytes | None:
    """What is readable now (None at end of stream); never blocks."""
    try:
        data = sock.recv(limit)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError:
        return None
    return data if data else None


@dataclass
class FileChannels:
    """One file's result and stderr channels: the server's ends of two socket pairs."""

    result: socket.socket
    stderr: socket.socket
    reader: proto.FrameReader
    tail: Tail = field(default_factory=Tail)
    pidfd: int | None = None

    @classmethod
    def open(cls, limit: int) -> tuple[FileChannels, list[int]]:
        """The server's ends, and the child's ends to send with the file (then close)."""
        result, child_result = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stderr, child_stderr = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (result, stderr):
            sock.setblocking(False)
        # Room for a whole frame's header beyond the body limit.
        return cls(result, stderr, proto.FrameReader(limit)), [
            child_result.detach(), child_stderr.detach()]

    def read_frames(self) -> tuple[list[tuple[int, bytes]], bool]:
        """Frames completed by what is readable now, and whether the channel is still open.

        Raises ``ProtocolError`` for a frame the protocol does not allow."""
        data = _drain(self.result)
        if data is None:
            return [], False
        return self.reader.feed(data), True

    def read_stderr(self) -> bool:
        data = _drain(self.stderr)
        if data is None:
            return False
        self.tail.add(data)
        return True

    def watch(self, pid: int) -> None:
        """Start watching the file's process itself (so its death is seen, whoever reaps it)."""
        self.pidfd = pidfd_of(pid)

    def close(self) -> None:
        for sock in (self.result, self.stderr):
            sock.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def pidfd_of(pid: int) -> int | None:
    """A descriptor for the process ``pid`` (a kill through it never hits a recycled
    pid), or None where the platform has none or the process is gone."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def kill_file(pid: int | None, pidfd: int | None) -> None:
    """Kill a file's process and its process group; by pidfd where we have one, so a
    recycled pid is never hit."""
    if pid is None:
        return
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def renice(pid: int, niceness: int) -> None:
    """Let a slow file's process group yield the CPU to the rest of the scan."""
    try:
        os.setpriority(os.PRIO_PGRP, pid, niceness)
    except OSError:
        pass  # already gone, or a group the candidate moved out of


class WorkerProcess:
    """One warm worker: ``python -m nexus_dataflow_plugin.worker``, its own session.

    It imports Kailash as soon as it starts and then waits for ``configure``: a
    worker can start before the server knows its settings (see ``early``)."""

    def __init__(self, base: str, token: str) -> None:
        control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stderr, child_stderr = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parent.parent)
        # The worker imports only libraries: nothing of the project on its own path.
        env["PYTHONPATH"] = os.pathsep.join([package_parent] + [
            p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and not in_project(p, base)
        ])
        env["PYTHONSAFEPATH"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env[MARKER_ENV] = token
        self.process = subprocess.Popen(
            [sys.executable, "-m", proto.WORKER_MODULE, str(child_control.fileno())],
            pass_fds=(child_control.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=child_stderr.fileno(),
            cwd=base,
            env=env,
            start_new_session=True,
        )
        child_control.close()
        child_stderr.close()
        control.setblocking(False)
        stderr.setblocking(False)
        self.control = control
        self.stderr = stderr
        self.tail = Tail()
        self.started_at = time.monotonic()
        self.ready = False
        self.alive = True

    def configure(self, init: proto.Init) -> None:
        """Send the worker its settings; it reports ``Ready`` once set up (or is gone).

        Its warm-up is timed from here: one started early may have waited for this
        longer than any warm-up may take."""
        self.started_at = time.monotonic()
        try:
            self.control.send(proto.encode(init))
        except OSError:  # killed as soon as it ran (a candidate can kill new workers)
            pass  # gone: its channel's end shows it, and the pool replaces it

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: proto.RunFile | proto.ReadAhead, fds: Sequence[int]) -> bool:
        """Hand the worker a file (or a read-ahead) with its channels; False if the
        worker is gone."""
        try:
            socket.send_fds(self.control, [proto.encode(message)], list(fds))
            return True
        except OSError:
            return False

    def events(self) -> tuple[list[proto.Ready | proto.Exited], bool]:
        """Messages readable now, and whether the worker is still there.

        A message that is not a worker's (it cannot be, unless the worker is
        broken) is logged and dropped: no file is blamed for it."""
        messages: list[proto.Ready | proto.Exited] = []
        while True:
            try:
                data = self.control.recv(proto.MAX_CONTROL_BYTES)
            except (BlockingIOError, InterruptedError):
                return messages, True
            except OSError:
                return messages, False
            if not data:
                return messages, False
            try:
                messages.append(proto.decode(data, proto.Ready, proto.Exited))
            except proto.ProtocolError as exc:
                logger.warning("dropped a message from worker %s: %s", self.pid, exc)

    def read_stderr(self) -> None:
        data = _drain(self.stderr)
        if data:
            self.tail.add(data)

    def stopped(self) -> bool:
        """The worker is stopped, traced or dead: it will not fork anything sent to it."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state in (b"T", b"t", b"Z", b"X")

    def close_control(self) -> None:
        """Ask the worker to go: it kills what its children left and exits."""
        try:
            self.control.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def kill(self) -> None:
        """Kill the worker (not the files it started: they report to the server directly)."""
        if not self.alive:
            return
        self.alive = False
        try:
            self.process.kill()
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.warning("worker %s did not exit after SIGKILL", self.pid)
        self.read_stderr()
        self.control.close()
        self.stderr.close()


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ReadAheadProcess:
    """A worker's read-ahead process (see ``worker._read_ahead``), as the server sees it:
    the ``Reading`` of each file of its list it has answered, by place in the list, read
    without ever waiting; killed (``close``) when the screen no longer needs it.

    Anything on its channel that is not a ``Started`` and then ``Reading`` frames ends
    it: the server screens the files left unanswered itself.
    """

    def __init__(self, worker: WorkerProcess, number: int, listing: proto.ReadFiles,
                 limit: int) -> None:
        self.items = listing.items
        self.answers: dict[int, proto.Reading] = {}
        # What the server keeps of an answer's facts, made as the answer comes: answers
        # wait until the server reaches their files (the last ones, for most), and their
        # JSON lists weigh three times the facts (or None, for facts of a wrong shape).
        self.keep: Callable[[Any], Any] = lambda facts: facts
        self._taken: set[int] = set()  # files the server screened itself
        self.open = False
        self._started = False
        self.pid: int | None = None  # None once it is killed, too
        self._pidfd: int | None = None
        self._frames = proto.FrameReader(limit)
        memory = os.memfd_create("nexus-dataflow-read-ahead", os.MFD_CLOEXEC)
        try:
            proto.write_all(memory, proto.encode(listing))
            os.lseek(memory, 0, os.SEEK_SET)
            self.channel, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            with child:
                self.channel.setblocking(False)
                self.open = worker.send(proto.ReadAhead(number), [memory, child.fileno()])
        finally:
            os.close(memory)

    def take(self, index: int) -> proto.Reading | None:
        """The answer for the ``index``-th file, if it has come; never waits. A file not
        answered yet is the server's: its answer, if it comes, is dropped; and once the
        server takes an answer right after a file it screened itself, the two have met
        and the process stops (what it sent before stays readable)."""
        if index not in self.answers and self.open:
            self._take_in()
        reading = self.answers.pop(index, None)
        if reading is None:
            self._taken.add(index)
        elif index - 1 in self._taken:
            self._stop()
        return reading

    def _take_in(self) -> None:
        """Every answer readable now (see ``take``)."""
        try:
            while self.open:
                data = _drain(self.channel)
                if not data:
                    self.open = data is not None  # b"": nothing more now; None: ended
                    return
                for kind, body in self._frames.feed(data):
                    if kind == proto.FRAME_STARTED and not self._started:
                        self._started = True
                        self.pid = proto.decode(body, proto.Started).pid
                        self._pidfd = pidfd_of(self.pid)
                    elif kind == proto.FRAME_READING and self._started:
                        reading = proto.decode(body, proto.Reading)
                        if reading.index not in self._taken:
                            self.answers[reading.index] = replace(
                                reading, facts=self.keep(reading.facts))
                    else:
                        raise proto.ProtocolError(f"frame kind {kind} out of place")
        except proto.ProtocolError as exc:
            logger.warning("read-ahead process %s stopped: %s", self.pid, exc)
            self.close()

    def _stop(self) -> None:
        """Kill the process; its pidfd goes with it (its pid may be another's after)."""
        if self._pidfd is not None or self.pid is not None:
            kill_file(self.pid, self._pidfd)
        if self._pidfd is not None:
            os.close(self._pidfd)
        self._pidfd = self.pid = None

    def close(self) -> None:
        """Kill it, if it is still reading, and close its channel: the rest of its list
        is the server's."""
        self.open = False
        self._stop()
        self.channel.close()


def marked(token: str) -> list[int]:
    """Pids of live processes whose environment carries this pool's marker."""
    needle = f"{MARKER_ENV}={token}".encode()
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(name))
    return found


def sweep(token: str, patience_s: float = 5.0) -> None:
    """Kill every process carrying the marker until none is left (kills re-parent)."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        pids = marked(token)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)
    logger.warning("processes of a scan still alive after %.0fs: %s", patience_s, marked(token))
