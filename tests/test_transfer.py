"""Stage 3, transfer: workflows come back from the worker as ``Workflow.to_dict()`` JSON
and are rebuilt in the parent. What cannot make the trip is ``not_transferable``
with a reason naming the node; library nodes are resolved by importing their
library module, never a project file; a rebuilt workflow runs.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import runs, scan
from kailash.runtime.local import LocalRuntime
from kailash.workflow import Workflow
from kailash.workflow.builder import WorkflowBuilder

from nexus_dataflow_plugin import transfer

FIXTURES = Path(__file__).parent / "fixtures" / "engine"

TRANSFER_FILES = (
    "node_from_function.py",
    "function_in_node_config.py",
    "project_defined_node.py",
    "project_node_from_local_module.py",
    "cyclic_workflow.py",
    "secret_in_node_config.py",
    "library_nodes_csv_http.py",
    "library_node_the_server_has_not_loaded.py",
    "runnable_pipeline.py",
    "one_transferable_one_not.py",
)

# file -> words its not_transferable reason must contain (node id first)
NOT_TRANSFERABLE = {
    "node_from_function.py": ("score_lead_node", "function"),
    "function_in_node_config.py": ("doubler", "function"),
    "project_defined_node.py": ("discount", "DiscountNode"),
    "project_node_from_local_module.py": ("tax", "TaxNode", "custom_nodes"),
    "cyclic_workflow.py": ("evaluate", "improve", "cycle"),
    "secret_in_node_config.py": ("call_crm", "api_key"),
}


# The project conftest's ``tree`` builds and its ``report`` scans (one worker: every file
# goes through the same warm process, one child after another).
LAYOUT = {f"workflows/{name}": name for name in TRANSFER_FILES} | {
    "custom_nodes.py": "custom_nodes.py"}


@pytest.mark.parametrize("name", sorted(NOT_TRANSFERABLE))
def test_what_cannot_travel_is_not_transferable_naming_the_node(report, name):
    entry = report.file(f"workflows/{name}")
    assert entry.status == "not_transferable", entry.reason
    for word in NOT_TRANSFERABLE[name]:
        assert word in entry.reason, (word, entry.reason)
    assert "register" in entry.reason.lower()  # tells the user what to do instead
    assert entry.workflows == []
    assert not any(n.startswith(Path(name).stem) for n in report.workflows)


def test_project_node_classes_are_never_imported_in_the_parent(report, tree):
    assert "custom_nodes" not in sys.modules
    assert "project_defined_node" not in sys.modules
    pids = runs(tree / "custom_nodes.py")
    assert pids and os.getpid() not in pids  # it ran, but only in a worker
    from kailash.nodes.base import NodeRegistry

    assert "TaxNode" not in NodeRegistry._nodes
    assert "DiscountNode" not in NodeRegistry._nodes


def test_library_nodes_travel_and_come_back_as_workflows(report):
    entry = report.file("workflows/library_nodes_csv_http.py")
    assert entry.status == "registered", entry.reason
    workflow = report.workflows["library_nodes_csv_http"]
    assert isinstance(workflow, Workflow)
    assert {nid: n.node_type for nid, n in workflow.nodes.items()} == {
        "read_customers": "CSVReaderNode",
        "notify": "HTTPRequestNode",
    }
    assert workflow.nodes["read_customers"].config["file_path"] == "customers.csv"
    assert workflow.nodes["notify"].config["url"] == "https://hooks.example.invalid/x"


def test_library_node_module_is_imported_in_the_parent_on_demand(report):
    entry = report.file("workflows/library_node_the_server_has_not_loaded.py")
    assert entry.status == "registered", entry.reason
    workflow = report.workflows["library_node_the_server_has_not_loaded"]
    assert workflow.nodes["check_code"].node_type == "CodeValidationNode"
    from kailash.nodes.base import NodeRegistry

    assert NodeRegistry._nodes["CodeValidationNode"].__module__.startswith("kailash.nodes.")


def test_round_tripped_workflow_executes(report):
    workflow = report.workflows["runnable_pipeline"]
    assert isinstance(workflow, Workflow)
    with LocalRuntime() as runtime:
        results, _run_id = runtime.execute(workflow)
    assert results["total"]["result"] == {"sum": 12, "count": 3}


def test_one_bad_workflow_does_not_block_the_good_one_in_the_same_file(report):
    entry = report.file("workflows/one_transferable_one_not.py")
    assert entry.status == "registered"
    assert entry.workflows == ["one_transferable_one_not.plain"]
    assert "with_function" in entry.reason and "shout" in entry.reason


# --- transfer.encode / decode directly, on workflows built here ---------------------------


def _pipeline() -> Workflow:
    builder = WorkflowBuilder()
    builder.add_node("PythonCodeNode", "a", {"code": "result = {'n': 2}"})
    builder.add_node("PythonCodeNode", "b", {"code": "result = {'m': n * 10}"})
    builder.add_connection("a", "result.n", "b", "n")
    return builder.build()


def test_encode_is_plain_json_and_decode_rebuilds_the_same_graph(tmp_path):
    import json

    original = _pipeline()
    encoded = transfer.encode(original, str(tmp_path), set())
    assert encoded.problems == ()
    data = json.loads(json.dumps(encoded.data))  # survives a JSON trip unchanged
    rebuilt = transfer.decode(data, encoded.node_modules)
    assert set(rebuilt.nodes) == {"a", "b"}
    assert sorted(rebuilt.graph.edges(data=True), key=repr) == sorted(
        original.graph.edges(data=True), key=repr
    )

def test_workflows_rebuilt_together_hold_one_object_per_equal_string(tmp_path):
    """The server keeps what it rebuilds: equal strings decoded apart (node types, the
    same code) are one object across a file's workflows, and the graph is unchanged."""
    import json

    encoded = transfer.encode(_pipeline(), str(tmp_path), set())
    text = json.dumps(encoded.data)
    strings: dict[str, str] = {}
    first, second = (transfer.decode(json.loads(text), encoded.node_modules, strings)
                     for _ in range(2))
    assert first.to_dict()["nodes"] == second.to_dict()["nodes"] == encoded.data["nodes"]
    assert first.nodes["a"].node_type is second.nodes["b"].node_type
    assert first.nodes["a"].config["code"] is second.nodes["a"].config["code"]


