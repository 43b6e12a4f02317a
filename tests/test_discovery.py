"""SmartDiscovery end to end on one mixed project: native names, narrow factory
probing, each file imported once, and a process-level proof that model files
never run anywhere and candidates never run in the calling process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import place, runs, scan
from kailash.workflow import Workflow

from nexus_dataflow_plugin import SmartDiscovery, discover_workflows, schedule

FIXTURES = Path(__file__).parent / "fixtures" / "engine"
IMPORT_TREE = FIXTURES / "import_tree"

# destination -> fixture in FIXTURES
ENGINE_LAYOUT = {
    "workflows/factory_shapes.py": "factory_shapes.py",
    "workflows/factory_with_alias.py": "factory_with_alias.py",
    "workflows/mutates_globals_factory.py": "mutates_globals_factory.py",
    "workflows/main_behind_name_guard.py": "main_behind_name_guard.py",
    "workflows/imports_dangerous_callables.py": "imports_dangerous_callables.py",
    "helper_with_marker.py": "helper_with_marker.py",
    "workflow_orders_workflow.py": "workflow_orders.py",
    "workflows/names_generic_and_specific.py": "names_generic_and_specific.py",
    "workflows/billing.py": "generic_name_builder.py",
    "workflows/invoices.py": "builder_and_the_workflow_it_built.py",
    "src/workflows/shipping.py": "generic_name_wf.py",
    "reports.workflow.py": "good_pipeline.py",
    # Two files named orders.py: native lets the later pattern (app/workflows/) win.
    "workflows/orders.py": "good_pipeline.py",
    "app/workflows/orders.py": "workflow_orders.py",
    "workflows/helpers.py": "helper_functions_only.py",
    # DataFlow model files and a file that depends on one.
    "workflows/models_from_dataflow_import.py": "models_from_dataflow_import.py",
    "workflows/models_on_self_db_in_method.py": "models_on_self_db_in_method.py",
    "workflows/models_on_db_from_local_module.py": "models_on_db_from_local_module.py",
    "dataflow_db_module.py": "dataflow_db_module.py",
}
IMPORT_TREE_LAYOUT = {
    "app_models.py": "import_tree/app_models.py",
    "workflows/direct_import_of_models.py": "import_tree/workflows/direct_import_of_models.py",
}
LAYOUT = ENGINE_LAYOUT | IMPORT_TREE_LAYOUT  # the project conftest's ``tree`` builds
NEVER_RUN = (
    "workflows/models_from_dataflow_import.py",
    "workflows/models_on_self_db_in_method.py",
    "workflows/models_on_db_from_local_module.py",
    "dataflow_db_module.py",
    "app_models.py",
    "workflows/direct_import_of_models.py",
)

EXPECTED_NAMES = {
    "factory_shapes.make_orders",
    "factory_shapes.make_invoices",
    "factory_shapes.make_lambda",
    "factory_with_alias.make_orders",
    "factory_with_alias.orders",
    "mutates_globals_factory.make_first",
    "mutates_globals_factory.make_second",
    "mutates_globals_factory.make_third",
    "main_behind_name_guard",
    "imports_dangerous_callables",
    "workflow_orders_workflow",
    "names_generic_and_specific.orders_pipeline",
    "names_generic_and_specific.invoice_flow",
    "names_generic_and_specific.make_report",
    "names_generic_and_specific.make_audit",
    "billing",
    "invoices",
    "shipping",
    "reports.workflow",
    "orders",
}


# --- names ---------------------------------------------------------------------------------


def test_names_follow_native_rules(report):
    assert set(report.workflows) == EXPECTED_NAMES


def test_every_value_is_a_built_workflow(report):
    for name, workflow in report.workflows.items():
        assert isinstance(workflow, Workflow), name


def test_generic_names_use_the_stem_and_builders_are_built(report):
    assert set(report.workflows["billing"].nodes) == {"b"}  # `builder = WorkflowBuilder()`
    assert set(report.workflows["shipping"].nodes) == {"w"}  # `wf = ...build()`
    assert set(report.workflows["workflow_orders_workflow"].nodes) == {"orders"}  # `workflow`


def test_of_two_workflows_sharing_a_name_only_the_later_one_travels(report):
    # `builder` and `workflow = builder.build()`: native registers `workflow`.
    assert set(report.workflows["invoices"].nodes) == {"first"}
    entry = report.file("workflows/invoices.py")
    assert entry.workflows == ["invoices"]
    assert "1 workflow(s) found" in entry.reason


def test_factories_returning_builders_and_workflows_are_registered(report):
    named = report.workflows
    assert set(named["names_generic_and_specific.make_report"].nodes) == {"report"}
    assert set(named["names_generic_and_specific.make_audit"].nodes) == {"audit"}
    assert set(named["names_generic_and_specific.orders_pipeline"].nodes) == {"orders_pipeline"}


def test_a_later_pattern_wins_a_shared_name_and_the_loser_says_so(report):
    assert set(report.workflows["orders"].nodes) == {"orders"}  # from app/workflows/orders.py
    loser = report.file("workflows/orders.py")
    assert loser.workflows == []
    assert "app/workflows/orders.py" in loser.reason
    assert report.file("app/workflows/orders.py").workflows == ["orders"]


def test_file_entries_list_the_names_they_contributed(report):
    entry = report.file("workflows/factory_shapes.py")
    assert sorted(entry.workflows) == [
        "factory_shapes.make_invoices",
        "factory_shapes.make_lambda",
        "factory_shapes.make_orders",
    ]


# --- factory probing -----------------------------------------------------------------------


def test_only_real_factories_are_called_each_once_in_a_worker(report, tree):
    path = tree / "workflows" / "factory_shapes.py"
    for name in ("make_orders", "make_invoices"):
        pids = runs(path, f".{name}.called")
        assert len(pids) == 1 and pids[0] != os.getpid(), name
    for name in ("log_startup", "returns_none_explicitly", "generate_builders", "make_async",
                 "has_nested_return", "_private_factory", "PipelineFactory", "main"):
        assert runs(path, f".{name}.called") == [], f"{name} must not be called"


def test_a_factory_with_an_alias_is_called_once(report, tree):
    assert len(runs(tree / "workflows" / "factory_with_alias.py", ".make_orders.called")) == 1


def test_factory_mutating_globals_does_not_hide_later_factories(report):
    entry = report.file("workflows/mutates_globals_factory.py")
    assert entry.status == "registered", entry.reason
    assert sorted(entry.workflows) == [
        "mutates_globals_factory.make_first",
        "mutates_globals_factory.make_second",
        "mutates_globals_factory.make_third",
    ]
    assert set(report.workflows["mutates_globals_factory.make_third"].nodes) == {"third"}


def test_main_behind_name_guard_is_never_called(report, tree):
    assert runs(tree / "workflows" / "main_behind_name_guard.py", ".main.called") == []
    assert report.file("workflows/main_behind_name_guard.py").workflows == [
        "main_behind_name_guard"
    ]


def test_imported_callables_are_never_called(report, tree):
    entry = report.file("workflows/imports_dangerous_callables.py")
    # `from sys import exit` / `from os import abort` would have made this error or crashed.
    assert entry.status == "registered", entry.reason
    assert entry.workflows == ["imports_dangerous_callables"]
    for word in ("exit", "abort", "getpid", "LocalRuntime", "build_helper_workflow"):
        assert word not in entry.reason
    assert runs(tree / "helper_with_marker.py", ".build_helper_workflow.called") == []


def test_helper_functions_with_parameters_are_not_failing_factories(report):
    entry = report.file("workflows/helpers.py")
    assert entry.status == "no_workflows", entry.reason


# --- each file once; nothing in this process -----------------------------------------------


def test_a_file_matching_two_patterns_is_imported_once(report, tree):
    assert len(runs(tree / "workflow_orders_workflow.py")) == 1
    assert [e.path for e in report.files].count("workflow_orders_workflow.py") == 1


def test_every_candidate_ran_once_and_never_in_this_process(report, tree):
    for rel in ENGINE_LAYOUT:
        if rel in NEVER_RUN or not rel.endswith(".py") or rel == "helper_with_marker.py":
            continue
        pids = runs(tree / rel)
        assert len(pids) == 1, (rel, pids)
        assert pids[0] != os.getpid(), rel


def test_model_files_and_their_dependents_never_run_anywhere(report, tree):
    assert {rel: runs(tree / rel) for rel in NEVER_RUN if runs(tree / rel)} == {}
    assert list(tree.rglob("*.db")) == []
    statuses = {rel: report.file(rel).status for rel in NEVER_RUN if report.file(rel)}
    assert statuses == {
        "workflows/models_from_dataflow_import.py": "skipped_model",
        "workflows/models_on_self_db_in_method.py": "skipped_model",
        "workflows/models_on_db_from_local_module.py": "skipped_model",
        "workflows/direct_import_of_models.py": "skipped_dependent",
    }


def test_candidate_modules_are_not_left_in_this_process(report):
    stems = {Path(rel).stem for rel in ENGINE_LAYOUT}
    assert stems.isdisjoint(sys.modules)


_FRESH_SCAN = r"""
import json, os, sys
from nexus_dataflow_plugin import SmartDiscovery
report = SmartDiscovery(sys.argv[1], timeout=5, workers=1, cache=False).run()
print(json.dumps({
    "pid": os.getpid(),
    "dataflow_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "dataflow"),
    "statuses": {e.path: e.status for e in report.files},
}))
"""


def test_a_fresh_server_process_never_even_imports_dataflow(tmp_path):
    """Scanning a project full of DataFlow model files leaves the calling process without
    the `dataflow` package loaded at all, and every candidate ran in another process."""
    base = tmp_path / "project"
    shutil.copytree(IMPORT_TREE, base)
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_SCAN, str(base)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dataflow_loaded"] == []
    assert "skipped_dependent" in result["statuses"].values()
    ran = [pid for marker in base.rglob("*.ran") for pid in map(int, marker.read_text().split())]
    assert ran and result["pid"] not in ran


# --- the drop-in function and the constructor ------------------------------------------------


def test_discover_workflows_is_a_drop_in_returning_workflows_by_native_name(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = place(tmp_path / "project", {
        "workflows/names_generic_and_specific.py": "names_generic_and_specific.py",
        "workflows/billing.py": "generic_name_builder.py",
        "workflows/invoices.py": "builder_and_the_workflow_it_built.py",
        "workflows/models_from_dataflow_import.py": "models_from_dataflow_import.py",
    }, FIXTURES)
    found = discover_workflows(str(base))
    assert isinstance(found, dict)
    assert set(found) == {name for name in EXPECTED_NAMES if name.startswith("names_")} | {
        "billing",
        "invoices",
    }
    assert set(found["invoices"].nodes) == {"first"}
    assert all(isinstance(w, Workflow) for w in found.values())
    assert runs(base / "workflows" / "models_from_dataflow_import.py") == []
    assert runs(base / "workflows" / "billing.py")[0] != os.getpid()


def test_default_timeout_is_ten_seconds_per_file(tmp_path):
    assert SmartDiscovery(tmp_path).settings.timeout == 10


def test_invalid_settings_are_refused_as_the_configuration_refuses_them(tmp_path):
    with pytest.raises(ValueError, match="timeout"):
        SmartDiscovery(tmp_path, timeout=0)
    with pytest.raises(ValueError, match="workers"):
        SmartDiscovery(tmp_path, workers=-1)
    # 0 workers means one per core, as NEXUS_DATAFLOW_WORKERS=0 does
    assert SmartDiscovery(tmp_path, workers=0).workers == (os.cpu_count() or 1)


USES_GENERATED_NODE = '''
from kailash.workflow.builder import WorkflowBuilder

workflow = WorkflowBuilder()
workflow.add_node("{node}", "create", {{"name": "from a workflow file"}})
'''


def test_a_file_using_the_apps_model_nodes_by_name_is_registered_with_the_apps_nodes(tmp_path):
    """The seed's pattern: `add_node("GadgetCreateNode")` with no import of the models.

    The server has DataFlow's generated nodes, so the file is imported with stand-ins
    and its workflow rebuilt with the app's own node class; a node type that neither a
    library nor a model provides fails in the worker with a reason that says what to do,
    not Kailash's list of every node.
    """
    from dataflow import DataFlow

    db = DataFlow(f"sqlite:///{tmp_path / 'app.db'}")

    @db.model
    class Gadget:
        name: str

    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "gadget_intake.py").write_text(
        USES_GENERATED_NODE.format(node="GadgetCreateNode")
    )
    (tmp_path / "workflows" / "widget_intake.py").write_text(
        USES_GENERATED_NODE.format(node="WidgetCreateNode")
    )
    report = scan(tmp_path)

    gadget = report.file("workflows/gadget_intake.py")
    assert gadget.status == "registered", gadget.reason
    assert "Gadget" in gadget.reason and "before start()" in gadget.reason
    node = report.workflows["gadget_intake"]._node_instances["create"]
    assert type(node) is db._nodes["GadgetCreateNode"]
    widget = report.file("workflows/widget_intake.py")
    assert widget.status == "error"
    assert "'WidgetCreateNode' is not available in the isolated worker" in widget.reason
    assert "Available nodes" not in widget.reason
    db.close()


def _slow_screen(monkeypatch) -> list[float]:
    """Make the screen take 50 ms a file; returns when each file was screened."""
    from nexus_dataflow_plugin import cache as cache_module

    screened: list[float] = []
    analyze_tree = cache_module.analyze_tree

    def slow_analyze(data: bytes, tree):
        time.sleep(0.05)
        facts = analyze_tree(data, tree)
        screened.append(time.time())
        return facts

    monkeypatch.setattr(cache_module, "analyze_tree", slow_analyze)
    return screened


def test_a_cold_scan_imports_files_while_its_screen_is_still_going(tmp_path, monkeypatch):
    """With nothing timed yet, files go to workers as the screen lets them through:
    here the first import happens before a deliberately slow screen has finished."""
    (tmp_path / "workflows").mkdir()
    for i in range(60):
        shutil.copyfile(FIXTURES / "good_pipeline.py", tmp_path / "workflows" / f"g{i:03}.py")
    screened = _slow_screen(monkeypatch)
    report = SmartDiscovery(tmp_path, cache=False).run()
    assert len(report.workflows) == 60
    first_import = min(p.stat().st_mtime for p in (tmp_path / "workflows").glob("*.ran"))
    assert first_import < max(screened), "every import waited for the whole screen"


def test_a_file_the_screen_sees_may_block_starts_as_soon_as_it_is_screened(
    tmp_path, monkeypatch
):
    """A hang the screen can foresee starts when the screen reaches it, not after the
    files behind it, so its timeout runs alongside the rest of the scan."""
    (tmp_path / "workflows").mkdir()
    for prefix in ("a", "z"):  # screened before and after the hanging file
        for i in range(20):
            shutil.copyfile(FIXTURES / "good_pipeline.py",
                            tmp_path / "workflows" / f"{prefix}{i:03}.py")
    # The screen timed here is the server's own: a read-ahead process would answer the
    # files from the other end of the list (tests/test_isolation.py).
    monkeypatch.setattr(schedule, "READ_AHEAD_MIN_FILES", 10**9)
    discovery = SmartDiscovery(tmp_path, timeout=2, cache=False)
    with discovery.make_pool() as pool:
        SmartDiscovery(tmp_path, timeout=2, cache=False, pool=pool).run()  # a warm worker
        hang = tmp_path / "workflows" / "hang_at_import.py"
        shutil.copyfile(FIXTURES / "hang_at_import.py", hang)
        screened = _slow_screen(monkeypatch)
        report = SmartDiscovery(tmp_path, timeout=2, cache=False, pool=pool).run()

    assert report.file("workflows/hang_at_import.py").status == "timeout"
    assert len(report.workflows) == 40
    started = Path(f"{hang}.ran").stat().st_mtime
    # 21 files are screened up to the hanging one; 19 more remain behind it.
    assert started < screened[25], "the hanging file waited for the files screened after it"


# --- the bytes that were judged are the bytes that run (issue 12) -------------------------------


def test_a_file_rewritten_after_its_screen_is_screened_again_before_anything_of_it_runs(
    tmp_path, monkeypatch
):
    """Rewritten between screen and import into a model file of the same size, with its
    mtime set back: the worker refuses the new bytes unrun, the screen judges them, and
    the file ends ``skipped_model`` without ever executing."""
    from nexus_dataflow_plugin.cache import ScreenCache

    (tmp_path / "workflows").mkdir()
    target = tmp_path / "workflows" / "rewritten.py"
    marker = tmp_path / "rewritten.ran"
    model = (f"open({str(marker)!r}, 'a').write('x')\n"
             "from dataflow import DataFlow\n\ndb = DataFlow('sqlite:///:memory:')\n")
    benign = "from kailash.workflow.builder import WorkflowBuilder\nworkflow = WorkflowBuilder()\n"
    target.write_text(benign.ljust(len(model), "#"))
    (tmp_path / "workflows" / "steady.py").write_text(benign)
    real_digest = ScreenCache.digest

    def digest_then_rewrite(self, path):
        judged = real_digest(self, path)
        if path.name == "rewritten.py" and judged is not None:
            stat = path.stat()
            path.write_text(model)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return judged

    monkeypatch.setattr(ScreenCache, "digest", digest_then_rewrite)
    report = scan(tmp_path, timeout=10)
    assert report.file("workflows/rewritten.py").status == "skipped_model"
    assert report.file("workflows/steady.py").status == "registered"
    assert not marker.exists()


def test_a_file_that_keeps_changing_under_the_scan_is_an_error_saying_so(tmp_path, monkeypatch):
    from nexus_dataflow_plugin import report as r
    from nexus_dataflow_plugin.cache import ScreenCache

    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "churning.py").write_text("x = 1\n")
    monkeypatch.setattr(ScreenCache, "digest", lambda self, path: "0" * 64)
    entry = scan(tmp_path, timeout=10).file("workflows/churning.py")
    assert (entry.status, entry.reason) == (r.ERROR, r.MSG_CHANGED)


def test_a_scan_leaves_the_collector_on_and_a_servers_frozen_objects_frozen(tmp_path):
    """A scan pauses the collector and hands what it made to the oldest generation, so
    the first allocation after it does not pass over them all (a young pass would have
    left them in the middle one); a process that froze its own objects (a pre-fork
    server sharing its pages) keeps them frozen."""
    import gc

    workflows = tmp_path / "workflows"
    workflows.mkdir()
    for i in range(20):
        (workflows / f"flow_{i}.py").write_text(
            "from kailash.workflow.builder import WorkflowBuilder\n"
            "workflow = WorkflowBuilder()\n"
            f"workflow.add_node('PythonCodeNode', 'step', {{'code': 'result = {i}'}})\n")
    gc.collect()
    gc.unfreeze()  # CPython 3.12 counts its immortal objects as frozen after a collection
    report = SmartDiscovery(tmp_path, workers=1, cache_dir=tmp_path / "cache").run()
    made = report.workflows["flow_0"]
    assert any(obj is made for obj in gc.get_objects(generation=2))
    assert len(report.workflows) == 20
    assert gc.isenabled()

    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        SmartDiscovery(tmp_path, workers=1, cache_dir=tmp_path / "cache").run()
        # Still frozen (a few may have been freed meanwhile), and nothing frozen in.
        assert frozen - 1000 < gc.get_freeze_count() <= frozen
        assert gc.isenabled()
    finally:
        gc.unfreeze()


def test_after_a_scan_the_server_keeps_nothing_of_its_screen(tmp_path):
    """The screen's facts of every file are the scan's: once it returns, the discovery
    (kept by the plugin for the next scan) holds none of them."""
    import gc
    import weakref

    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "flow.py").write_text(
        "from kailash.workflow.builder import WorkflowBuilder\n"
        "workflow = WorkflowBuilder()\n"
        "workflow.add_node('PythonCodeNode', 'step', {'code': 'result = 1'})\n")
    discovery = SmartDiscovery(tmp_path, workers=1, cache_dir=tmp_path / "cache")
    made = []
    screen_cache = discovery.screen_cache

    def kept(**kwargs):
        cache = screen_cache(**kwargs)
        made.append(weakref.ref(cache))
        return cache

    discovery.screen_cache = kept
    report = discovery.run()
    gc.collect()
    assert len(report.workflows) == 1
    assert made and all(ref() is None for ref in made)
