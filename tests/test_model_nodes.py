"""Workflows built from the project's model nodes, and the one call for dependent files.

Each test writes a small project into ``tmp_path``: a ``models.py`` that defines
DataFlow models and appends the executing pid to ``models.py.ran`` (so a test
sees who ran it, and how often), and workflow files that name the models'
nodes (``add_node("<Model>CreateNode", ...)``) or import the models. The app is
this test process, with a real Nexus; each test uses model names of its own,
because DataFlow's node registry is process-global.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import scan
from kailash.nodes.base import NodeRegistry
from nexus import Nexus

from nexus_dataflow_plugin import (
    DataFlowCompatiblePlugin,
    LoadRefused,
    plugin_of,
)
from nexus_dataflow_plugin.dataflow_workflows import OPERATIONS, node_name_for
from nexus_dataflow_plugin.screen import analyze

MODELS = '''
import os

with open(__file__ + ".ran", "a") as _marker:
    _marker.write(f"{{os.getpid()}}\\n")

from dataflow import DataFlow

db = DataFlow("sqlite:///" + os.path.join(os.path.dirname(__file__), "app.db"),
              enable_model_persistence=False)


@db.model
class {model}:
    id: int
    email: str
'''

NAMES_POSITIONALLY = '''
from kailash.workflow.builder import WorkflowBuilder

workflow = WorkflowBuilder()
workflow.add_node("{model}CreateNode", "create", {{}})
'''

NAMES_BY_KEYWORD = '''
from kailash.workflow.builder import WorkflowBuilder


def make_workflow():
    builder = WorkflowBuilder()
    builder.add_node(node_type="{model}ListNode", node_id="list", config={{"limit": 5}})
    return builder.build()
'''

# Imports the models, so discovery skips it; it marks its own execution too.
IMPORTS_MODELS = '''
with open(__file__ + ".ran", "a") as _marker:
    _marker.write("ran\\n")

from kailash.workflow.builder import WorkflowBuilder

from models import {model}  # noqa: F401

workflow = WorkflowBuilder()
workflow.add_node("{model}CountNode", "count", {{}})
'''


def project(tmp_path: Path, model: str) -> Path:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "models.py").write_text(MODELS.format(model=model))
    (tmp_path / "workflows" / "signup.py").write_text(NAMES_POSITIONALLY.format(model=model))
    (tmp_path / "workflows" / "listing.py").write_text(NAMES_BY_KEYWORD.format(model=model))
    (tmp_path / "workflows" / "counting.py").write_text(IMPORTS_MODELS.format(model=model))
    return tmp_path


def ran(path: Path) -> list[str]:
    marker = path.with_name(path.name + ".ran")
    return marker.read_text().splitlines() if marker.exists() else []


def load_module(name: str, path: Path) -> ModuleType:
    """Import ``path`` as module ``name``, as an app's ``import`` would."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[callable]:
    """An app factory run from a project directory; models and apps cleaned up after."""
    apps: list[Nexus] = []
    bases: list[Path] = []

    def make(base: Path, plugin: DataFlowCompatiblePlugin | None = None) -> Nexus:
        bases.append(base)
        monkeypatch.chdir(base)
        monkeypatch.syspath_prepend(str(base))
        app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
        app.add_plugin(plugin or DataFlowCompatiblePlugin(cache=False, workers=1))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()
        plugin = plugin_of(app)
        if plugin is not None:  # an app never started keeps its pre-started workers
            plugin.on_shutdown()
    for name, module in list(sys.modules.items()):  # the projects' modules, not libraries
        origin = getattr(module, "__file__", None) or ""
        if any(origin.startswith(str(base)) for base in bases):
            del sys.modules[name]
            db = getattr(module, "db", None)
            if db is not None and hasattr(db, "close"):
                db.close()


def test_the_screen_learns_model_classes_and_node_types_given_by_keyword() -> None:
    facts = analyze(MODELS.format(model="Parcel").encode())
    assert facts.model_classes == ("Parcel",) and facts.model is not None
    facts = analyze(NAMES_BY_KEYWORD.format(model="Parcel").encode())
    assert facts.node_types == ("ParcelListNode",)


