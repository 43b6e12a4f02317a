"""The worker process: forks one clean process per candidate file.

Runs as ``python -m nexus_dataflow_plugin.worker CONTROL_FD``. Import rule
(enforced by ``tests/test_worker.py``): the standard library, Kailash, and
this package's ``protocol``, ``probe``, ``paths``, ``guard`` and
``transfer``, which follow the same rule. Never Nexus, DataFlow or the
server-side modules: a candidate finds the process as a bare Kailash program
would, plus the node libraries the server has (imported on first use).

The worker warms up once (imports Kailash's core), then never runs user
code: for each ``RunFile`` it forks a child from this clean, single-threaded
process; for a ``ReadAhead``, a process that screens and reads files as data
with this package's own code (``_read_ahead``), while the server does the same
from the other end of the list. The child keeps only the two channels the server made for that
file, reports ``Started``, runs the file and sends its ``Result`` straight to
the server, so a worker that a candidate stops or kills cannot hold up,
lose or forge another file's result. The worker reaps its children, tells
the server how each ended (``Exited``), and kills what a finished child left
behind (it is their subreaper). The server owns every deadline.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import importlib
import os
import resource
import select
import signal
import socket
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from nexus_dataflow_plugin import guard, paths, transfer
from nexus_dataflow_plugin import protocol as proto
from nexus_dataflow_plugin.probe import (
    MSG_IMPORT_MEMORY,
    import_raised,
    load_module,
    probe,
    where,
)

_PR_SET_CHILD_SUBREAPER = 36


class _ImportTimeout(BaseException):
    """Raised by the inner alarm so the child can say where it was stuck."""


def _become_subreaper() -> None:
    """Orphans of a file's process (forks, daemons) re-parent to us, so we can kill them."""
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


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def kill_leftovers(finished: int | None, running: set[int], patience: int = 200) -> None:
    """Kill what a finished child left behind: its group, and the orphans re-parented to us.

    An orphan in the group of a still-running child is that file's and stays. One
    whose group names no child (it started a session of its own) cannot be told
    apart, so it is killed once no child runs (``running`` empty). Repeated until
    nothing is left, because killing an orphan re-parents its children to us.
    """
    if finished is not None:
        try:
            os.killpg(finished, signal.SIGKILL)
        except OSError:
            pass
    for _ in range(patience):
        strays = []
        for pid in _children():
            group = _pgid(pid)
            if pid in running or group in running:
                continue
            if running and group != finished:
                continue
            strays.append(pid)
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, os.WNOHANG)
            except OSError:
                pass
        if not strays:
            return
        select.select([], [], [], 0.002)


# -- the child: one file ---------------------------------------------------------------------


def _load(run: proto.RunFile) -> types.ModuleType:
    """Execute exactly the bytes the screen judged (by digest), as native loads a file."""
    with open(run.path, "rb") as handle:
        source = handle.read()
    if run.digest is not None and hashlib.sha256(source).hexdigest() != run.digest:
        raise _Changed()
    return load_module(run.path, run.module, source)  # in a process of its own


class _Changed(Exception):
    """The file's bytes are not the ones the screen passed."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _ImportTimeout()


def _workflows_of(module: types.ModuleType, run: proto.RunFile, base: str) -> proto.Result:
    """Probe the namespace, then encode each workflow for the trip to the server."""
    probed = probe(vars(module), run.path, run.factories, (_ImportTimeout,))
    found = []
    for name, workflow in probed.workflows.items():
        encoded = transfer.encode(workflow, base, {module.__name__})
        modules = dict(encoded.node_modules)
        model_nodes = tuple(t for t in run.standins if modules.pop(t, None) is not None)
        found.append(proto.WorkflowData(name, encoded.data, modules, encoded.problems,
                                        model_nodes))
    return proto.Result(workflows=tuple(found), failures=tuple(probed.failures))


def _run_file(run: proto.RunFile, base: str) -> proto.Result:
    """Import one candidate and probe it; every way it can fail becomes a result."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, run.inner_timeout)
    try:
        transfer.register_standins(run.standins)
        return _workflows_of(_load(run), run, base)
    except _ImportTimeout as exc:
        return proto.Result(timeout=where(exc, run.path))
    except _Changed:
        return proto.Result(changed=True)
    except MemoryError as exc:
        return proto.Result(error=MSG_IMPORT_MEMORY.format(where=where(exc, run.path)))
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, anything
        return proto.Result(error=import_raised(exc, run.path))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)


