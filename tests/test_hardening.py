"""Hardening (issue 4), the items the bad-input matrix does not cover on its own.

- the CPU limit stops a busy file and the scan goes on;
- a second scan in the same process is independent of the first, and two
  concurrent scans share no workers or state;
- discovery leaves the calling process as it found it (sys.modules, sys.path,
  cwd, environment, signal handlers, umask, Kailash's node registry);
- SIGTERM / SIGINT to a process in the middle of a scan leaves no worker,
  child or grandchild running;
- the static screen never raises, whatever bytes it is given (hypothesis).

Fixtures and process helpers are ``hostile.py``'s, shared with ``test_containment.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import scan
from hostile import (
    HOSTILE,
    MARKER_ENV,
    Proc,
    describe_pids,
    kill_survivors,
    make_tree,
    recorded,
    survivors,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_dataflow_plugin import SmartDiscovery
from nexus_dataflow_plugin import report as r
from nexus_dataflow_plugin.screen import Facts, analyze

GOOD = "good/good_orders.py"


def _importers(marks: Path) -> dict[str, list[int]]:
    """Fixture file name -> the pids that imported it, from the markers."""
    seen: dict[str, list[int]] = {}
    for proc in recorded(marks):
        if proc.role == "importer":
            seen.setdefault(proc.fixture, []).append(proc.pid)
    return seen


def _worker_pids(marks: Path, fixtures: set[str]) -> set[int]:
    """The workers that forked the importers of ``fixtures`` (an importer's parent)."""
    pids = set()
    for path in marks.iterdir():
        for line in path.read_text().splitlines():
            fixture, role, ppid, _start = line.split()
            if role == "importer" and fixture in fixtures:
                pids.add(int(ppid))
    return pids


# --- resource limits ----------------------------------------------------------------------------


def test_cpu_limit_is_reported_and_the_scan_goes_on(tmp_path: Path, monkeypatch) -> None:
    tree, marks = make_tree(
        tmp_path, {"workflows/busy_loop_cpu.py": "busy_loop_cpu.py", "workflows/good.py": GOOD}
    )
    monkeypatch.setenv(MARKER_ENV, str(marks))
    # The timeout is far away: only the 1 s CPU limit can stop the loop this early.
    report = scan(tree, timeout=30, cpu_limit_s=1)
    busy = report.file("workflows/busy_loop_cpu.py")
    assert busy is not None
    assert busy.status in (r.CRASHED, r.ERROR), busy.reason
    assert "CPU" in busy.reason
    assert busy.duration_s < 15, f"stopped after {busy.duration_s:.1f}s, not by the CPU limit"
    assert set(report.workflows) == {"good"}


# --- independence -------------------------------------------------------------------------------


def _mixed_tree(root: Path, prefix: str, hang: bool = True) -> tuple[Path, Path]:
    files = {f"workflows/{prefix}_good_{n}.py": GOOD for n in range(1, 4)}
    files[f"workflows/{prefix}_factory.py"] = "good/good_factory.py"
    files[f"workflows/{prefix}_os_exit.py"] = "calls_os_exit.py"
    if hang:
        files[f"workflows/{prefix}_sleeping_factory.py"] = "sleeping_factory.py"
    return make_tree(root, files)


def _expected(prefix: str) -> set[str]:
    return {f"{prefix}_good_{n}" for n in range(1, 4)} | {f"{prefix}_factory.build_invoices"}


def test_a_second_scan_is_independent_of_the_first(tmp_path: Path, monkeypatch) -> None:
    # The first scan ends with a file killed at its timeout and a crashed child; the
    # second (same process, same cache directory, another project) must not notice.
    tree_a, marks_a = _mixed_tree(tmp_path / "a", "a")
    tree_b, marks_b = _mixed_tree(tmp_path / "b", "b", hang=False)
    monkeypatch.setenv(MARKER_ENV, str(marks_a))
    first = SmartDiscovery(tree_a, timeout=1.5, workers=2, cache_dir=tmp_path / "cache").run()
    monkeypatch.setenv(MARKER_ENV, str(marks_b))
    second = SmartDiscovery(tree_b, timeout=1.5, workers=2, cache_dir=tmp_path / "cache").run()

    assert set(first.workflows) == _expected("a")
    assert first.file("workflows/a_sleeping_factory.py").status == r.TIMEOUT
    assert first.file("workflows/a_os_exit.py").status == r.CRASHED
    assert set(second.workflows) == _expected("b")
    assert [e.path for e in second.files] == [
        f"workflows/b_{name}.py" for name in ("factory", "good_1", "good_2", "good_3", "os_exit")
    ]
    assert second.file("workflows/b_os_exit.py").status == r.CRASHED
    # Fresh workers: none of the first scan's is reused, and none is left.
    workers_a = _worker_pids(marks_a, set(_importers(marks_a)))
    workers_b = _worker_pids(marks_b, set(_importers(marks_b)))
    assert workers_a and workers_b and not workers_a & workers_b
    for marks in (marks_a, marks_b):
        alive, others = survivors(marks)
        assert not alive and not others


def test_concurrent_scans_share_no_workers_or_state(tmp_path: Path, monkeypatch) -> None:
    tree_a, marks = _mixed_tree(tmp_path / "a", "a")
    tree_b, _ = _mixed_tree(tmp_path / "b", "b")
    monkeypatch.setenv(MARKER_ENV, str(marks))  # one marker directory, told apart by prefix
    reports: dict[str, r.DiscoveryReport] = {}
    errors: list[BaseException] = []

    def scan(name: str, tree: Path) -> None:
        try:
            # Same cache directory on purpose: concurrent writers must not corrupt it.
            reports[name] = SmartDiscovery(
                tree, timeout=1.5, workers=2, cache_dir=tmp_path / "cache"
            ).run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=scan, args=(name, tree))
        for name, tree in (("a", tree_a), ("b", tree_b))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert set(reports) == {"a", "b"}

    for prefix in ("a", "b"):
        report = reports[prefix]
        assert set(report.workflows) == _expected(prefix)
        assert all(e.path.split("/")[-1].startswith(f"{prefix}_") for e in report.files)
        assert report.file(f"workflows/{prefix}_sleeping_factory.py").status == r.TIMEOUT
    importers = _importers(marks)
    assert all(len(pids) == 1 for pids in importers.values()), importers
    workers_a = _worker_pids(marks, {f for f in importers if f.startswith("a_")})
    workers_b = _worker_pids(marks, {f for f in importers if f.startswith("b_")})
    assert workers_a and workers_b and not workers_a & workers_b
    alive, others = survivors(marks)
    assert not alive and not others