def test_a_file_naming_the_apps_model_nodes_is_served_with_the_apps_own_nodes(
    tmp_path: Path, app_in
) -> None:
    base = project(tmp_path, "Patron")
    models = load_module("models", base / "models.py")  # the app imports its models
    app = app_in(base)
    app.start(blocking=False)
    report = plugin_of(app).report

    signup = report.file("workflows/signup.py")
    assert (signup.status, signup.workflows) == ("registered", ["signup"]), signup.reason
    assert "Patron (models.py)" in signup.reason and "before start()" in signup.reason
    listing = report.file("workflows/listing.py")
    assert listing.status == "registered", listing.reason
    assert listing.workflows == ["listing.make_workflow"]
    for name, node_id, node_type in (("signup", "create", "PatronCreateNode"),
                                     ("listing.make_workflow", "list", "PatronListNode")):
        node = app._workflows[name]._node_instances[node_id]
        assert type(node) is models.db._nodes[node_type]  # the app's, no second DataFlow
    assert app._workflows["listing.make_workflow"].nodes["list"].config["limit"] == 5
    assert report.file("workflows/counting.py").status == "skipped_dependent"
    assert ran(base / "models.py") == [str(__import__("os").getpid())]  # the app's import only


def test_a_workflow_whose_model_the_app_has_not_registered_names_the_model_and_what_to_do(
    tmp_path: Path, app_in
) -> None:
    base = project(tmp_path, "Ledger")
    app = app_in(base)  # the app never imports models.py
    app.start(blocking=False)
    signup = plugin_of(app).report.file("workflows/signup.py")

    assert signup.status == "error"
    assert "Ledger (models.py)" in signup.reason
    assert "import your models" in signup.reason and "before calling start()" in signup.reason
    assert "signup" not in app._workflows
    assert ran(base / "models.py") == []  # never executed, by anyone
    assert "LedgerCreateNode" not in NodeRegistry._nodes  # the stand-in stayed in its process


def test_a_scan_without_the_models_reports_what_the_server_would_and_the_models_needed(
    tmp_path: Path,
) -> None:
    base = project(tmp_path, "Voucher")
    (base / "workflows" / "typo.py").write_text(NAMES_POSITIONALLY.format(model="Vocher"))
    report = scan(base, models_loaded=False)

    statuses = {e.path: e.status for e in report.files}
    assert statuses == {
        "workflows/counting.py": "skipped_dependent",
        "workflows/listing.py": "registered",
        "workflows/signup.py": "registered",
        "workflows/typo.py": "error",
    }
    assert "Voucher (models.py)" in report.file("workflows/signup.py").reason
    assert "'VocherCreateNode' is not available" in report.file("workflows/typo.py").reason
    assert sorted(report.to_dict()["workflows"]) == ["listing.make_workflow", "signup"]
    assert report.summary().startswith("2 workflow(s) from 4 file(s)")
    assert ran(base / "models.py") == []


def test_every_operation_dataflow_generates_is_a_model_node() -> None:
    facts = analyze(MODELS.format(model="Crate").encode())
    names = {node_name_for(cls, op) for cls in facts.model_classes for op in OPERATIONS}
    assert len(names) == 11 and {"CrateBulkUpsertNode", "CrateCountNode"} <= names


def test_load_dependents_loads_a_file_whose_chain_reaches_only_the_apps_models(
    tmp_path: Path, app_in
) -> None:
    base = project(tmp_path, "Member")
    load_module("models", base / "models.py")
    plugin = DataFlowCompatiblePlugin(cache=False, workers=1, load_dependents=True)
    app = app_in(base, plugin)
    app.start(blocking=False)

    entry = plugin.report.file("workflows/counting.py")
    assert entry.status == "skipped_dependent" and entry.workflows == ["counting"]
    assert "Loaded in the server by load_dependents()" in entry.reason
    assert "counting" in app._workflows
    assert ran(base / "workflows" / "counting.py") == ["ran"]
    assert len(ran(base / "models.py")) == 1