def _private_channel(fd: int) -> int:
    """Move the result channel above every descriptor number the file can name,
    close-on-exec: the highest number the hard limit allows, with the soft limit (what
    ``sysconf("SC_OPEN_MAX")`` says) left below it. So a file that closes the
    descriptors it inherited (``os.closerange(3, 4096)``, ``os.closerange(3,
    os.sysconf("SC_OPEN_MAX"))``) does not reach it, and programs it starts do not
    inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = min(hard if hard != resource.RLIM_INFINITY else 1 << 20, 1 << 20)
    high = ceiling - 1
    if high <= fd:
        return fd
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        os.dup2(fd, high, inheritable=False)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, high), hard))
    except (OSError, ValueError):
        return fd
    os.close(fd)
    return high


def _own_process(stderr_fd: int | None) -> None:
    """A forked child's start: a process group of its own (killed as one), the default
    signal handlers, ``/dev/null`` as stdin and stdout, and as stderr unless given."""
    os.setpgid(0, 0)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(null if stderr_fd is None else stderr_fd, 2)


def _child(run: proto.RunFile, init: proto.Init, result_fd: int, stderr_fd: int) -> None:
    """Runs in the forked child: one file, then exit. Never returns.

    Before the file runs, this process holds nothing of its worker's: every
    descriptor but its own two channels and the standard streams is closed.
    """
    code = 0
    try:
        _own_process(stderr_fd)
        channel = _private_channel(result_fd)
        os.closerange(3, channel)
        os.closerange(channel + 1, 1 << 20)
        proto.write_all(channel, proto.frame(proto.FRAME_STARTED, proto.Started(os.getpid())))
        if init.memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (init.memory_bytes, init.memory_bytes))
        if init.cpu_seconds:
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
            cap = init.cpu_seconds if hard == resource.RLIM_INFINITY else min(
                init.cpu_seconds, hard)
            resource.setrlimit(resource.RLIMIT_CPU, (cap, hard))
        me = os.getpid()
        began = time.monotonic()

        def stop(verdict: guard.Verdict) -> None:
            """The file (or a copy it forked) reached DataFlow: report that, end here."""
            os._exit(_send(channel, _guarded(verdict), init.max_result_bytes))

        guard.install(stop, run.path)
        result = _run_file(run, init.base)
        if os.getpid() != me:
            os._exit(0)  # a copy forked by the candidate: only the file's process reports
        stopped = guard.verdict()  # set only if stop() could not end the process
        result = _guarded(stopped) if stopped else result
        result = dataclasses.replace(result, elapsed=time.monotonic() - began)
        code = _send(channel, result, init.max_result_bytes)
    except BaseException:  # noqa: BLE001 - report via exit status; the server explains
        code = 70
    os._exit(code)


def _guarded(verdict: guard.Verdict) -> proto.Result:
    chain = tuple(proto.GuardStep(step.file, step.module, step.line) for step in verdict.chain)
    return proto.Result(guarded=proto.Guarded(verdict.status, verdict.detail, chain))


def _send(channel: int, result: proto.Result, limit: int) -> int:
    """Send the file's result (or, over ``limit``, its size); the exit status to end with."""
    body = proto.frame(proto.FRAME_RESULT, result)
    if len(body) - proto.FRAME_HEADER.size > limit:
        body = proto.frame(proto.FRAME_RESULT, proto.Result(oversize=len(body)))
    try:
        proto.write_all(channel, body)
    except OSError:
        return proto.EXIT_NO_CHANNEL
    return 0


# -- the worker: forks and reaps ---------------------------------------------------------------


