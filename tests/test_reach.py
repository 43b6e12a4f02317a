"""Nothing reaches DataFlow during discovery: every route a workflow file can take to a
model module, the static screen sees (then the model module never runs anywhere) or
the runtime guard stops (then DataFlow never acts: no database, no models registered);
imports that never run on import do not count.

The project is ``fixtures/reach/project``; ``fixtures/reach/outside`` supplies a
symlink target, a ``PYTHONPATH`` entry and the source of a sourceless ``.pyc``. Every
module writes a marker with its pid when it runs.
"""

from __future__ import annotations

import os
import py_compile
import re
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import runs, scan

from nexus_dataflow_plugin import SmartDiscovery
from nexus_dataflow_plugin.explain import explain
from nexus_dataflow_plugin.screen import analyze

FIXTURES = Path(__file__).parent / "fixtures" / "reach"

# Seen by the static screen: candidate -> the file its chain must end in.
STATIC = {
    "imports_models_through_importlib_literal.py": "dynamic_models.py",
    "imports_models_through_dunder_import.py": "dunder_models.py",
    "runs_models_with_run_module.py": "run_module_models.py",
    "runs_models_with_run_path.py": "run_path_models.py",
    "star_import_reaches_models_through_all.py": "star_pkg/models.py",
    "adds_own_dir_to_sys_path_then_imports_sibling.py": "workflows/sibling_models.py",
    "adds_own_dir_with_pathlib_then_imports_sibling.py": "workflows/sibling_models.py",
    "adds_shared_dir_whose_helper_imports_models.py": "shared/shared_models.py",
    "imports_models_in_zero_argument_factory.py": "factory_models.py",
    "imports_symlinked_model_package.py": "vendor_models_pkg/__init__.py",
    "imports_model_module_from_pythonpath.py": "pythonpath_models.py",
}
# Stopped by the runtime guard: candidate -> (status, the model module in its chain).
GUARDED = {
    "computed_module_name_swallowed_by_except_exception.py": (
        "skipped_dependent", "computed_models.py"),
    "exec_import_swallowed_by_except_import_error.py": ("skipped_dependent", "exec_models.py"),
    "config_driven_plugin_loader_with_bare_except.py": (
        "skipped_dependent", "plugins/billing_models.py"),
    "factory_reaches_models_at_call.py": ("skipped_dependent", "factory_models.py"),
    "constructs_dataflow_through_computed_attribute.py": ("skipped_model", None),
}
# Their imports of models never run on import: they are imported and registered.
NEVER_RUN_IMPORTS = (
    "imports_models_only_for_type_checking.py",
    "imports_models_in_function_with_arguments.py",
    "imports_models_under_main_guard.py",
    "imports_dataflow_library_nodes_at_run_time.py",
)
# Model modules only the static screen's candidates reach: they must never run.
NEVER_RUN = (
    "dynamic_models.py", "dunder_models.py", "run_module_models.py", "run_path_models.py",
    "star_pkg/models.py", "workflows/sibling_models.py", "type_checking_models.py",
    "shared/shared_models.py", "shared/shared_helpers.py",
)


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reach")
    base, outside, pythonpath = root / "project", root / "outside", root / "pythonpath"
    shutil.copytree(FIXTURES / "project", base)
    outside.mkdir()
    shutil.copytree(FIXTURES / "outside" / "vendor_models_pkg", outside / "vendor_models_pkg")
    (base / "linked_models").symlink_to(outside / "vendor_models_pkg", target_is_directory=True)
    pythonpath.mkdir()
    shutil.copyfile(FIXTURES / "outside" / "pythonpath_models.py",
                    pythonpath / "pythonpath_models.py")
    py_compile.compile(str(FIXTURES / "outside" / "compiled_models.py"),
                       cfile=str(base / "compiled_models.pyc"), doraise=True)
    return {"base": base, "outside": outside, "pythonpath": pythonpath}


@pytest.fixture(scope="module")
def report(layout):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(layout["pythonpath"]))  # the worker inherits sys.path
        return scan(layout["base"], timeout=10)


