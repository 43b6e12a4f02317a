"""Stage 2, isolated workers: one scan over a tree of hostile files (hangs, exits,
a segfault, floods of output) next to good ones. Each hostile file gets the
status it deserves, the scan carries on, every good file is still discovered,
and nothing ran in the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import place, runs, scan, warm

from nexus_dataflow_plugin import DiscoveryReport, SmartDiscovery

FIXTURES = Path(__file__).parent / "fixtures" / "engine"
TIMEOUT = 2

LAYOUT = {
    "workflows/hang_at_import.py": "hang_at_import.py",
    "workflows/hang_ignoring_alarm.py": "hang_ignoring_alarm.py",
    "workflows/hang_in_c_code.py": "hang_in_c_code.py",
    "workflows/hang_after_spawning_grandchild.py": "hang_after_spawning_grandchild.py",
    "workflows/hanging_factory.py": "hanging_factory.py",
    "workflows/calls_os_exit.py": "calls_os_exit.py",
    "workflows/calls_sys_exit_zero.py": "calls_sys_exit_zero.py",
    "workflows/raises_system_exit.py": "raises_system_exit.py",
    "workflows/segfaults_via_ctypes.py": "segfaults_via_ctypes.py",
    "workflows/factory_raises_keyboard_interrupt.py": "factory_raises_keyboard_interrupt.py",
    "workflows/prints_massive_noise.py": "prints_massive_noise.py",
    "workflows/reads_stdin_at_import.py": "reads_stdin_at_import.py",
    "workflows/slow_a.py": "slow_import_within_timeout.py",
    "workflows/slow_b.py": "slow_import_within_timeout.py",
    "workflows/reads_config_relative_to_cwd.py": "reads_config_relative_to_cwd.py",
    # Good files before, between and after the hostile ones, in several patterns.
    "aa_good_workflow.py": "good_pipeline.py",
    "workflows/good_pipeline.py": "good_pipeline.py",
    "workflows/zz_good_last.py": "good_pipeline.py",
    "src/workflows/good_in_src.py": "good_pipeline.py",
}

EXPECTED_STATUS = {
    "workflows/hang_at_import.py": "timeout",
    "workflows/hang_ignoring_alarm.py": "timeout",
    "workflows/hang_in_c_code.py": "timeout",
    "workflows/hang_after_spawning_grandchild.py": "timeout",
    "workflows/hanging_factory.py": "timeout",
    "workflows/calls_os_exit.py": "crashed",
    "workflows/segfaults_via_ctypes.py": "crashed",
    "workflows/calls_sys_exit_zero.py": "error",
    "workflows/raises_system_exit.py": "error",
    "workflows/factory_raises_keyboard_interrupt.py": "registered",
    "workflows/prints_massive_noise.py": "registered",
    "workflows/reads_stdin_at_import.py": "registered",
    "workflows/slow_a.py": "registered",
    "workflows/slow_b.py": "registered",
    "workflows/reads_config_relative_to_cwd.py": "registered",
    "aa_good_workflow.py": "registered",
    "workflows/good_pipeline.py": "registered",
    "workflows/zz_good_last.py": "registered",
    "src/workflows/good_in_src.py": "registered",
}


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _workers_of_this_process() -> list[int]:
    """Live child processes of the test process that run the discovery worker."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as handle:
            children = [int(p) for p in handle.read().split()]
    except OSError:
        return []
    workers = []
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"nexus_dataflow_plugin.worker" in cmdline and _alive(pid):
            workers.append(pid)
    return workers


@pytest.fixture(scope="module")
def tree(tree: Path) -> Path:
    """The ``LAYOUT`` (conftest's ``tree``) and the file one fixture reads from its cwd."""
    (tree / "settings.json").write_text('{"region": "eu-west"}')
    return tree


@pytest.fixture(scope="module")
def report(tree: Path) -> DiscoveryReport:
    """One scan of the hostile tree, one worker per core: they share the hangs."""
    return scan(tree, timeout=TIMEOUT, workers=None)


