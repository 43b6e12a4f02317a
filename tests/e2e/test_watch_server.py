"""Watch mode on a real server: each save is served over HTTP within 2 s, safely.

A Nexus app with ``DataFlowCompatiblePlugin(watch=True)`` serves a project in
tmp_path on 127.0.0.1 (tests/e2e/server.py). The test saves files the way an
editor does and reads the result from outside: ``POST /workflows/<name>/execute``
and the report at ``GET /_dataflow/report``. The project's model modules write a
marker file whenever they are executed, in any process; the app itself never
imports them, so no marker may ever appear. Every process the app starts
carries an environment marker, so leftovers are found wherever they went.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kailash.workflow.builder import WorkflowBuilder
from nexus import Nexus
from procs import processes_with_env

from nexus_dataflow_plugin import DataFlowCompatiblePlugin
from nexus_dataflow_plugin.plugin import REPORT_PATH
from nexus_dataflow_plugin.watch import THREAD_NAME

from .server import running_nexus

SAVE_TO_SERVED_S = 2.0
MARK = "NDP_WATCH_TEST_MARK"
MARKERS = "NDP_WATCH_MARKERS"

# A model module that leaves a marker file (named after its process) whenever it runs.
MODELS = '''
import os, pathlib
pathlib.Path(os.environ["{markers}"], "{stem}-%d" % os.getpid()).touch()
from dataflow import DataFlow
db = DataFlow("sqlite:///" + os.path.join(os.environ["{markers}"], "never.db"))

@db.model
class {cls}:
    name: str
'''


def workflow_file(value: Any, *, sleep: float = 0.0, extra: str = "") -> str:
    code = f"import time; time.sleep({sleep}); result = {{'value': {value!r}}}"
    return (
        f"{extra}from kailash.workflow.builder import WorkflowBuilder\n"
        "workflow = WorkflowBuilder()\n"
        f"workflow.add_node('PythonCodeNode', 'run', {{'code': {code!r}}})\n"
    )


SYNTAX_ERROR_SAVE = "from kailash.workflow.builder import WorkflowBuilder\nworkflow = (\n"
RAISES_AT_IMPORT_SAVE = "raise RuntimeError('half-finished edit')\n"
CRASHES_AT_IMPORT_SAVE = "import os\nos._exit(7)\n"


def save(path: Path, text: str) -> float:
    """Write as an editor does (to a temporary file, then rename); the save's time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return time.monotonic()


