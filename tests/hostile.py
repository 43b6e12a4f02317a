"""The hostile fixtures as one attack matrix, and the processes they record.

Each fixture in ``tests/fixtures/hostile/`` is named after what it does. ``MATRIX``
says, per file of the matrix project, what the scan must report; ``build_matrix``
lays that project out (every fixture of ``HOSTILE_IN_MATRIX`` next to well-behaved
workflows from ``good/``, plus symlinks out of the project, a symlink loop, a huge
file and two files deleted during the scan) and ``scan_matrix`` scans it once with
``TIMEOUT_S``, ``WORKERS`` and ``MEMORY_LIMIT_MB``. Fixtures record every process
they create in ``$NDP_HOSTILE_PIDS`` (see ``tests/fixtures/hostile/README.md``);
``recorded``, ``survivors`` and ``kill_survivors`` read that back.

Not a test module: ``tests/test_containment.py`` and ``tests/test_hardening.py``
test with it, and ``benchmarks/containment_table.py`` prints the matrix's results
for docs/containment.md from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import place

from nexus_dataflow_plugin import SmartDiscovery
from nexus_dataflow_plugin import discovery as discovery_module
from nexus_dataflow_plugin import report as r

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
MARKER_ENV = "NDP_HOSTILE_PIDS"

TIMEOUT_S = 3.0
WORKERS = 2
MEMORY_LIMIT_MB = 512
# How long processes of a finished scan may take to disappear (SIGKILL delivery and
# reaping by whoever inherits them); generous because the machine is shared.
REAP_GRACE_S = 5.0


@dataclass(frozen=True)
class Case:
    """One row of the matrix: a file in the tree and what the scan must say about it."""

    behaviour: str
    path: str
    statuses: tuple[str, ...]
    phrases: tuple[str, ...] = ()
    workflows: tuple[str, ...] = ()


MATRIX: tuple[Case, ...] = (
    Case("infinite loop at import", "workflows/hang_at_import.py", (r.TIMEOUT,),
         ("of its 3s limit", "still running (line")),
    Case("sleeping factory", "workflows/sleeping_factory.py", (r.TIMEOUT,),
         ("of its 3s limit", "still running (line")),
    Case("os._exit(3) at import", "workflows/calls_os_exit.py", (r.CRASHED,),
         ("exited with status 3",)),
    Case("sys.exit(0) at import", "workflows/calls_sys_exit_zero.py", (r.ERROR,),
         ("SystemExit",)),
    Case("segfault via ctypes", "workflows/segfault_via_ctypes.py", (r.CRASHED,),
         ("SIGSEGV",)),
    Case("20 MB of stdout, then forged JSON", "workflows/floods_stdout_then_forges_json.py",
         (r.NO_WORKFLOWS,), ("no module-level Workflow",)),
    Case("input() at import", "workflows/calls_input.py", (r.ERROR,), ("EOFError",)),
    Case("syntax error", "workflows/syntax_error.py", (r.ERROR,), ("never closed", "line 6")),
    Case("Latin-1 bytes, no coding cookie", "workflows/latin1_bytes.py", (r.ERROR,),
         ("decode", "line 3")),
    Case("NUL bytes", "workflows/nul_bytes.py", (r.ERROR,), ("NUL byte", "line 4")),
    Case("missing dependency", "workflows/missing_dependency.py", (r.ERROR,),
         ("ModuleNotFoundError", "nexus_dataflow_plugin_test_missing_dependency")),
    Case("3 GiB allocation (memory_limit_mb=512)", "workflows/allocates_gigabytes.py",
         (r.ERROR, r.CRASHED), ("memory",)),
    Case("os.fork() with a sleeping child", "workflows/forks_sleeping_child.py",
         (r.REGISTERED,), workflows=("forks_sleeping_child",)),
    Case("daemonizes (double fork, setsid)", "workflows/daemonizes_double_fork.py",
         (r.REGISTERED,), workflows=("daemonizes_double_fork",)),
    Case("thread that never ends", "workflows/thread_never_ends.py", (r.REGISTERED,),
         workflows=("thread_never_ends",)),
    Case("ignores every signal, cancels timers, hangs", "workflows/tampers_signal_handlers.py",
         (r.TIMEOUT,), ("Did not finish within 3s",)),
    Case("closes inherited fds, reopens them", "workflows/closes_inherited_fds.py",
         (r.REGISTERED,), workflows=("closes_inherited_fds",)),
    Case("symlink to a file outside the base path", "workflows/links_outside_base.py",
         (r.ERROR,), ("outside the project", "refused")),
    Case("symlinked directory outside the base path", "src/workflows/outside_dir_workflow.py",
         (r.ERROR,), ("outside the project", "refused")),
    Case("symlink loop", "workflows/symlink_loop_a.py", (r.ERROR,), ("looping symlink",)),
    Case("symlink loop (other end)", "workflows/symlink_loop_b.py", (r.ERROR,),
         ("looping symlink",)),
    Case("huge file (1 GiB, sparse)", "workflows/huge_file.py", (r.ERROR,),
         ("refused unread", "max_file_bytes")),
    Case("removed after finding, before screening", "workflows/removed_before_screen.py",
         (r.ERROR,), ("Cannot be read", "No such file")),
    Case("removed after screening, before import", "workflows/removed_before_import.py",
         (r.ERROR,), ("FileNotFoundError",)),
    Case("file matching two patterns", "workflow_billing_workflow.py", (r.REGISTERED,),
         workflows=("workflow_billing_workflow",)),
    Case("symlink inside the base path", "workflows/link_inside_base.py", (r.REGISTERED,),
         workflows=("link_inside_base",)),
    Case("good: module-level builder", "workflows/good_orders.py", (r.REGISTERED,),
         workflows=("good_orders",)),
    Case("good: factory", "workflows/good_factory.py", (r.REGISTERED,),
         workflows=("good_factory.build_invoices",)),
    Case("good: library nodes", "workflows/good_library_nodes.py", (r.REGISTERED,),
         workflows=("good_library_nodes",)),
    Case("good: built Workflow", "workflows/good_built_workflow.py", (r.REGISTERED,),
         workflows=("good_built_workflow.ping_pipeline",)),
)
HOSTILE_IN_MATRIX = (
    "hang_at_import", "sleeping_factory", "calls_os_exit", "calls_sys_exit_zero",
    "segfault_via_ctypes", "floods_stdout_then_forges_json", "calls_input", "syntax_error",
    "latin1_bytes", "nul_bytes", "missing_dependency", "allocates_gigabytes",
    "forks_sleeping_child", "daemonizes_double_fork",
    "thread_never_ends", "tampers_signal_handlers", "closes_inherited_fds",
)


# --- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A process a fixture recorded: its pid plus its start time, so a reused pid is no match."""

    pid: int
    start: str
    fixture: str
    role: str