def _state() -> tuple[Any, ...]:
    """What a file's process inherits from this worker besides its memory: resource
    limits, scheduling, priority, CPU affinity, cwd, umask. A file that changed any of
    them from outside (``prlimit``, ``renice``, ``chrt`` on its worker) would change
    every later file's run, so the worker compares them before each fork. A working
    directory removed from under it counts as changed too."""
    umask = os.umask(0)
    os.umask(umask)
    limits = tuple(resource.getrlimit(getattr(resource, name))
                   for name in sorted(dir(resource)) if name.startswith("RLIMIT_"))
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the project directory was removed (and perhaps made anew) since
        cwd = None
    return (limits, os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0),
            tuple(sorted(os.sched_getaffinity(0))), cwd, umask)


def _start(control: socket.socket, run: proto.RunFile, fds: list[int],
           init: proto.Init) -> tuple[int, int | None]:
    """Fork a child for ``run`` from this clean process; return its pid and pidfd."""
    sys.path[:] = list(init.library_path)  # a library's imports never find project files
    for module in run.preload:
        _import_quietly(module)  # once here, inherited by every later child

    def file_process() -> None:
        sys.path[:] = list(init.sys_path)  # the file's own view: the project first
        _child(run, init, fds[0], fds[1])

    return _fork(control, fds, file_process)


def _fork(control: socket.socket, fds: list[int], body: Callable[[], None]
          ) -> tuple[int, int | None]:
    """Fork a child that runs ``body`` (and never returns); close our copies of ``fds``
    (only the child holds them); the child's pid and pidfd."""
    gc.freeze()  # what the imports added, too
    pid = os.fork()
    if pid == 0:
        control.detach()  # the child closes its descriptor; the object must not close a reuse
        body()
    for fd in fds:
        os.close(fd)
    try:
        return pid, os.pidfd_open(pid)
    except (AttributeError, OSError):
        return pid, None


def _read_ahead(init: proto.Init, listing_fd: int, result_fd: int) -> None:
    """Runs in a forked read-ahead process: the listed files screened and, those that
    declare workflows, read as data, from the last; a ``Reading`` each. Never returns.

    Only this package's code runs here, on the files' bytes: ``screen`` and
    ``declarative`` (imported here alone, so a file's process never has them; they
    import only the standard library, Kailash, ``probe``, ``protocol``, ``report`` and
    ``transfer``). A file it cannot read, or whose screen found an error, is left out:
    the server screens it itself, so no limit of this process becomes a file's verdict.
    """
    code = 0
    try:
        _own_process(None)
        with os.fdopen(listing_fd, "rb") as handle:
            listing = proto.decode(handle.read(), proto.ReadFiles)
        os.closerange(3, result_fd)
        os.closerange(result_fd + 1, 1 << 20)
        proto.write_all(result_fd, proto.frame(proto.FRAME_STARTED, proto.Started(os.getpid())))
        if init.memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (init.memory_bytes, init.memory_bytes))
        gc.disable()  # each file's trees and builders are freed as it ends
        with transfer.quiet_rebuilds:
            for index in range(len(listing.items) - 1, -1, -1):
                reading = _reading(listing, index)
                if reading is not None:
                    proto.write_all(result_fd, proto.frame(proto.FRAME_READING, reading))
    except BaseException:  # noqa: BLE001 - the server screens what was not answered
        code = 70
    os._exit(code)


def _reading(listing: proto.ReadFiles, index: int) -> proto.Reading | None:
    """The read-ahead's answer for one file of ``listing``; None to leave it to the server."""
    from nexus_dataflow_plugin import declarative, screen

    item = listing.items[index]
    try:
        data = paths.read_regular(item.real, listing.screen_max_bytes)
    except OSError:
        return None
    if not 0 < len(data) <= listing.screen_max_bytes:
        return None
    tree = screen.parse(data)
    facts = screen.analyze_tree(data, tree)
    if facts.error is not None:
        return None
    record = None
    if facts.model is None:
        read = declarative.read(tree, item.path, item.module, facts.factories,
                                max_nodes=listing.max_nodes, max_bytes=listing.max_bytes,
                                project_root=listing.project_root)
        record = read.record if read is not None and read.workflows else None
    return proto.Reading(index, hashlib.sha256(data).hexdigest(), screen.facts_to_json(facts),
                         record)