def test_every_file_gets_the_status_it_deserves(report):
    assert {e.path: e.status for e in report.files} == EXPECTED_STATUS


def test_every_good_file_is_still_discovered(report):
    for name in ("aa_good_workflow", "good_pipeline", "zz_good_last", "good_in_src",
                 "prints_massive_noise", "reads_stdin_at_import", "slow_a", "slow_b",
                 "factory_raises_keyboard_interrupt"):
        assert name in report.workflows, sorted(report.workflows)


@pytest.mark.parametrize(
    "rel",
    [
        "workflows/hang_at_import.py",
        "workflows/hang_ignoring_alarm.py",
        "workflows/hang_in_c_code.py",
        "workflows/hang_after_spawning_grandchild.py",
        "workflows/hanging_factory.py",
    ],
)
def test_hangs_time_out_after_the_per_file_timeout(report, rel):
    entry = report.file(rel)
    assert f"{TIMEOUT}s" in entry.reason
    assert 0.5 * TIMEOUT <= entry.duration_s <= TIMEOUT + 3


def test_hang_reason_points_at_the_line_when_it_can(report):
    assert "line 10" in report.file("workflows/hang_at_import.py").reason
    assert "line 14" in report.file("workflows/hanging_factory.py").reason


def test_each_file_has_its_own_timeout(report):
    """Two 0.9 s files next to each other both fit a 2 s timeout."""
    for rel in ("workflows/slow_a.py", "workflows/slow_b.py"):
        entry = report.file(rel)
        assert entry.status == "registered"
        assert entry.duration_s >= 0.8


def test_os_exit_is_crashed_with_the_exit_status(report):
    assert "7" in report.file("workflows/calls_os_exit.py").reason


def test_segfault_is_crashed_naming_the_signal(report):
    assert "SIGSEGV" in report.file("workflows/segfaults_via_ctypes.py").reason


@pytest.mark.parametrize(
    "rel, detail",
    [
        ("workflows/calls_sys_exit_zero.py", "SystemExit"),
        ("workflows/raises_system_exit.py", "configuration missing, bailing out"),
    ],
)
def test_system_exit_is_caught_in_the_worker_as_error(report, rel, detail):
    entry = report.file(rel)
    assert detail in entry.reason
    assert "line" in entry.reason


def test_base_exception_in_a_factory_is_reported_and_the_rest_kept(report):
    entry = report.file("workflows/factory_raises_keyboard_interrupt.py")
    assert entry.workflows == ["factory_raises_keyboard_interrupt"]
    assert "make_interrupted" in entry.reason and "KeyboardInterrupt" in entry.reason


def test_massive_output_neither_blocks_nor_forges_results(report):
    entry = report.file("workflows/prints_massive_noise.py")
    assert entry.workflows == ["prints_massive_noise"]
    assert entry.duration_s < TIMEOUT
    assert "prints_massive_noise.forged" not in report.workflows
    assert not any("forged" in name for name in report.workflows)


def test_stdin_is_empty_not_inherited(report):
    workflow = report.workflows["reads_stdin_at_import"]
    assert workflow.nodes["echo"].config["code"] == "result = {'stdin_bytes': 0}"


def test_worker_cwd_is_the_base_path(report):
    workflow = report.workflows["reads_config_relative_to_cwd"]
    assert workflow.nodes["configured"].config["code"] == "result = {'region': 'eu-west'}"


def test_nothing_ran_in_the_test_process(report, tree):
    for rel in LAYOUT:
        pids = runs(tree / rel)
        assert os.getpid() not in pids, rel
    module_names = {Path(rel).stem for rel in LAYOUT}
    assert module_names.isdisjoint(sys.modules)


def test_each_file_ran_exactly_once(report, tree):
    counts = {rel: len(runs(tree / rel)) for rel in LAYOUT}
    assert counts == {rel: 1 for rel in LAYOUT}