def test_a_rebuild_walks_config_nested_past_the_recursion_limit(tmp_path):
    encoded = transfer.encode(_pipeline(), str(tmp_path), set())
    deep: object = "leaf"
    for _ in range(sys.getrecursionlimit() + 100):
        deep = [deep]
    encoded.data["metadata"]["deep"] = deep
    rebuilt = transfer.rebuild(encoded.data, {})
    assert set(rebuilt.nodes) == {"a", "b"}



def test_two_connections_between_one_pair_of_nodes_travel(tmp_path):
    """Kailash keeps them on one edge, its ports as lists; encode once raised TypeError
    on them, so such a file was an error where native registers it."""
    builder = WorkflowBuilder()
    builder.add_node("PythonCodeNode", "x", {"code": "r = 1\ns = 2"})
    builder.add_node("PythonCodeNode", "y", {"code": "result = {}"})
    builder.add_connection("x", "r", "y", "a")
    builder.add_connection("x", "s", "y", "b")
    encoded = transfer.encode(builder.build(), str(tmp_path), set())
    assert encoded.problems == ()
    assert len(encoded.data["connections"]) == 2
    rebuilt = transfer.decode(encoded.data, encoded.node_modules)
    assert rebuilt.graph.edges["x", "y"]["mapping"] == {"r": "a", "s": "b"}


def test_encode_refuses_a_cycle_built_in_process(tmp_path):
    workflow = _pipeline()
    workflow.create_cycle("loop").connect("b", "a", {"result": "input"}).max_iterations(3).build()
    encoded = transfer.encode(workflow, str(tmp_path), set())
    assert encoded.data is None
    assert any("cycle" in p and "b" in p and "a" in p for p in encoded.problems)


@pytest.mark.parametrize("key", ["api_key", "password", "token"])
def test_encode_refuses_a_redacted_secret(tmp_path, key):
    builder = WorkflowBuilder()
    builder.add_node("PythonCodeNode", "svc", {"code": "result = {}", key: "hunter2"})
    encoded = transfer.encode(builder.build(), str(tmp_path), set())
    assert encoded.data is None
    assert any("svc" in p and key in p for p in encoded.problems)


def test_decode_never_imports_a_project_module(tmp_path, monkeypatch):
    """Even with the project on sys.path, a node module inside it is not imported."""
    shutil.copyfile(FIXTURES / "custom_nodes.py", tmp_path / "custom_nodes.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {
        "name": "taxes",
        "nodes": {"tax": {"node_id": "tax", "node_type": "TaxNode", "config": {}}},
        "connections": [],
    }
    with pytest.raises(ValueError, match="TaxNode"):
        transfer.decode(data, {"TaxNode": "custom_nodes"})
    assert runs(tmp_path / "custom_nodes.py") == []
    assert "custom_nodes" not in sys.modules