def _status(status: int) -> tuple[int | None, int | None]:
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status), None


def _serve(control: socket.socket, init: proto.Init, clean: tuple[Any, ...]) -> None:
    """Start a child per ``RunFile`` and reap them, until the server closes the channel,
    or until this process is no longer in its ``clean`` state: then it ends, and the
    server gives its files to a fresh worker."""
    runs: dict[int, tuple[int, int | None]] = {}  # pid -> (file id, pidfd)
    try:
        while True:
            watch = [control.fileno()] + [p for _, p in runs.values() if p is not None]
            polling = any(p is None for _, p in runs.values())
            ready, _, _ = select.select(watch, [], [], 0.02 if polling else None)
            if control.fileno() in ready:
                try:
                    data, fds, _, _ = socket.recv_fds(control, proto.MAX_CONTROL_BYTES, 2)
                except OSError:
                    return
                if not data:
                    return
                run = proto.decode(data, proto.RunFile, proto.ReadAhead)
                if len(fds) != 2:
                    for fd in fds:
                        os.close(fd)
                    continue
                if _state() != clean:
                    # Changed from outside: end now, leaving the files already running
                    # alone (they report to the server directly; it sweeps up after).
                    os._exit(0)
                if isinstance(run, proto.ReadAhead):
                    pid, pidfd = _fork(control, fds, functools.partial(_read_ahead, init, *fds))
                else:
                    pid, pidfd = _start(control, run, fds, init)
                runs[pid] = (run.id, pidfd)
            for pid, (file_id, pidfd) in list(runs.items()):
                waited, status = os.waitpid(pid, os.WNOHANG)
                if not waited:
                    continue
                if pidfd is not None:
                    os.close(pidfd)
                del runs[pid]
                code, sig = _status(status)
                control.send(proto.encode(proto.Exited(file_id, code, sig)))
                kill_leftovers(pid, running=set(runs))
    finally:
        for pid in runs:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        kill_leftovers(None, running=set())


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


def _rehearse(base: str) -> None:
    """Build, probe and encode a small workflow of our own once, before any fork.

    Kailash and the encoder initialise lazily on first use; done here, every file's
    process inherits the result instead of paying it again (measured: a file's process
    took 6.1 ms of CPU without this, 3.4 ms with it). No user code runs.
    """
    from kailash.workflow.builder import WorkflowBuilder

    builder = WorkflowBuilder()
    builder.add_node("PythonCodeNode", "first", {"code": "result = {'value': 1}"})
    builder.add_node("PythonCodeNode", "second", {"code": "result = {'value': value}"})
    builder.add_connection("first", "result.value", "second", "value")
    namespace = {"workflow": builder, "__name__": "rehearsal"}
    probed = probe(namespace, os.path.join(base, "rehearsal.py"), ())
    for name, workflow in probed.workflows.items():
        encoded = transfer.encode(workflow, base, {"rehearsal"})
        proto.frame(proto.FRAME_RESULT, proto.Result(workflows=(
            proto.WorkflowData(name, encoded.data, encoded.node_modules, encoded.problems),)))


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[0]))
    _become_subreaper()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.dont_write_bytecode = True  # nothing of a scan is written into the project
    # All of the warm-up that needs no settings, before waiting for them: a worker
    # started early (``early``) is then warm by the time the server knows them.
    _rehearse(os.getcwd())
    gc.collect()
    gc.freeze()  # forked children then share these pages instead of copying them
    data = control.recv(proto.MAX_CONTROL_BYTES)
    if not data:
        return 0
    init = proto.decode(data, proto.Init)
    sys.path[:] = list(init.library_path)
    os.chdir(init.base)
    _lazy_node_library(init.node_modules)
    gc.freeze()
    control.send(proto.encode(proto.Ready(os.getpid())))
    _serve(control, init, _state())
    # No interpreter teardown: nothing is buffered, and freeing Kailash's heap takes
    # tens of milliseconds the server's close() waits for.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