# --- the calling process is left as it was ------------------------------------------------------


def _umask() -> str:
    with open("/proc/self/status") as handle:
        return next(line for line in handle if line.startswith("Umask:")).split()[1]


def _state() -> dict[str, object]:
    from kailash.nodes.base import NodeRegistry

    catchable = sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP})
    return {
        "sys.modules": set(sys.modules),
        "sys.path": list(sys.path),
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "signals": {sig: signal.getsignal(sig) for sig in catchable},
        "umask": _umask(),
        "nodes": dict(NodeRegistry._nodes),
    }


def test_discovery_leaves_the_calling_process_unchanged(tmp_path: Path, monkeypatch) -> None:
    from kailash.nodes.base import NodeRegistry

    files = {
        "workflows/mutates_process_state.py": "mutates_process_state.py",
        "workflows/calls_sys_exit_zero.py": "calls_sys_exit_zero.py",
        "workflows/good_library_nodes.py": "good/good_library_nodes.py",
        "workflows/good_factory.py": "good/good_factory.py",
        "workflows/good_orders.py": GOOD,
    }
    tree, marks = make_tree(tmp_path, files)
    monkeypatch.setenv(MARKER_ENV, str(marks))
    nodes_cold = dict(NodeRegistry._nodes)
    # Warm-up: our own modules (and the node libraries workflows are rebuilt with) are
    # imported lazily on the first scan; that is not the scan changing the process.
    SmartDiscovery(tree, timeout=5, cache=False).run()
    before = _state()
    report = SmartDiscovery(tree, timeout=5, cache=False).run()
    after = _state()

    assert report.file("workflows/mutates_process_state.py").status == r.REGISTERED
    assert [p for p in recorded(marks) if p.fixture == "mutates_process_state.py"]
    for key, value in before.items():
        if key == "sys.modules":
            assert after[key] == value, f"sys.modules gained {sorted(after[key] - value)}"
        else:
            assert after[key] == value, f"{key} changed"
    assert "ndp_injected_module" not in sys.modules
    assert "NDP_INJECTED_BY_CANDIDATE" not in os.environ
    # Even the warm-up registered no node class from the project, only library ones.
    added = set(NodeRegistry._nodes) - set(nodes_cold)
    assert "InjectedByCandidateNode" not in NodeRegistry._nodes
    for name in added:
        origin = sys.modules[NodeRegistry._nodes[name].__module__].__file__ or ""
        assert not Path(origin).resolve().is_relative_to(tree.resolve()), name