def test_decode_never_imports_a_module_outside_installed_libraries(tmp_path, monkeypatch):
    """A module outside the project but not an installed library is refused too."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(FIXTURES / "custom_nodes.py", elsewhere / "custom_nodes.py")
    monkeypatch.syspath_prepend(str(elsewhere))
    project = tmp_path / "project"
    project.mkdir()
    data = {"nodes": {"tax": {"node_id": "tax", "node_type": "TaxNode", "config": {}}}}
    with pytest.raises(ValueError, match="TaxNode"):
        transfer.decode(data, {"TaxNode": "custom_nodes"})
    assert runs(elsewhere / "custom_nodes.py") == []


# --- the app's virtualenv inside the project directory ----------------------------------------


def _project_with_venv(root: Path, venv_inside: bool) -> tuple[Path, Path]:
    """A project using a node library pip-installed in a virtualenv, inside or next to it."""
    project = root / "project"
    (project / "workflows").mkdir(parents=True)
    shutil.copyfile(
        FIXTURES / "uses_installed_node_library.py",
        project / "workflows" / "uses_installed_node_library.py",
    )
    venv = (project if venv_inside else root) / ".venv"
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = venv / "lib" / python / "site-packages"
    shutil.copytree(FIXTURES / "installed_node_library", site)
    return project, site


def _scan_with_venv(root: Path, monkeypatch, venv_inside: bool):
    """Scan that project with the virtualenv's site-packages on the server's path."""
    project, site = _project_with_venv(root, venv_inside)
    monkeypatch.syspath_prepend(str(site))
    try:
        return scan(project)
    finally:
        sys.modules.pop("acme_nodes", None)


def test_library_installed_in_an_in_project_venv_is_a_library(tmp_path, monkeypatch):
    report = _scan_with_venv(tmp_path, monkeypatch, venv_inside=True)
    entry = report.file("workflows/uses_installed_node_library.py")
    assert entry.status == "registered", entry.reason
    assert report.workflows["uses_installed_node_library"].nodes["greet"].node_type == (
        "AcmeGreetNode"
    )


def test_control_library_installed_in_a_venv_next_to_the_project_is_a_library(
    tmp_path, monkeypatch
):
    """Same project, same library, virtualenv outside the project: the workflow travels."""
    report = _scan_with_venv(tmp_path, monkeypatch, venv_inside=False)
    entry = report.file("workflows/uses_installed_node_library.py")
    assert entry.status == "registered", entry.reason
    workflow = report.workflows["uses_installed_node_library"]
    assert workflow.nodes["greet"].node_type == "AcmeGreetNode"
    with LocalRuntime() as runtime:
        results, _ = runtime.execute(workflow)
    assert results["greet"]["greeting"] == "hello nexus"


def test_a_scan_rebuilds_quietly_and_leaves_the_logging_level_as_it_was(tmp_path, caplog):
    """Kailash logs each node of the server's copy at INFO; the originals were built in a
    worker. A scan logs none of those lines, and the graph logger's level is restored."""
    import logging

    graph_logger = logging.getLogger("kailash.workflow.graph")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "pipeline.py").write_text(
        "from kailash.workflow.builder import WorkflowBuilder\n"
        "workflow = WorkflowBuilder()\n"
        "workflow.add_node('PythonCodeNode', 'only', {'code': 'result = 1'})\n"
    )
    with caplog.at_level(logging.INFO):
        before = graph_logger.level
        report = scan(tmp_path)
        assert "pipeline" in report.workflows
        assert not [r for r in caplog.records if r.name == graph_logger.name]
        assert graph_logger.level == before
        _pipeline()  # building in the server itself still logs as Kailash does
        assert [r for r in caplog.records if r.name == graph_logger.name]


def test_overlapping_scans_restore_the_level_once_the_last_one_ends():
    import logging

    graph_logger = logging.getLogger("kailash.workflow.graph")
    saved = graph_logger.level
    graph_logger.setLevel(logging.DEBUG)
    try:
        first, second = transfer.quiet_rebuilds, transfer.quiet_rebuilds
        first.__enter__()
        second.__enter__()
        assert graph_logger.level == logging.WARNING
        first.__exit__(None, None, None)
        assert graph_logger.level == logging.WARNING  # the other scan is still rebuilding
        second.__exit__(None, None, None)
        assert graph_logger.level == logging.DEBUG
    finally:
        graph_logger.setLevel(saved)


def test_while_a_node_library_loads_no_module_outside_the_libraries_can_be_imported(
    tmp_path, monkeypatch
):
    """A project directory on the server's sys.path (an app started from it) cannot lend a
    library a module: ``libraries_only`` refuses it, standard modules still load."""
    (tmp_path / "ndp_project_shadow.py").write_text(
        f"open({str(tmp_path / 'ran')!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with transfer.libraries_only(), pytest.raises(ImportError, match="no installed"):
        importlib.import_module("ndp_project_shadow")
    assert not (tmp_path / "ran").exists() and "ndp_project_shadow" not in sys.modules
    sys.modules.pop("xml.dom.minicompat", None)
    with transfer.libraries_only():
        importlib.import_module("xml.dom.minicompat")
