"""Watch mode in a real Nexus app (started non-blocking): what a rescan picks up and how.

Files are saved into a project in tmp_path while the app runs; what the app
serves is read from its registry and the plugin's report. Over HTTP, see
tests/e2e/test_watch_server.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nexus import Nexus

from nexus_dataflow_plugin import DataFlowCompatiblePlugin
from nexus_dataflow_plugin.watch import THREAD_NAME

WAIT_S = 10.0


def workflow_file(value: str, extra: str = "") -> str:
    return (
        f"{extra}from kailash.workflow.builder import WorkflowBuilder\n"
        "workflow = WorkflowBuilder()\n"
        f"workflow.add_node('PythonCodeNode', 'run', {{'code': \"result = {{'v': {value!r}}}\"}})\n"
    )


HANG_AT_IMPORT_SAVE = "while True:\n    pass\n"


def value(app: Nexus, name: str) -> str | None:
    workflow = app._workflows.get(name)
    if workflow is None:
        return None
    return str(workflow.nodes["run"].config["code"])


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (result := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    return result


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = tmp_path / "project"
    (base / "workflows").mkdir(parents=True)
    (base / "helpers").mkdir()
    (base / "helpers" / "__init__.py").write_text("")
    (base / "helpers" / "labels.py").write_text("LABEL = 'one'\n")
    (base / "workflows" / "a.py").write_text(workflow_file("a1"))
    (base / "workflows" / "labelled.py").write_text(
        "from helpers.labels import LABEL\n"
        "from kailash.workflow.builder import WorkflowBuilder\n"
        "workflow = WorkflowBuilder()\n"
        "workflow.add_node('PythonCodeNode', 'run', {'code': 'result = %r' % LABEL})\n"
    )
    monkeypatch.chdir(base)
    monkeypatch.syspath_prepend(str(base))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return base


@pytest.fixture
def started(project: Path) -> Iterator[tuple[Nexus, DataFlowCompatiblePlugin]]:
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    plugin = DataFlowCompatiblePlugin(watch=True, workers=1, timeout=2)
    app.add_plugin(plugin)
    app.start(blocking=False)
    try:
        yield app, plugin
    finally:
        app.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_a_burst_of_saves_is_one_rescan(
    project: Path, started: tuple[Nexus, DataFlowCompatiblePlugin],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = started
    caplog.set_level(logging.INFO, logger="nexus_dataflow_plugin.watch")
    for i in range(10):  # an editor's save: several writes in a few milliseconds
        (project / "workflows" / "a.py").write_text(workflow_file(f"a{i}"))
        (project / "workflows" / "b.py").write_text(workflow_file(f"b{i}"))
    wait_for(lambda: "b9" in (value(app, "b") or ""), "the burst was never picked up")
    time.sleep(0.5)
    rescans = [r for r in caplog.records if r.getMessage().startswith("dataflow_compatible rescan")]
    assert len(rescans) == 1, [r.getMessage() for r in rescans]
    assert "a9" in value(app, "a")


def test_a_saved_helper_module_reloads_the_workflows_that_import_it(
    project: Path, started: tuple[Nexus, DataFlowCompatiblePlugin]
) -> None:
    app, _ = started
    assert "'one'" in value(app, "labelled")
    (project / "helpers" / "labels.py").write_text("LABEL = 'two'\n")
    wait_for(lambda: "'two'" in value(app, "labelled"), "the importer was not rescanned")
    assert "a1" in value(app, "a")  # a file that does not import it was left alone


def test_a_saved_workflow_file_that_another_imports_reloads_the_importer_too(
    project: Path, started: tuple[Nexus, DataFlowCompatiblePlugin]
) -> None:
    """``workflows/common.py`` is a candidate and a helper of ``workflows/use.py``."""
    app, plugin = started
    (project / "workflows" / "__init__.py").write_text("")
    (project / "workflows" / "common.py").write_text("VALUE = 'OLD'\n")
    (project / "workflows" / "use.py").write_text(
        "from workflows.common import VALUE\n"
        "from kailash.workflow.builder import WorkflowBuilder\n"
        "workflow = WorkflowBuilder()\n"
        "workflow.add_node('PythonCodeNode', 'run', {'code': 'result = %r' % VALUE})\n"
    )
    wait_for(lambda: "'OLD'" in (value(app, "use") or ""), "use.py was never registered")
    (project / "workflows" / "common.py").write_text("VALUE = 'NEW'\n")
    wait_for(lambda: "'NEW'" in (value(app, "use") or ""), "use.py kept serving the old value")


def test_a_save_that_hangs_at_import_is_killed_and_the_last_good_version_serves(
    project: Path, started: tuple[Nexus, DataFlowCompatiblePlugin]
) -> None:
    app, plugin = started
    (project / "workflows" / "a.py").write_text(HANG_AT_IMPORT_SAVE)
    entry = wait_for(lambda: plugin.report.file("workflows/a.py").status == "timeout"
                     and plugin.report.file("workflows/a.py"), "the hang was not reported")
    assert entry.workflows == ["a"] and "last good version keeps serving (a)" in entry.reason
    assert "a1" in value(app, "a")
    (project / "workflows" / "a.py").unlink()
    wait_for(lambda: value(app, "a") is None, "a removed broken file kept its workflow")
    # The rescan deregisters first and publishes its report a moment after.
    wait_for(lambda: plugin.report.file("workflows/a.py") is None,
             "the report kept the removed file")


def test_the_watch_setting_from_the_environment_and_use_plugin_stop_with_the_app(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_DATAFLOW_WATCH", "1")
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    app.use_plugin("dataflow_compatible")
    app.start(blocking=False)
    try:
        assert [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]
        (project / "workflows" / "c.py").write_text(workflow_file("c"))
        wait_for(lambda: value(app, "c"), "the added file was not registered")
    finally:
        app.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_without_the_watch_setting_nothing_watches(project: Path) -> None:
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    plugin = DataFlowCompatiblePlugin(workers=1)
    app.add_plugin(plugin)
    app.start(blocking=False)
    try:
        assert plugin.watcher is None and plugin.report_data()["watching"] is False
        assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]
    finally:
        app.stop()


def test_the_switch_alone_with_the_watch_setting_watches_and_stops_with_the_app(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_DATAFLOW_COMPATIBLE", "1")
    monkeypatch.setenv("NEXUS_DATAFLOW_WATCH", "1")
    monkeypatch.setenv("NEXUS_DATAFLOW_WORKERS", "1")
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    app.start(blocking=False)
    try:
        assert "a1" in value(app, "a")
        (project / "workflows" / "a.py").write_text(workflow_file("a2"))
        wait_for(lambda: "a2" in value(app, "a"), "the switch's watch mode did not swap")
    finally:
        app.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_a_shared_name_goes_back_to_the_other_file_when_its_winner_is_removed(
    project: Path, started: tuple[Nexus, DataFlowCompatiblePlugin]
) -> None:
    app, plugin = started
    later = project / "src" / "workflows" / "a.py"  # a later pattern than workflows/*.py
    later.parent.mkdir(parents=True)
    later.write_text(workflow_file("from src"))
    wait_for(lambda: "from src" in value(app, "a")
             and plugin.report.file("workflows/a.py").workflows == [],
             "the later file did not win the name")
    later.unlink()
    wait_for(lambda: "a1" in value(app, "a")
             and plugin.report.file("workflows/a.py").workflows == ["a"],
             "the name did not go back to workflows/a.py")


def test_a_directory_copied_in_at_once_has_its_workflow_files_registered(
    project: Path, started: tuple[Nexus, DataFlowCompatiblePlugin], tmp_path: Path
) -> None:
    import shutil

    app, _ = started
    outside = tmp_path / "elsewhere" / "app" / "workflows"
    outside.mkdir(parents=True)
    for stem in ("copied_one", "copied_two"):
        (outside / f"{stem}.py").write_text(workflow_file(stem))
    shutil.copytree(tmp_path / "elsewhere" / "app", project / "app")  # as cp -r does
    wait_for(lambda: value(app, "copied_one") and value(app, "copied_two"),
             "files that arrived with their directory were missed")


def test_a_save_that_hangs_does_not_hold_up_the_next_save_of_another_file(
    project: Path,
) -> None:
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    plugin = DataFlowCompatiblePlugin(watch=True, workers=1, timeout=8)
    app.add_plugin(plugin)
    app.start(blocking=False)
    try:
        (project / "workflows" / "a.py").write_text(HANG_AT_IMPORT_SAVE)
        time.sleep(0.5)  # its rescan is under way, hanging in a worker
        (project / "workflows" / "c.py").write_text(workflow_file("c"))
        wait_for(lambda: value(app, "c"), "the second save was never served")
        # served while the hanging file's rescan still runs: its entry is the old one
        assert plugin.report.file("workflows/a.py").status == "registered"
        entry = wait_for(lambda: plugin.report.file("workflows/a.py").status == "timeout"
                         and plugin.report.file("workflows/a.py"), "the hang was not reported")
        assert entry.workflows == ["a"] and value(app, "c")
    finally:
        app.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]