def recorded(directory: Path) -> list[Proc]:
    """Every process the fixtures recorded under ``directory`` (one file per pid)."""
    procs = []
    for path in directory.iterdir():
        for line in path.read_text().splitlines():
            fixture, role, _ppid, start = line.split()
            procs.append(Proc(int(path.name), start, fixture, role))
    return procs


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a pid, or None when no such process exists (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], fields[19]


def is_alive(proc: Proc) -> bool:
    """True while the recorded process exists, zombies included: only a reaped one is gone."""
    stat = _stat(proc.pid)
    return stat is not None and stat[1] == proc.start


def tagged(tag: str) -> list[int]:
    """Pids of processes whose environment carries ``tag`` (workers inherit it), not ours."""
    needle = tag.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def describe_pids(pids: list[int]) -> str:
    if not pids:
        return ""
    out = subprocess.run(
        ["ps", "-o", "pid,ppid,pgid,sid,stat,cmd", "-p", ",".join(map(str, pids))],
        capture_output=True, text=True, check=False,
    )
    return out.stdout


def survivors(marks: Path, within: float = REAP_GRACE_S) -> tuple[list[Proc], list[int]]:
    """Recorded processes and tagged processes still present after up to ``within`` seconds."""
    tag = f"{MARKER_ENV}={marks}"
    deadline = time.monotonic() + within
    while True:
        alive = [p for p in recorded(marks) if is_alive(p)]
        others = [pid for pid in tagged(tag) if pid not in {p.pid for p in alive}]
        if (not alive and not others) or time.monotonic() > deadline:
            return alive, others
        time.sleep(0.1)