def within(saved: float, check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` until truthy; fail unless that happens within SAVE_TO_SERVED_S."""
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() - saved > SAVE_TO_SERVED_S:
            pytest.fail(f"{what}: not served within {SAVE_TO_SERVED_S}s of the save")
        time.sleep(0.02)


class Client:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def run(self, name: str) -> Any:
        """The workflow's value, or the HTTP status when it is not served."""
        response = self.http.post(f"/workflows/{name}/execute", json={"inputs": {}})
        if response.status_code != 200:
            return response.status_code
        return response.json()["outputs"]["run"]["result"]["value"]

    def report(self) -> dict[str, Any]:
        response = self.http.get(REPORT_PATH)
        assert response.status_code == 200, response.text
        return response.json()

    def entry(self, path: str) -> dict[str, Any] | None:
        return next((f for f in self.report()["files"] if f["path"] == path), None)

    def rescanned(self, before: str) -> dict[str, Any] | None:
        report = self.report()
        return report if report["last_scan"] != before else None


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = tmp_path / "project"
    markers = tmp_path / "markers"
    markers.mkdir()
    save(base / "shop" / "__init__.py", "")
    save(base / "shop" / "models.py", MODELS.format(markers=MARKERS, stem="models", cls="Item"))
    save(base / "workflows" / "catalog.py",
         MODELS.format(markers=MARKERS, stem="catalog", cls="Listing"))
    save(base / "workflows" / "greet.py", workflow_file("v1"))
    save(base / "workflows" / "pinned.py", workflow_file("discovered"))
    save(base / "workflows" / "stock.py", workflow_file("plain"))
    save(base / "workflows" / "slow.py", workflow_file("old", sleep=1.5))
    monkeypatch.chdir(base)
    monkeypatch.syspath_prepend(str(base))
    monkeypatch.setenv(MARKERS, str(markers))
    monkeypatch.setenv(MARK, uuid.uuid4().hex)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield base


def _markers(project: Path) -> list[str]:
    return sorted(p.name for p in (project.parent / "markers").iterdir() if p.suffix != ".db")


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_saves_are_served_within_two_seconds_and_a_broken_save_keeps_the_last_good_version(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    pinned = WorkflowBuilder()
    pinned.add_node("PythonCodeNode", "run", {"code": "result = {'value': 'explicit'}"})
    app.register("pinned", pinned.build())
    plugin = DataFlowCompatiblePlugin(watch=True, workers=1)
    app.add_plugin(plugin)
    caplog.set_level(logging.WARNING, logger="nexus_dataflow_plugin")
    with running_nexus(app) as base_url:
        client = Client(base_url)
        assert client.run("greet") == "v1"
        assert client.run("pinned") == "explicit"
        first = client.report()
        assert first["watching"] is True and first["last_scan"]
        assert {f["path"]: f["status"] for f in first["files"]}["workflows/catalog.py"] == \
            "skipped_model"

        saved = save(project / "workflows" / "added.py", workflow_file("new"))
        within(saved, lambda: client.run("added") == "new", "an added file")

        saved = save(project / "workflows" / "greet.py", workflow_file("v2"))
        within(saved, lambda: client.run("greet") == "v2", "a changed file")

        for broken, status in ((SYNTAX_ERROR_SAVE, "error"), (RAISES_AT_IMPORT_SAVE, "error"),
                               (CRASHES_AT_IMPORT_SAVE, "crashed")):
            caplog.clear()
            before = client.report()["last_scan"]
            saved = save(project / "workflows" / "greet.py", broken)
            within(saved, lambda b=before: client.rescanned(b), "the broken save's rescan")
            entry = client.entry("workflows/greet.py")
            assert entry is not None and entry["status"] == status, entry
            assert "last good version keeps serving (greet)" in entry["reason"]
            assert entry["workflows"] == ["greet"]
            assert client.run("greet") == "v2"  # the last good version still serves
            warnings = [r for r in caplog.records if "workflows/greet.py" in r.getMessage()]
            assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING, warnings

        saved = save(project / "workflows" / "greet.py", workflow_file("v3"))
        within(saved, lambda: client.run("greet") == "v3"
               and client.entry("workflows/greet.py")["status"] == "registered", "the fixed file")

        saved = time.monotonic()
        (project / "workflows" / "added.py").unlink()
        within(saved, lambda: client.run("added") == 404
               and client.entry("workflows/added.py") is None, "a removed file")

        # An explicit registration is never replaced by a discovered one.
        before = client.report()["last_scan"]
        saved = save(project / "workflows" / "pinned.py", workflow_file("discovered again"))
        within(saved, lambda: client.rescanned(before), "the pinned file's rescan")
        assert client.run("pinned") == "explicit"

        # A file that starts importing the models leaves, with its workflow; and comes back.
        saved = save(project / "workflows" / "stock.py",
                     workflow_file("plain", extra="from shop.models import Item\n"))
        within(saved, lambda: client.run("stock") == 404
               and client.entry("workflows/stock.py")["status"] == "skipped_dependent",
               "a file now importing models")
        assert "shop/models.py" in client.entry("workflows/stock.py")["reason"]
        saved = save(project / "workflows" / "stock.py", workflow_file("plain again"))
        within(saved, lambda: client.run("stock") == "plain again", "a file back from models")

        # Model modules: reported once for a restart, never executed.
        for path in ("shop/models.py", "workflows/catalog.py"):
            before = client.report()["last_scan"]
            saved = save(project / path, (project / path).read_text() + "# edited\n")
            within(saved, lambda p=path: p in client.report()["restart_required"],
                   f"the model change in {path}")
        assert client.report()["restart_required"] == ["shop/models.py", "workflows/catalog.py"]
        time.sleep(0.5)  # a late worker would have left its marker by now
        assert _markers(project) == []
        assert _watch_threads(), "the watcher runs while the app serves"

    assert not _watch_threads(), "the watcher outlived the app"
    leftovers = processes_with_env(MARK, os.environ[MARK])
    assert leftovers == [], "processes of the app outlived it"
    assert _markers(project) == []


def test_a_request_running_while_its_file_is_replaced_completes(project: Path) -> None:
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    app.add_plugin(DataFlowCompatiblePlugin(watch=True, workers=1))
    with running_nexus(app) as base_url:
        client = Client(base_url)
        outcome: list[Any] = []
        request = threading.Thread(target=lambda: outcome.append(client.run("slow")))
        request.start()
        time.sleep(0.3)  # the request is inside the 1.5 s workflow
        saved = save(project / "workflows" / "slow.py", workflow_file("new"))
        within(saved, lambda: client.run("slow") == "new", "the replaced file")
        request.join(30)
        assert outcome == ["old"]  # the running request finished on the version it started on
    assert not _watch_threads()


def test_the_report_endpoint_without_watch_mode_is_scan_json_with_the_scan_time(
    project: Path,
) -> None:
    cli = str(Path(sys.executable).with_name("nexus-dataflow"))
    scanned = subprocess.run([cli, "scan", "--json", str(project)], capture_output=True,
                             text=True, timeout=120, check=True)
    expected = json.loads(scanned.stdout)
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    app.add_plugin(DataFlowCompatiblePlugin(workers=1))
    with running_nexus(app) as base_url:
        served = Client(base_url).report()
        assert served.pop("watching") is False and served.pop("restart_required") == []
        assert served.pop("last_scan").endswith("+00:00")

        def timeless(report: dict[str, Any]) -> dict[str, Any]:
            return {**report, "files": [{k: v for k, v in f.items() if k != "duration_s"}
                                        for f in report["files"]]}

        assert timeless(served) == timeless(expected)
        # a workflow cannot be named so that its routes reach the report's path
        assert not REPORT_PATH.startswith("/workflows/")
    assert not _watch_threads()


def test_requests_sent_while_workflows_are_swapped_never_fail_with_a_server_error(
    project: Path,
) -> None:
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    app.add_plugin(DataFlowCompatiblePlugin(watch=True, workers=1))
    statuses: list[int] = []
    done = threading.Event()
    with running_nexus(app) as base_url:

        def hammer() -> None:
            with httpx.Client(base_url=base_url, timeout=30) as http:
                while not done.is_set():
                    response = http.post("/workflows/greet/execute", json={"inputs": {}})
                    statuses.append(response.status_code)

        client = Client(base_url)
        senders = [threading.Thread(target=hammer) for _ in range(4)]
        for sender in senders:
            sender.start()
        try:
            for version in range(5):
                saved = save(project / "workflows" / "greet.py", workflow_file(f"s{version}"))
                within(saved, lambda v=version: client.run("greet") == f"s{v}", "a swap")
        finally:
            done.set()
            for sender in senders:
                sender.join(30)
    assert statuses.count(200) > 20, statuses
    # between deregister and register a new request may find no route (404); none fails
    assert not [code for code in statuses if code >= 500], sorted(set(statuses))