# --- stopping mid-scan ---------------------------------------------------------------------------

DRIVER = """
import sys
from nexus_dataflow_plugin import SmartDiscovery

print("scanning", flush=True)
SmartDiscovery(sys.argv[1], timeout=120, workers=1, cache=False).run()
print("finished", flush=True)
"""
# How long the scan's processes may take to go once the process running it has ended.
STOP_GRACE_S = 3.0

# One worker, five files. The four hangs (which ignore every signal) loop at import, so
# each starts at once in a child of its own; the signal comes once hang_1 is running and
# the leader has left something running: a forked child in its process group, or a
# service in a session of its own.
LEADERS = {
    "forked-child": ("forks_a_child_then_hangs.py", "forked-child"),
    "service": ("spawns_subprocess_new_session.py", "subprocess-child"),
}
# SIGTERM kills the driver outright (the workers must notice on their own); SIGINT
# raises KeyboardInterrupt in it (discovery's own clean-up runs). SIGTERM with a forked
# child is left out to save a driver: SIGTERM-service kills a process group too.
STOP_CASES = {
    "SIGTERM-service": (signal.SIGTERM, "service"),
    "SIGINT-forked-child": (signal.SIGINT, "forked-child"),
    "SIGINT-service": (signal.SIGINT, "service"),
}


@dataclass
class _Stop:
    """One scan run by a driver process, stopped by a signal mid-scan."""

    sig: signal.Signals
    fixture: str
    child_role: str
    marks: Path
    process: subprocess.Popen[bytes]
    signalled: bool = False
    alive: list[Proc] = field(default_factory=list)
    others: list[int] = field(default_factory=list)
    detail: str = ""

    def ready(self) -> bool:
        roles = {(p.fixture, p.role) for p in recorded(self.marks)}
        return {(self.fixture, self.child_role), ("hang_1.py", "importer")} <= roles