@pytest.mark.parametrize("name", sorted(STATIC))
def test_the_screen_sees_every_route_to_a_model_module(report, name):
    entry = report.file(f"workflows/{name}")
    assert entry.status == "skipped_dependent", entry.reason
    chain = re.search(r"\((.*)\)", entry.reason).group(1)
    assert chain.startswith(f"workflows/{name} -> ")
    assert STATIC[name] in chain.split(": ")[0].split(" -> ")[-1]


def test_a_sourceless_compiled_module_makes_its_importer_dependent_saying_it_cannot_be_read(
    report,
):
    entry = report.file("workflows/imports_sourceless_compiled_module.py")
    assert entry.status == "skipped_dependent", entry.reason
    assert "cannot read" in entry.reason and "compiled_models.pyc" in entry.reason
    assert "without source" in entry.reason


def test_a_sibling_model_module_among_the_workflows_is_itself_skipped(report):
    assert report.file("workflows/sibling_models.py").status == "skipped_model"


@pytest.mark.parametrize("name", NEVER_RUN_IMPORTS)
def test_imports_that_never_run_on_import_do_not_make_a_file_dependent(report, name):
    entry = report.file(f"workflows/{name}")
    assert entry.status == "registered", entry.reason
    assert entry.workflows == [Path(name).stem]


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_the_runtime_guard_stops_routes_no_reading_can_resolve(report, layout, name):
    status, model = GUARDED[name]
    entry = report.file(f"workflows/{name}")
    assert entry.status == status, entry.reason
    assert "runtime guard" in entry.reason
    assert entry.workflows == []
    stem = Path(name).stem
    assert re.search(rf"workflows/{stem}\.py:\d+ \({stem}\)", entry.reason), entry.reason
    if model is not None:
        module = model[:-3].replace("/", ".")
        line = line_of(layout["base"] / model, "db = DataFlow(")
        assert f"{model}:{line} ({module})" in entry.reason


def test_the_guard_names_the_line_of_the_candidate_that_reached_dataflow(report, layout):
    name = "constructs_dataflow_through_computed_attribute.py"
    line = line_of(layout["base"] / "workflows" / name, "engine = getattr(")
    assert f"workflows/{name}:{line} " in report.file(f"workflows/{name}").reason


def test_no_model_module_the_screen_saw_ever_runs(report, layout):
    base = layout["base"]
    ran = {rel: runs(base / rel) for rel in NEVER_RUN if runs(base / rel)}
    assert ran == {}
    assert runs(layout["outside"] / "vendor_models_pkg" / "__init__.py") == []
    assert runs(layout["pythonpath"] / "pythonpath_models.py") == []


def test_dataflow_never_acts_even_where_a_model_module_ran(report, layout):
    # The guarded model modules ran up to `DataFlow(...)`, in a worker, and no further.
    base = layout["base"]
    for rel in ("computed_models.py", "exec_models.py", "plugins/billing_models.py"):
        pids = runs(base / rel)
        assert pids and os.getpid() not in pids
    assert [p for p in layout["base"].parent.rglob("*.db")] == []
    assert not [p for p in base.rglob("*") if "migration" in p.name.lower()]


def test_every_candidate_has_exactly_one_entry(report, layout):
    files = sorted(p.name for p in (layout["base"] / "workflows").glob("*.py"))
    assert sorted(Path(e.path).name for e in report.files) == files


# --- the screen alone --------------------------------------------------------------


def _imports(source: str) -> list[str]:
    return [ref.module for ref in analyze(textwrap.dedent(source).encode()).imports]


@pytest.mark.parametrize("source", [
    "import importlib\nimportlib.import_module('pkg.models')\n",
    "from importlib import import_module\nimport_module('pkg.models')\n",
    "__import__('pkg.models')\n",
    "import runpy\nrunpy.run_module('pkg.models')\n",
    "import runpy\nrunpy.run_module(mod_name='pkg.models')\n",
    "import importlib\nNAME = 'pkg.models'\nimportlib.import_module(NAME)\n",
    "import importlib\nfor name in ['pkg.billing', 'pkg.models']:\n"
    "    importlib.import_module(name)\n",
    "import importlib\nPLUGINS = ('pkg.models',)\nfor p in PLUGINS:\n    __import__(p)\n",
])
def test_literal_dynamic_imports_are_imports(source):
    assert "pkg.models" in _imports(source)