def test_a_killed_files_subprocesses_are_killed_too(report, tree):
    marker = tree / "workflows" / "hang_after_spawning_grandchild.py.grandchild"
    grandchild = int(marker.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_no_worker_outlives_the_scan(report):
    assert _workers_of_this_process() == []


# --- CPU accounting across files ---------------------------------------------------------


def test_a_cpu_heavy_file_does_not_crash_the_next_file(tmp_path):
    place(tmp_path, {"workflows/aa_cpu_heavy.py": "cpu_heavy_import.py"} | {
        f"workflows/good_{i}.py": "good_pipeline.py" for i in range(7)}, FIXTURES)
    # 1.1 s of CPU can take several seconds of wall time on a busy machine: a generous
    # timeout keeps this about CPU accounting, not about timeouts.
    report = scan(tmp_path, timeout=30)
    assert {e.status for e in report.files} == {"registered"}, [
        (e.path, e.status, e.reason) for e in report.files if e.status != "registered"
    ]


# --- slow files ----------------------------------------------------------------------------------


def _tasks(base: Path, files: dict[str, str]) -> list:
    """Copy fixtures into ``base/workflows`` and make the pool's tasks for them, in order."""
    from nexus_dataflow_plugin.isolation import Task
    from nexus_dataflow_plugin.screen import analyze

    (base / "workflows").mkdir()
    tasks = []
    for number, (name, fixture) in enumerate(files.items()):
        path = base / "workflows" / name
        shutil.copyfile(FIXTURES / fixture, path)
        facts = analyze(path.read_bytes())
        tasks.append(Task(number, str(path), path.stem, facts.factories, facts.node_types))
    return tasks


def test_a_slow_file_does_not_hold_up_the_files_queued_behind_it(tmp_path):
    """One worker: the files queued behind a slow one finish while it is still running,
    each file runs once, and the slow one was asked to yield the CPU."""
    from nexus_dataflow_plugin.config import Settings
    from nexus_dataflow_plugin.isolation import Limits, WorkerPool

    files = {"aa_slow.py": "slow_factory_within_timeout.py"}
    files.update({f"good_{i}.py": "good_pipeline.py" for i in range(6)})
    tasks = _tasks(tmp_path, files)
    with WorkerPool(tmp_path, workers=1, limits=Limits.of(Settings(timeout=20))) as pool:
        outcomes = list(pool.run(tasks))
    order = [Path(o.task.path).name for o in outcomes]
    assert order[-1] == "aa_slow.py", order
    assert all(o.result and o.result.workflows for o in outcomes), outcomes
    assert {name: len(runs(tmp_path / "workflows" / name)) for name in files} == dict.fromkeys(
        files, 1
    )
    assert int((tmp_path / "workflows" / "aa_slow.py.nice").read_text()) > 0


def test_hangs_the_screen_cannot_foresee_overlap_instead_of_queueing(tmp_path):
    """Three factories that never return, one worker: all three were running at once,
    so together they cost about one timeout, not three."""
    timeout = 3
    files = {f"hang_{i}.py": "hangs_in_factory_noting_start.py" for i in range(3)}
    files["good.py"] = "good_pipeline.py"
    _tasks(tmp_path, files)
    report = scan(tmp_path, timeout=timeout)
    hangs = [f"workflows/hang_{i}.py" for i in range(3)]
    assert [report.file(rel).status for rel in hangs] == ["timeout"] * 3
    assert report.file("workflows/good.py").status == "registered"
    starts = [float((tmp_path / f"{rel}.started").read_text()) for rel in hangs]
    ends = [start + report.file(rel).duration_s for start, rel in zip(starts, hangs, strict=True)]
    assert max(starts) < min(ends), (starts, ends)


# --- how many workers ----------------------------------------------------------------------------


def test_prestarting_for_a_small_project_starts_one_worker(tmp_path):
    _tasks(tmp_path, {f"good_{i}.py": "good_pipeline.py" for i in range(3)})
    discovery = SmartDiscovery(tmp_path, workers=2, cache=False)
    pool = discovery.prestart()
    try:
        deadline = time.monotonic() + 30
        while not _workers_of_this_process() and time.monotonic() < deadline:
            time.sleep(0.05)  # a process just started may not show its command line yet
        assert len(_workers_of_this_process()) == 1
        discovery.pool = pool
        assert len(discovery.run().workflows) == 3
    finally:
        pool.close()
    assert _workers_of_this_process() == []


def test_a_file_beside_a_slow_one_holds_no_descriptor_of_its_siblings(tmp_path):
    """Forked while the slow file's process still runs, the next file's process holds its
    standard streams and its own result channel: nothing of the worker's or the sibling's
    (no pipe, no pidfd, no third socket)."""
    from nexus_dataflow_plugin.config import Settings
    from nexus_dataflow_plugin.isolation import Limits, WorkerPool

    tasks = _tasks(
        tmp_path,
        {"aa_slow.py": "slow_factory_within_timeout.py",
         "zz_snoop.py": "snoops_inherited_descriptors.py"},
    )
    with WorkerPool(tmp_path, workers=1, limits=Limits.of(Settings(timeout=20))) as pool:
        order = [Path(o.task.path).name for o in pool.run(tasks)]
    assert order == ["zz_snoop.py", "aa_slow.py"]  # it really ran beside the slow one
    seen = (tmp_path / "workflows" / "zz_snoop.py.fds").read_text().split("\n")
    targets = [line.split(" ", 1)[1] for line in seen]
    assert not [t for t in targets if t.startswith("pipe:") or "pidfd" in t], seen
    sockets = [line for line in seen if "socket:" in line]
    assert len(sockets) == 2 and sockets[0].startswith("2 "), seen  # stderr, result channel


def test_nothing_of_a_scan_is_written_into_the_project(tmp_path):
    """No bytecode, no scratch files: the tree after a scan is the tree before it."""
    (tmp_path / "workflows").mkdir()
    (tmp_path / "helpers.py").write_text("STEP = {'code': 'result = {\"v\": 1}'}\n")
    (tmp_path / "workflows" / "uses_helper.py").write_text(
        "from kailash.workflow.builder import WorkflowBuilder\n"
        "from helpers import STEP\n\n"
        "workflow = WorkflowBuilder()\n"
        "workflow.add_node('PythonCodeNode', 'step', STEP)\n"
    )
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    report = scan(tmp_path, timeout=10)
    assert report.file("workflows/uses_helper.py").status == "registered"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# --- read-ahead: the screen and the reading of declarations in a warm worker ---------------

DECLARATIONS = sorted((Path(__file__).parent / "fixtures" / "declarative" / "reads_as_data")
                      .glob("*.py"))
ENGINE = Path(__file__).parent / "fixtures" / "engine"


def _mixed_project(base: Path) -> Path:
    """Every kind of file a screen decides: declarations, model files, files that must
    run, a syntax error, a file importing models, a symlink to a declaration."""
    workflows = base / "workflows"
    workflows.mkdir(parents=True)
    for i in range(12):
        for source in DECLARATIONS:
            shutil.copyfile(source, workflows / f"d{i:02}_{source.name}")
    for i in range(10):
        shutil.copyfile(ENGINE / "models_from_dataflow_import.py", workflows / f"m{i:02}_models.py")
        shutil.copyfile(ENGINE / "good_pipeline.py", workflows / f"g{i:02}_pipeline.py")
    (workflows / "broken.py").write_text("def oops(:\n")
    (workflows / "uses_models.py").write_text("from workflows.m00_models import db\n")
    (workflows / "twin_of_a_declaration.py").symlink_to(workflows / f"d00_{DECLARATIONS[0].name}")
    return base


def _outcome(report: DiscoveryReport) -> tuple:
    files = sorted((f.path, f.status, f.reason, tuple(f.workflows)) for f in report.files)
    shapes = {name: (w.to_dict()["nodes"], w.to_dict()["connections"])
              for name, w in report.workflows.items()}
    return files, shapes


def test_a_read_ahead_in_a_warm_worker_changes_nothing_of_a_cold_scans_report(
        tmp_path, caplog):
    """With a warm pool, part of the screen and of the reading happens in a read-ahead
    process; every file's status, reason and workflows are what the server alone gives."""
    base = _mixed_project(tmp_path / "project")
    alone = SmartDiscovery(base, cache_dir=tmp_path / "alone").run()
    discovery = SmartDiscovery(base, cache_dir=tmp_path / "ahead")
    with discovery.make_pool().start() as pool:
        warm(pool, tmp_path / "warm-up")
        with caplog.at_level("DEBUG", logger="nexus_dataflow_plugin.cache"):
            ahead = SmartDiscovery(base, cache_dir=tmp_path / "ahead", pool=pool).run()
    answered = [m for m in caplog.messages if m.startswith("read-ahead processes answered")]
    assert answered and not answered[0].startswith("read-ahead processes answered 0 ")
    assert _outcome(ahead) == _outcome(alone)
    assert len(ahead.workflows) > 60
    again = SmartDiscovery(base, cache_dir=tmp_path / "ahead").run()  # what it stored
    assert _outcome(again) == _outcome(alone)


def test_a_read_ahead_answers_from_the_last_file_with_the_screens_own_facts(tmp_path):
    """The server screens from the first file; the read-ahead from the last, so neither
    waits for the other. Its facts are the screen's, its records ``declarative.read``'s."""
    from nexus_dataflow_plugin import declarative
    from nexus_dataflow_plugin import protocol as proto
    from nexus_dataflow_plugin.screen import analyze, facts_to_json, parse

    base = _mixed_project(tmp_path / "project")
    files = sorted((base / "workflows").glob("*.py"))
    items = tuple(proto.ReadItem(str(f.resolve()), str(f), f.stem) for f in files)
    discovery = SmartDiscovery(base)
    with discovery.make_pool().start() as pool:
        warm(pool, tmp_path / "warm-up")
        listing = proto.ReadFiles(items, 32 * 1024, 2000, 16 * 1024**2, str(base))
        [(process, share)] = pool.read_ahead(listing)
        assert share == list(range(len(items)))
        deadline = time.monotonic() + 30
        while len(process.answers) < 10 and process.open:
            process.take(-1)  # no such file: takes in what has come
            assert time.monotonic() < deadline, "no answers"
            time.sleep(0.01)
        answered = sorted(process.answers)
        process.close()
    assert answered == list(range(answered[0], len(items))), "not from the last"
    for index in answered[-5:]:
        data = files[index].read_bytes()
        reading = process.answers[index]
        assert reading.facts == json.loads(json.dumps(facts_to_json(analyze(data))))
        facts = analyze(data)
        read = declarative.read(parse(data), items[index].path, files[index].stem,
                                facts.factories, max_nodes=2000, max_bytes=16 * 1024**2,
                                project_root=str(base))
        expected = None if read is None or not read.workflows or facts.model else read.record
        assert (reading.record is None) == (expected is None)


def test_a_read_ahead_process_that_dies_leaves_its_files_to_the_server(tmp_path):
    """Killed mid-way (as an out-of-memory kill would), it simply stops answering: the
    scan screens the rest itself and reports exactly what it reports alone."""
    import signal

    base = _mixed_project(tmp_path / "project")
    alone = SmartDiscovery(base, cache_dir=tmp_path / "alone").run()
    discovery = SmartDiscovery(base, cache_dir=tmp_path / "ahead")
    with discovery.make_pool().start() as pool:
        warm(pool, tmp_path / "warm-up")
        started = pool.read_ahead

        def killed(listing):
            processes = started(listing)
            for process, _ in processes:
                deadline = time.monotonic() + 30
                while process.pid is None and process.open:
                    process.take(-1)
                    assert time.monotonic() < deadline
                os.kill(process.pid, signal.SIGKILL)
            return processes

        pool.read_ahead = killed
        ahead = SmartDiscovery(base, cache_dir=tmp_path / "ahead", pool=pool).run()
    assert _outcome(ahead) == _outcome(alone)


def _forty_declarations_and_a_last(tmp_path: Path) -> tuple[Path, Path]:
    """A project of 40 declarations and ``workflows/zz_last.py``, the one a read-ahead
    reads first: the project and that file."""
    workflows = tmp_path / "project" / "workflows"
    workflows.mkdir(parents=True)
    for i in range(40):
        shutil.copyfile(DECLARATIONS[0], workflows / f"d{i:02}.py")
    target = workflows / "zz_last.py"
    shutil.copyfile(DECLARATIONS[0], target)
    return tmp_path / "project", target


def test_a_declaration_rewritten_after_the_read_ahead_read_it_is_found_out(
        tmp_path, monkeypatch):
    """The read-ahead judged the file's bytes; rewritten before the server uses its
    reading (same size, mtime set back: a model file now), the file is read again and
    found out, as without a read-ahead: its process refuses the new bytes unrun, the
    screen sees the model file they are."""
    from nexus_dataflow_plugin import report as r
    from nexus_dataflow_plugin.cache import ScreenCache

    base, target = _forty_declarations_and_a_last(tmp_path)
    model = "from dataflow import DataFlow\ndb = DataFlow('sqlite:///:memory:')\n"
    model_bytes = model.ljust(len(target.read_text()), "#").encode()
    real_digest = ScreenCache.digest

    def digest_then_rewrite(self, path):
        judged = real_digest(self, path)
        if path.name == "zz_last.py" and path.read_bytes() != model_bytes:
            stat = path.stat()
            path.write_bytes(model_bytes)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return judged

    with SmartDiscovery(base).make_pool().start() as pool:
        warm(pool, tmp_path / "warm-up")
        monkeypatch.setattr(ScreenCache, "digest", digest_then_rewrite)
        report = SmartDiscovery(base, cache=False, pool=pool).run()
    entry = report.file("workflows/zz_last.py")
    assert entry.status == r.SKIPPED_MODEL, entry.reason
    assert all(report.file(f"workflows/d{i:02}.py").status == r.REGISTERED for i in range(40))


def test_a_file_swapped_for_a_fifo_after_the_read_ahead_read_it_is_an_error_as_without_it(
        tmp_path, monkeypatch):
    """The read-ahead read the last file first; a FIFO takes its place before the
    server's turn for it. The server takes no reading of a file whose stat changed: it
    screens the file itself, which cannot be read (as the server alone reports it)."""
    from nexus_dataflow_plugin import report as r
    from nexus_dataflow_plugin.cache import ScreenCache

    base, target = _forty_declarations_and_a_last(tmp_path)
    real_facts = ScreenCache.facts

    def swap_then_ask(self, path):
        if path.name == "zz_last.py" and not target.is_fifo():
            target.unlink()
            os.mkfifo(target)
        return real_facts(self, path)

    with SmartDiscovery(base).make_pool().start() as pool:
        warm(pool, tmp_path / "warm-up")
        monkeypatch.setattr(ScreenCache, "facts", swap_then_ask)
        report = SmartDiscovery(base, cache=False, pool=pool).run()
    entry = report.file("workflows/zz_last.py")
    assert entry.status == r.ERROR and "not a regular file" in entry.reason, entry


def test_a_project_directory_made_anew_under_warm_workers_costs_no_file_its_status(tmp_path):
    """Removed and made again (a fresh checkout) while the pool's workers are warm: their
    working directory is gone, so they hand their first file back and end, and the file
    runs in a fresh worker, as any file whose worker changed from outside. (Its task id
    is the first scan's too: that file's late ``Exited`` was once taken for this one's,
    which then read as "exited with status 0 before reporting".)"""
    from nexus_dataflow_plugin import report as r

    base = tmp_path / "project"
    layout = {"workflows/good.py": "good_pipeline.py"}
    place(base, layout, ENGINE)
    with SmartDiscovery(base).make_pool().start() as pool:
        assert SmartDiscovery(base, cache=False, pool=pool).run().file(
            "workflows/good.py").status == r.REGISTERED
        shutil.rmtree(base)
        place(base, layout, ENGINE)
        report = SmartDiscovery(base, cache=False, pool=pool).run()
    assert report.file("workflows/good.py").status == r.REGISTERED, report.file(
        "workflows/good.py")