@pytest.mark.parametrize("how", ["under_another_name", "not_at_all"])
def test_load_dependents_and_load_workflows_refuse_running_nothing_when_models_are_not_the_apps(
    tmp_path: Path, app_in, how: str
) -> None:
    base = project(tmp_path, "Tenant" if how == "not_at_all" else "Lessee")
    if how == "under_another_name":
        load_module("shop_models", base / "models.py")  # `import models` would run it again
    app = app_in(base)
    app.start(blocking=False)
    plugin = plugin_of(app)
    before = ran(base / "models.py")

    loaded = plugin.load_dependents()
    assert loaded.workflows == {}
    reason = loaded.refused["workflows/counting.py"]
    assert "models.py" in reason and "`import models`" in reason
    assert "nothing of it executed" in reason
    assert reason in plugin.report.file("workflows/counting.py").reason
    with pytest.raises(LoadRefused, match="import models"):
        plugin.load_workflows("workflows/counting.py")

    assert ran(base / "workflows" / "counting.py") == []
    assert ran(base / "models.py") == before  # 1 (the app's own import) or 0
    assert "counting" not in app._workflows


def test_plugin_of_returns_the_plugin_however_it_was_enabled(tmp_path: Path, app_in,
                                                             monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    by_name = Nexus(auto_discovery=False, enable_durability=False, enable_auth=False)
    try:
        assert by_name.use_plugin("dataflow_compatible") is by_name  # no plugin object here
        assert isinstance(plugin_of(by_name), DataFlowCompatiblePlugin)
    finally:
        by_name.stop()
    plain = Nexus(auto_discovery=False, enable_durability=False, enable_auth=False)
    try:
        assert plugin_of(plain) is None
    finally:
        plain.stop()
    plugin = DataFlowCompatiblePlugin()
    app = app_in(tmp_path, plugin)
    assert plugin_of(app) is plugin


CONNECTED = '''
from kailash.workflow.builder import WorkflowBuilder

workflow = WorkflowBuilder()
workflow.add_node("{model}CreateNode", "create", {{}})
workflow.add_node("{model}ReadNode", "read", {{}})
workflow.add_connection("create", "id", "read", "id")
'''


def test_a_workflow_connecting_model_nodes_keeps_its_connections_when_rebuilt(
    tmp_path: Path, app_in
) -> None:
    base = project(tmp_path, "Booking")
    (base / "workflows" / "book_and_read.py").write_text(CONNECTED.format(model="Booking"))
    models = load_module("models", base / "models.py")
    app = app_in(base)
    app.start(blocking=False)

    entry = plugin_of(app).report.file("workflows/book_and_read.py")
    assert entry.status == "registered", entry.reason
    workflow = app._workflows["book_and_read"]
    assert [(c.source_node, c.source_output, c.target_node, c.target_input)
            for c in workflow.connections] == [("create", "id", "read", "id")]
    assert type(workflow._node_instances["read"]) is models.db._nodes["BookingReadNode"]


def test_a_fifo_and_dev_zero_named_like_modules_do_not_stall_the_search_for_models(
    tmp_path: Path,
) -> None:
    """The project is walked for model files; what is not a regular file is not read."""
    import os
    import subprocess

    base = project(tmp_path, "Quota")
    os.mkfifo(base / "blocking_fifo.py")  # reading it would wait for a writer forever
    (base / "endless_zero.py").symlink_to("/dev/zero")  # reading it would never end
    proc = subprocess.run(
        [sys.executable, "-m", "nexus_dataflow_plugin.cli", "scan", "--json", str(base)],
        capture_output=True, text=True, timeout=120,
    )
    signup = next(f for f in __import__("json").loads(proc.stdout)["files"]
                  if f["path"] == "workflows/signup.py")
    assert signup["status"] == "registered" and "Quota (models.py)" in signup["reason"]


def test_load_dependents_loads_each_file_once_and_leaves_explicit_names_to_the_app(
    tmp_path: Path, app_in
) -> None:
    from kailash.workflow.builder import WorkflowBuilder

    base = project(tmp_path, "Courier")
    load_module("models", base / "models.py")
    app = app_in(base)
    explicit = WorkflowBuilder()
    explicit.add_node("PythonCodeNode", "mine", {"code": "result = {'mine': True}"})
    app.register("counting", explicit.build())  # the app's own, registered first
    app.start(blocking=False)
    plugin = plugin_of(app)

    first = plugin.load_dependents()
    second = plugin.load_dependents()
    assert (first.workflows, first.refused) == ({}, {})
    assert (second.workflows, second.refused) == ({}, {})
    assert ran(base / "workflows" / "counting.py") == ["ran"]  # once, not twice
    assert "mine" in app._workflows["counting"].nodes  # the explicit one stayed


CRASHES_IN_SERVER = '''
from models import {model}  # noqa: F401
import sys

sys.exit("the file exits at import")
'''


def test_a_dependent_file_that_exits_at_import_is_reported_not_fatal_to_the_server(
    tmp_path: Path, app_in
) -> None:
    base = project(tmp_path, "Parcel")
    (base / "workflows" / "exits_at_import.py").write_text(
        CRASHES_IN_SERVER.format(model="Parcel"))
    load_module("models", base / "models.py")
    plugin = DataFlowCompatiblePlugin(cache=False, workers=1, load_dependents=True)
    app = app_in(base, plugin)
    app.start(blocking=False)  # does not exit

    assert "counting" in app._workflows
    entry = plugin.report.file("workflows/exits_at_import.py")
    assert entry.status == "skipped_dependent"
    assert "Raised SystemExit while importing (line 5): the file exits at import" in entry.reason


def test_scan_fail_on_error_passes_a_project_whose_workflows_name_its_models_nodes(
    tmp_path: Path,
) -> None:
    """CI runs the scan without the app: a file the server serves must not fail it."""
    import subprocess

    base = project(tmp_path, "Invoice")
    proc = subprocess.run(
        [sys.executable, "-m", "nexus_dataflow_plugin.cli", "scan", str(base),
         "--fail-on", "error,timeout,crashed"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Invoice (models.py)" in proc.stdout
    assert ran(base / "models.py") == []


RUNS_MODELS_BY_PATH = '''
import runpy

with open(__file__ + ".ran", "a") as _marker:
    _marker.write("ran\\n")

runpy.run_path("models.py")
'''


def test_load_dependents_refuses_a_file_that_runs_the_model_file_by_its_path(
    tmp_path: Path, app_in
) -> None:
    """Running a file by path executes it again whatever the app imported: never loaded."""
    base = project(tmp_path, "Rental")
    (base / "workflows" / "runs_models_by_path.py").write_text(RUNS_MODELS_BY_PATH)
    load_module("models", base / "models.py")
    app = app_in(base)
    app.start(blocking=False)
    plugin = plugin_of(app)
    assert plugin.report.file("workflows/runs_models_by_path.py").status == "skipped_dependent"

    loaded = plugin.load_dependents()
    reason = loaded.refused["workflows/runs_models_by_path.py"]
    assert "run models.py" in reason and "by its path" in reason
    assert "counting" in loaded.workflows  # the other dependent, importing by name, loads
    assert ran(base / "workflows" / "runs_models_by_path.py") == []
    assert len(ran(base / "models.py")) == 1


def test_a_frozen_manifest_carries_model_node_workflows_and_the_server_rebuilds_them(
    tmp_path: Path, app_in
) -> None:
    """``freeze`` runs without the models, as ``scan`` does: the manifest holds the
    workflow as data, and a server starting from it rebuilds it with the app's nodes."""
    from nexus_dataflow_plugin import manifest as m
    from nexus_dataflow_plugin.config import load_settings

    base = project(tmp_path, "Ticket")
    frozen = m.freeze(base, load_settings(base))
    assert frozen["files"]["workflows/signup.py"]["status"] == "registered"
    assert "signup" in frozen["workflows"]
    m.write(frozen, base / "manifest.json")
    assert ran(base / "models.py") == []

    models = load_module("models", base / "models.py")
    app = app_in(base, DataFlowCompatiblePlugin(manifest="manifest.json", workers=1))
    app.start(blocking=False)

    assert plugin_of(app).report.file("workflows/signup.py").status == "registered"
    node = app._workflows["signup"]._node_instances["create"]
    assert type(node) is models.db._nodes["TicketCreateNode"]
    assert len(ran(base / "models.py")) == 1
