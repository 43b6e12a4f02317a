"""Frozen discovery: ``nexus-dataflow freeze`` and a real Nexus starting from its manifest.

The project is copied from tests/fixtures/engine: every file that can run writes
``<file>.ran`` when executed (the canaries). The manifest is made by a real scan
(isolated workers); the markers it left are removed; then a real Nexus with
``auto_discovery=True`` starts (``start(blocking=False)``) with the plugin's
``manifest`` setting. Worker processes carry the environment variable
``NDP_MANIFEST_MARK`` they inherit from this process, which /proc shows while
the server starts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from manifest_project import ENGINE, MANIFEST, NAMES, SCANNED, STEPS, make_project, ran
from nexus import Nexus
from procs import processes_seen_with_env

from nexus_dataflow_plugin import DataFlowCompatiblePlugin
from nexus_dataflow_plugin import manifest as m
from nexus_dataflow_plugin.config import OPTIONS, load_settings

CLI = str(Path(sys.executable).with_name("nexus-dataflow"))
MARK = "NDP_MANIFEST_MARK"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with a manifest made by a real scan; no canary has fired since."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "freeze-cache"))
    root = make_project(tmp_path / "project")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "start-cache"))
    monkeypatch.setenv(MARK, uuid.uuid4().hex)
    monkeypatch.chdir(root)  # Nexus discovers from the working directory
    return root


def workers_seen() -> AbstractContextManager[set[int]]:
    """Pids of worker processes (they carry this test's mark) while the block runs."""
    return processes_seen_with_env(MARK, os.environ[MARK])


def start(**options: Any) -> tuple[Nexus, DataFlowCompatiblePlugin, set[int]]:
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    plugin = DataFlowCompatiblePlugin(manifest=MANIFEST, workers=1, **options)
    with workers_seen() as seen:
        app.add_plugin(plugin)
        try:
            app.start(blocking=False)
        except BaseException:
            app.stop()
            raise
    return app, plugin, seen


@pytest.fixture
def started() -> Iterator[list[Nexus]]:
    """Apps a test started, stopped afterwards."""
    apps: list[Nexus] = []
    yield apps
    for app in apps:
        app.stop()


def test_a_matching_manifest_starts_without_workers_or_running_any_project_file(
    project: Path, started: list[Nexus]
) -> None:
    app, plugin, seen = start()
    started.append(app)
    assert NAMES <= set(app._workflows)
    assert "models.User" not in app._workflows
    assert ran(project) == []
    assert not seen, "a worker process was started"
    assert not (project.parent / "start-cache").exists(), "a project file was screened (parsed)"
    assert plugin.report is not None
    statuses = {e.path: e.status for e in plugin.report.files}
    assert statuses["workflows/models.py"] == "skipped_model"
    assert statuses["workflows/good_pipeline.py"] == "registered"
    result, _ = app.runtime.execute(app._workflows["runnable_pipeline"])
    assert result["total"]["result"] == {"sum": 12, "count": 3}


def test_a_changed_file_alone_is_scanned_and_named_in_one_log_line(
    project: Path, started: list[Nexus], caplog: pytest.LogCaptureFixture
) -> None:
    path = project / "workflows/good_pipeline.py"
    path.write_text(path.read_text().replace("42", "43"))
    with caplog.at_level(logging.WARNING, logger="nexus_dataflow_plugin.manifest"):
        app, _, seen = start()
    started.append(app)
    assert ran(project) == ["workflows/good_pipeline.py"]
    assert seen, "the changed file was scanned in a worker"
    lines = [r.getMessage() for r in caplog.records if r.name == "nexus_dataflow_plugin.manifest"]
    assert len(lines) == 1 and "workflows/good_pipeline.py (changed)" in lines[0]
    assert NAMES <= set(app._workflows)
    result, _ = app.runtime.execute(app._workflows["good_pipeline"])
    assert result["step"]["result"] == {"value": 43}


def test_a_changed_project_module_rescans_the_files_that_import_it(
    project: Path, started: list[Nexus]
) -> None:
    (project / "steps.py").write_text(STEPS.replace("1", "2"))
    app, _, _ = start()
    started.append(app)
    assert ran(project) == ["workflows/helper_flow.py"]
    result, _ = app.runtime.execute(app._workflows["helper_flow"])
    assert result["step"]["result"] == {"value": 2}


def test_new_and_removed_files_change_what_is_registered(
    project: Path, started: list[Nexus]
) -> None:
    (project / "workflows/runnable_pipeline.py").unlink()
    shutil.copy(ENGINE / "good_pipeline.py", project / "workflows/late_pipeline.py")
    app, plugin, _ = start()
    started.append(app)
    assert ran(project) == ["workflows/late_pipeline.py"]
    assert "runnable_pipeline" not in app._workflows
    assert {"good_pipeline", "late_pipeline", "helper_flow"} <= set(app._workflows)
    assert plugin.report is not None
    assert plugin.report.file("workflows/runnable_pipeline.py") is None


def test_strict_mode_refuses_to_start_listing_the_changed_files(project: Path) -> None:
    (project / "workflows/good_pipeline.py").write_text("# emptied\n")
    (project / "steps.py").write_text(STEPS.replace("1", "3"))
    with pytest.raises(m.ManifestError) as caught:
        start(manifest_strict=True)
    message = str(caught.value)
    assert str(project / MANIFEST) in message
    assert "workflows/good_pipeline.py (changed)" in message
    assert "workflows/helper_flow.py (changed via steps.py)" in message
    assert "nexus-dataflow freeze" in message
    assert ran(project) == []


def _point_a_node_at_a_project_module(path: Path) -> None:
    """The manifest tells the server to import a project file for a node class."""
    data = json.loads(path.read_text())
    record = data["workflows"]["good_pipeline"]
    record["data"]["nodes"]["step"]["node_type"] = "ProjectOnlyNode"
    record["node_modules"] = {"ProjectOnlyNode": "workflows.good_pipeline"}
    path.write_text(m.dumps(data))


def test_a_manifest_naming_a_project_module_never_imports_it_and_the_file_is_rescanned(
    project: Path, started: list[Nexus]
) -> None:
    _point_a_node_at_a_project_module(project / MANIFEST)
    app, plugin, seen = start()
    started.append(app)
    assert ran(project) == ["workflows/good_pipeline.py"]
    pids = (project / "workflows/good_pipeline.py.ran").read_text().split()
    assert pids != [str(os.getpid())] and seen, "it ran in a worker, not in the server"
    assert app._workflows["good_pipeline"].to_dict()["nodes"]["step"]["node_type"] == \
        "PythonCodeNode"


def test_strict_mode_refuses_a_workflow_it_cannot_rebuild_without_importing_anything(
    project: Path,
) -> None:
    _point_a_node_at_a_project_module(project / MANIFEST)
    with pytest.raises(m.ManifestError, match=r"good_pipeline.py \(cannot be rebuilt: .*"
                                              r"ProjectOnlyNode.*workflows.good_pipeline, "
                                              r"which is not a module of an installed"):
        start(manifest_strict=True)
    assert ran(project) == []


def _corrupt(path: Path) -> None:
    path.write_text(path.read_text()[:200])


def _foreign(path: Path) -> None:
    data = json.loads(path.read_text())
    data["versions"]["kailash"] = "0.0.1"
    path.write_text(m.dumps(data))


def _not_a_manifest(path: Path) -> None:
    path.write_text('{"files": []}\n')


def _escapes_the_project(path: Path) -> None:
    data = json.loads(path.read_text())
    data["modules"]["../../etc/passwd"] = None
    path.write_text(m.dumps(data))


def _wrong_types(path: Path) -> None:
    data = json.loads(path.read_text())
    data["files"]["workflows/good_pipeline.py"]["imports"] = 5
    path.write_text(m.dumps(data))


BROKEN = {
    "missing": (Path.unlink, "does not exist"),
    "corrupt": (_corrupt, "not JSON"),
    "not a manifest": (_not_a_manifest, "is not a nexus-dataflow-manifest"),
    "foreign version": (_foreign, "was made with kailash 0.0.1, but kailash 2"),
    "path out of the project": (_escapes_the_project, "'../../etc/passwd', which is not a path"),
    "wrong types": (_wrong_types, "entry for workflows/good_pipeline.py is incomplete"),
}


@pytest.mark.parametrize("how", BROKEN)
def test_an_unusable_manifest_in_strict_mode_is_an_error_naming_it_and_the_fix(
    project: Path, how: str
) -> None:
    damage, problem = BROKEN[how]
    damage(project / MANIFEST)
    with pytest.raises(m.ManifestError) as caught:
        start(manifest_strict=True)
    message = str(caught.value)
    assert f"Manifest {project / MANIFEST}" in message and problem in message
    assert "Re-run `nexus-dataflow freeze" in message
    assert ran(project) == []


@pytest.mark.parametrize("how", ["missing", "foreign version"])
def test_an_unusable_manifest_otherwise_is_logged_as_an_error_and_every_file_scanned(
    project: Path, started: list[Nexus], caplog: pytest.LogCaptureFixture, how: str
) -> None:
    BROKEN[how][0](project / MANIFEST)
    with caplog.at_level(logging.ERROR, logger="nexus_dataflow_plugin.manifest"):
        app, _, _ = start()
    started.append(app)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(project / MANIFEST) in errors[0]
    assert "Scanning every file instead" in errors[0]
    assert NAMES <= set(app._workflows)
    assert ran(project) == SCANNED


def test_the_manifest_setting_comes_from_the_environment_and_pyproject(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(project).manifest is None
    (project / "pyproject.toml").write_text(
        '[tool.nexus]\ndataflow_manifest = "nexus-manifest.json"\n'
        "dataflow_manifest_strict = true\n")
    settings = load_settings(project)
    assert (settings.manifest, settings.manifest_strict) == (MANIFEST, True)
    monkeypatch.setenv("NEXUS_DATAFLOW_MANIFEST", "other.json")
    monkeypatch.setenv("NEXUS_DATAFLOW_MANIFEST_STRICT", "0")
    settings = load_settings(project)
    assert (settings.manifest, settings.manifest_strict) == ("other.json", False)
    assert not OPTIONS["manifest"].scan  # where discovery starts from, not how a scan runs


def test_the_environment_switch_alone_starts_a_plain_nexus_from_the_manifest(
    project: Path, started: list[Nexus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_DATAFLOW_COMPATIBLE", "1")
    monkeypatch.setenv("NEXUS_DATAFLOW_MANIFEST", MANIFEST)
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    started.append(app)
    with workers_seen() as seen:
        app.start(blocking=False)
    assert NAMES <= set(app._workflows)
    assert ran(project) == [] and not seen


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_freeze_writes_the_same_bytes_for_the_same_tree_with_no_machine_paths(
    project: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns(MANIFEST, "*.ran"))
    done = cli("freeze", str(copy), "-o", str(tmp_path / "again.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stderr and "3 workflow(s) from 4 file(s)" in done.stderr
    text = (tmp_path / "again.json").read_text()
    assert text == (project / MANIFEST).read_text()
    for machine in (str(tmp_path), str(Path.home()), sys.prefix, os.uname().nodename):
        assert machine not in text
    data = json.loads(text)
    assert set(data["versions"]) == {"nexus-dataflow-plugin", "kailash", "kailash-nexus",
                                     "kailash-dataflow"}
    record = data["files"]["workflows/helper_flow.py"]
    assert record["imports"] == ["steps.py"] and set(data["modules"]) == {"steps.py"}
    node_modules = data["workflows"]["runnable_pipeline"]["node_modules"]
    assert node_modules == {"PythonCodeNode": "kailash.nodes.code.python"}


def test_freeze_check_passes_on_a_matching_tree_and_lists_what_changed(project: Path) -> None:
    done = cli("freeze", "--check", "-o", MANIFEST, cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    (project / "steps.py").write_text(STEPS.replace("1", "4"))
    (project / "workflows/runnable_pipeline.py").unlink()
    shutil.copy(ENGINE / "good_pipeline.py", project / "workflows/late_pipeline.py")
    done = cli("freeze", "--check", "-o", MANIFEST, cwd=project)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "workflows/helper_flow.py: changed",
        "workflows/late_pipeline.py: new",
        "workflows/runnable_pipeline.py: removed",
        "steps.py: changed (imported by a discovered file)",
    ]
    assert "nexus-dataflow freeze" in done.stderr


def test_freeze_check_uses_the_manifest_setting_and_reports_a_missing_one(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.nexus]\ndataflow_manifest = "none.json"\n')
    done = cli("freeze", "--check", cwd=project)
    assert done.returncode == 1
    assert f"Manifest {project / 'none.json'} does not exist" in done.stdout
    (project / "pyproject.toml").unlink()
    done = cli("freeze", "--check", cwd=project)
    assert done.returncode == 2 and "--check needs the manifest" in done.stderr


def test_a_scan_limited_to_some_candidates_runs_reports_and_names_only_those(
    project: Path,
) -> None:
    from nexus_dataflow_plugin import SmartDiscovery

    only = ["workflows/runnable_pipeline.py", "workflows/models.py", "not/a/candidate.py"]
    report = SmartDiscovery(project, workers=1).run(only=only)
    assert [e.path for e in report.files] == ["workflows/models.py",
                                              "workflows/runnable_pipeline.py"]
    assert list(report.workflows) == ["runnable_pipeline"]
    assert ran(project) == ["workflows/runnable_pipeline.py"]


PROBLEM_FILES = {
    "workflows/hang_at_import.py": "hang_at_import.py",
    "workflows/calls_os_exit.py": "calls_os_exit.py",
    "workflows/syntax_error_at_line_4.py": "syntax_error_at_line_4.py",
    "workflows/good_pipeline.py": "good_pipeline.py",
}


def test_files_that_hang_crash_or_do_not_parse_freeze_to_the_same_bytes_every_time(
    tmp_path: Path,
) -> None:
    for rel, fixture in PROBLEM_FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ENGINE / fixture, tmp_path / rel)
    settings = load_settings(tmp_path, {"timeout": 1, "workers": 2})
    first, second = (m.dumps(m.freeze(tmp_path, settings)) for _ in range(2))
    assert first == second
    statuses = {rel: f["status"] for rel, f in json.loads(first)["files"].items()}
    assert statuses == {"workflows/hang_at_import.py": "timeout",
                        "workflows/calls_os_exit.py": "crashed",
                        "workflows/syntax_error_at_line_4.py": "error",
                        "workflows/good_pipeline.py": "registered"}
    assert str(tmp_path) not in first