@pytest.mark.parametrize("source", [
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.models\n",
    "import typing\nif typing.TYPE_CHECKING:\n    import pkg.models\n",
    "def helper(db):\n    import pkg.models\n",
    "if __name__ == '__main__':\n    import pkg.models\n",
    "def main():\n    import pkg.models\n    return 1\n\nif __name__ == '__main__':\n    main()\n",
    "def _private():\n    import pkg.models\n    return 1\n",
])
def test_imports_that_never_run_on_import_are_not_recorded(source):
    assert "pkg.models" not in _imports(source)


@pytest.mark.parametrize("source", [
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n    import pkg.models\n",
    "def helper(db):\n    import pkg.models\n\nhelper(1)\n",
    "def build():\n    import pkg.models\n    return object()\n",
    "class Config:\n    import pkg.models\n",
    "def register(fn):\n    return fn\n\n@register\ndef handler(request):\n    pass\n\n"
    "def uses(x):\n    import pkg.models\n\nCALLBACKS = [uses]\n",
])
def test_imports_that_run_on_import_or_in_a_factory_are_recorded(source):
    assert "pkg.models" in _imports(source)


def test_a_node_type_given_by_keyword_is_read():
    source = b"w.add_node(node_type='CSVReaderNode', node_id='read', config={})\n"
    assert analyze(source).node_types == ("CSVReaderNode",)


def test_a_file_using_a_model_node_by_keyword_is_served_with_the_apps_nodes(tmp_path):
    """Issue 15: not skipped any more; imported with a stand-in, rebuilt with the app's."""
    from dataflow import DataFlow

    db = DataFlow(f"sqlite:///{tmp_path / 'app.db'}")

    @db.model
    class Crate:
        name: str

    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "crate_intake.py").write_text(
        "from kailash.workflow.builder import WorkflowBuilder\n\n"
        "workflow = WorkflowBuilder()\n"
        "workflow.add_node(node_type='CrateCreateNode', node_id='create', config={})\n"
    )
    assert SmartDiscovery(tmp_path, timeout=5, cache=False).screen() == []  # passes the screen
    report = scan(tmp_path)
    entry = report.file("workflows/crate_intake.py")
    assert entry.status == "registered" and "Crate" in entry.reason
    node = report.workflows["crate_intake"]._node_instances["create"]
    assert type(node) is db._nodes["CrateCreateNode"]
    db.close()


def test_relative_dynamic_import_resolves_against_the_package(tmp_path):
    (tmp_path / "app" / "workflows").mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "workflows" / "__init__.py").write_text("")
    (tmp_path / "app" / "models.py").write_text(
        "from dataflow import DataFlow\ndb = DataFlow('sqlite:///x.db')\n")
    (tmp_path / "app" / "workflows" / "loads.py").write_text(
        "import importlib\nimportlib.import_module('..models', __package__)\n")
    [entry] = SmartDiscovery(tmp_path, timeout=5, cache=False).screen()
    assert entry.status == "skipped_dependent"
    assert "app/workflows/loads.py -> app/models.py" in entry.reason


def test_installed_distributions_on_the_path_are_not_screened(tmp_path):
    # kailash is installed: a file importing it stays clean although kailash's
    # own modules are not screened (nor needed to be).
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "plain.py").write_text(
        "import importlib\nimportlib.import_module('kailash.workflow.builder')\n")
    assert SmartDiscovery(tmp_path, timeout=5, cache=False).screen() == []
    assert any("site-packages" in p for p in sys.path)


def test_explain_shows_the_places_a_file_adds_and_runs(layout):
    base = layout["base"]
    discovery = SmartDiscovery(base, cache=False)
    ran = explain(discovery, base / "workflows" / "runs_models_with_run_path.py").to_dict()
    assert ran["runs_paths"] == [{"line": 10, "path": "run_path_models.py"}]
    assert ran["chain"] == ["workflows/runs_models_with_run_path.py", "run_path_models.py"]
    added = explain(discovery,
                    base / "workflows" / "adds_own_dir_to_sys_path_then_imports_sibling.py")
    assert added.to_dict()["sys_path_entries"] == [{"line": 10, "path": "workflows"}]
    compiled = explain(discovery, base / "workflows" / "imports_sourceless_compiled_module.py")
    assert compiled.screened is not None and compiled.screened.chain_unscreenable is True