@pytest.fixture(scope="module")
def stopped_scans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, _Stop]]:
    """Start every case's driver at once, signal each mid-scan, then look for survivors.

    Run side by side so the cases cost one driver's start-up, not four.
    """
    stops: dict[str, _Stop] = {}
    try:
        for case, (sig, leader) in STOP_CASES.items():
            root = tmp_path_factory.mktemp(f"stop-{case}")
            fixture, child_role = LEADERS[leader]
            files = {f"workflows/{fixture}": fixture}
            for n in range(1, 5):
                files[f"app/workflows/hang_{n}.py"] = "tampers_signal_handlers.py"
            tree, marks = make_tree(root, files)
            driver = root / "driver.py"
            driver.write_text(textwrap.dedent(DRIVER))
            with open(root / "driver.err", "wb") as err:
                process = subprocess.Popen(
                    [sys.executable, str(driver), str(tree)],
                    env=dict(os.environ, **{MARKER_ENV: str(marks)}),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            stops[case] = _Stop(sig, fixture, child_role, marks, process)
        deadline = time.monotonic() + 90
        while not all(stop.signalled for stop in stops.values()):
            if time.monotonic() > deadline:
                pytest.fail("timed out waiting for the scans to reach hang_1.py")
            for stop in stops.values():
                if not stop.signalled and stop.ready():
                    stop.process.send_signal(stop.sig)
                    stop.signalled = True
            time.sleep(0.05)
        for stop in stops.values():
            stop.process.wait(timeout=30)
        for stop in stops.values():
            stop.alive, stop.others = survivors(stop.marks, within=STOP_GRACE_S)
            stop.detail = describe_pids([p.pid for p in stop.alive] + stop.others)
        yield stops
    finally:
        for stop in stops.values():
            if stop.process.poll() is None:
                stop.process.kill()
                stop.process.wait()
            kill_survivors(stop.marks)


@pytest.mark.parametrize(
    "case",
    STOP_CASES,
)
def test_stopping_mid_scan_leaves_no_process(stopped_scans: dict[str, _Stop], case: str) -> None:
    stop = stopped_scans[case]
    assert stop.process.returncode != 0, "the driver finished instead of being stopped"
    assert not stop.alive and not stop.others, (
        f"{STOP_GRACE_S:g}s after the scan's process ended: "
        + ", ".join(f"{p.pid} ({p.fixture}, {p.role})" for p in stop.alive)
        + (f"; workers or others: {stop.others}" if stop.others else "")
        + "\n"
        + stop.detail
    )


# --- the static screen never raises --------------------------------------------------------------


def _sources() -> list[bytes]:
    paths = sorted(HOSTILE.glob("*.py")) + sorted((HOSTILE / "good").glob("*.py"))
    package = Path(__file__).resolve().parent.parent / "nexus_dataflow_plugin"
    paths += [package / "screen.py", package / "imports.py", package / "probe.py"]
    return [p.read_bytes() for p in paths]


SOURCES = _sources()
# Bytes that matter to a tokenizer: brackets, quotes, escapes, indentation, encodings.
INTERESTING = list(b"()[]{}:;'\"\\\n\r\t #@=.,*-+%<>!~^|&0_aZ") + [0, 0x80, 0xC3, 0xE9, 0xFF]


@st.composite
def mutated_sources(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SOURCES)))
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(("insert", "delete", "replace", "duplicate")))
        at = draw(st.integers(0, len(data)))
        byte = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)))
        if op == "insert":
            data[at:at] = bytes([byte])
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 40))]
        elif op == "replace" and at < len(data):
            data[at] = byte
        elif op == "duplicate" and data:
            chunk = data[at : at + draw(st.integers(1, 200))]
            data[at:at] = chunk
    return bytes(data)


def _never_raises(data: bytes) -> None:
    facts = analyze(data)
    assert isinstance(facts, Facts)
    assert facts.error is None or isinstance(facts.error, str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_screen_never_raises_on_random_bytes(data: bytes) -> None:
    _never_raises(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(min_codepoint=9, max_codepoint=0x2FFF), max_size=2048))
def test_screen_never_raises_on_random_text(text: str) -> None:
    _never_raises(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_sources())
def test_screen_never_raises_on_mutated_python_sources(data: bytes) -> None:
    _never_raises(data)


@pytest.mark.parametrize(
    "data",
    [
        b"(" * 200_000,
        b"[" * 100 + b"]" * 100,
        b"x = " + b"-" * 200_000 + b"1",
        b"".join(b" " * i + b"if 1:\n" for i in range(200)) + b" " * 200 + b"pass\n",
        b"\xef\xbb\xbfimport os\n",
        b"# -*- coding: latin-1 -*-\nx = '\xe9'\n",
        b"# -*- coding: no-such-codec -*-\n",
        b"# coding: utf-16\nx = 1\n",
        b"\\\n" * 10,
        b"f'{" * 300,
        b"def f():\n\treturn 1\n        return 2\n",
        b"",
    ],
    ids=lambda d: repr(d[:20]),
)
def test_screen_never_raises_on_known_parser_stressors(data: bytes) -> None:
    _never_raises(data)


def test_screen_verdict_does_not_depend_on_the_callers_warning_filters() -> None:
    source = b'import re\n\nDIGITS = re.compile("\\d+")\n\ndef build():\n    return 1\n'
    assert analyze(source).error is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        facts = analyze(source)
    assert facts.error is None, facts.error