def kill_survivors(marks: Path) -> None:
    """Clean up after a failed leak check, so one bug does not leak into other tests."""
    import signal

    for proc in recorded(marks):
        if is_alive(proc):
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in tagged(f"{MARKER_ENV}={marks}"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- the tree ---------------------------------------------------------------------------------


@dataclass
class Matrix:
    root: Path
    tree: Path
    marks: Path
    report: r.DiscoveryReport | None = None
    wall_s: float = 0.0
    removed: list[str] = field(default_factory=list)


def build_matrix(root: Path) -> Matrix:
    """Lay out the matrix project under ``root/tree`` (and what it must not reach, beside it)."""
    tree = root / "tree"
    workflows = tree / "workflows"
    workflows.mkdir(parents=True)
    marks = root / "marks"
    marks.mkdir()
    for stem in HOSTILE_IN_MATRIX:
        shutil.copyfile(HOSTILE / f"{stem}.py", workflows / f"{stem}.py")
    for good in (HOSTILE / "good").glob("good_*.py"):
        shutil.copyfile(good, workflows / good.name)
    # Matches both `workflow_*.py` and `*_workflow.py`: one candidate, imported once.
    shutil.copyfile(HOSTILE / "good" / "good_orders.py", tree / "workflow_billing_workflow.py")
    # Symlinks: inside the project (followed), out of it (refused), and a loop.
    (tree / "lib").mkdir()
    shutil.copyfile(HOSTILE / "good" / "good_orders.py", tree / "lib" / "real_inside.py")
    (workflows / "link_inside_base.py").symlink_to("../lib/real_inside.py")
    outside = root / "outside"
    (outside / "dir").mkdir(parents=True)
    good = HOSTILE / "good" / "good_orders.py"
    shutil.copyfile(good, outside / "outside_file_workflow.py")
    shutil.copyfile(good, outside / "dir" / "outside_dir_workflow.py")
    (workflows / "links_outside_base.py").symlink_to(outside / "outside_file_workflow.py")
    (tree / "src").mkdir()
    (tree / "src" / "workflows").symlink_to(outside / "dir", target_is_directory=True)
    (workflows / "symlink_loop_a.py").symlink_to("symlink_loop_b.py")
    (workflows / "symlink_loop_b.py").symlink_to("symlink_loop_a.py")
    # Over the default 5 MB cap; sparse, so it costs nothing unless someone reads it.
    with open(workflows / "huge_file.py", "wb") as handle:
        handle.truncate(1024**3)
    # Present when the scan starts, deleted by the hooks in scan_matrix().
    shutil.copyfile(HOSTILE / "good" / "good_orders.py", workflows / "removed_before_screen.py")
    shutil.copyfile(HOSTILE / "good" / "good_orders.py", workflows / "removed_before_import.py")
    return Matrix(root=root, tree=tree, marks=marks)


def scan_matrix(matrix: Matrix) -> Matrix:
    """Scan the tree once, deleting two files at the two moments that matter.

    The finder has listed ``removed_before_screen.py`` when it disappears; the screen
    has read ``removed_before_import.py`` when it disappears. The hooks only wrap the
    engine's own stages to place the deletion deterministically, for this scan only.
    """
    workflows = matrix.tree / "workflows"
    find = discovery_module.find_candidates
    screen = SmartDiscovery._screen

    def find_then_remove(*args, **kwargs):
        found = find(*args, **kwargs)
        (workflows / "removed_before_screen.py").unlink()
        matrix.removed.append("removed_before_screen.py")
        return found

    def screen_then_remove(self, *args, **kwargs):
        tasks = list(screen(self, *args, **kwargs))  # the whole screen, then the deletion
        (workflows / "removed_before_import.py").unlink()
        matrix.removed.append("removed_before_import.py")
        yield from tasks

    discovery = SmartDiscovery(
        matrix.tree,
        timeout=TIMEOUT_S,
        workers=WORKERS,
        memory_limit_mb=MEMORY_LIMIT_MB,
        cache_dir=matrix.root / "cache",
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(discovery_module, "find_candidates", find_then_remove)
        monkeypatch.setattr(SmartDiscovery, "_screen", screen_then_remove)
        monkeypatch.setenv(MARKER_ENV, str(matrix.marks))
        began = time.monotonic()
        matrix.report = discovery.run()
        matrix.wall_s = time.monotonic() - began
    return matrix


def make_tree(root: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A project under ``root/tree`` from fixtures (destination -> fixture), and a marks dir."""
    tree, marks = root / "tree", root / "marks"
    marks.mkdir(parents=True)
    return place(tree, files, HOSTILE), marks
