"""The local import graph: a file that reaches a DataFlow model module, however it
gets there, is ``skipped_dependent`` with the chain in its reason; clean packages,
clean cycles and installed libraries do not taint.

The tree is ``fixtures/engine/import_tree``, a whole small project. Every module
in it writes a marker with its pid when executed, so the tests can also tell
which modules ran (only clean ones, only in workers).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import runs

from nexus_dataflow_plugin.imports import ImportGraph
from nexus_dataflow_plugin.screen import ImportRef, analyze

FIXTURES = Path(__file__).parent / "fixtures" / "engine"
LAYOUT = {".": "import_tree"}  # the whole tree is the project (conftest's ``tree``)

# candidate -> the chain its reason must contain
DEPENDENT = {
    "workflows/direct_import_of_models.py": "workflows/direct_import_of_models.py -> app_models.py",
    "workflows/chain_through_two_modules.py": (
        "workflows/chain_through_two_modules.py -> services.py -> repository.py -> app_models.py"
    ),
    "workflows/from_package_import_module.py": (
        "workflows/from_package_import_module.py -> database/dataflow_models.py"
    ),
    "workflows/from_package_module_import_name.py": (
        "workflows/from_package_module_import_name.py -> database/dataflow_models.py"
    ),
    "workflows/dotted_import_of_model_module.py": (
        "workflows/dotted_import_of_model_module.py -> database/dataflow_models.py"
    ),
    "workflows/star_import_of_model_module.py": (
        "workflows/star_import_of_model_module.py -> database/dataflow_models.py"
    ),
    "workflows/imports_package_with_dataflow_init.py": (
        "workflows/imports_package_with_dataflow_init.py -> reporting/__init__.py"
    ),
    "workflows/imports_cycle_reaching_models.py": (
        "workflows/imports_cycle_reaching_models.py -> cycle_c.py -> cycle_d.py -> app_models.py"
    ),
    "app/workflows/relative_import_of_models.py": (
        "app/workflows/relative_import_of_models.py -> app/models.py"
    ),
    "app/workflows/relative_import_of_package.py": (
        "app/workflows/relative_import_of_package.py -> app/models.py"
    ),
    "app/workflows/relative_chain_through_package_module.py": (
        "app/workflows/relative_chain_through_package_module.py -> app/services.py -> app/models.py"
    ),
    "app/workflows/relative_import_of_sibling_models.py": (
        "app/workflows/relative_import_of_sibling_models.py -> app/workflows/ticket_models.py"
    ),
}
CLEAN = (
    "workflows/imports_clean_sibling_in_package.py",
    "workflows/imports_clean_package.py",
    "workflows/imports_clean_cycle.py",
    "workflows/imports_installed_libraries_only.py",
)
MODEL_MODULES = (
    "app_models.py",
    "database/dataflow_models.py",
    "reporting/__init__.py",
    "app/models.py",
    "app/workflows/ticket_models.py",
)
# Clean on their own, but they import models: they must not run either.
TAINTED_HELPERS = ("services.py", "repository.py", "cycle_c.py", "cycle_d.py", "app/services.py",
                   "reporting/formats.py")


@pytest.mark.parametrize("rel", sorted(DEPENDENT))
def test_dependent_files_are_skipped_with_the_chain_in_the_reason(report, rel):
    entry = report.file(rel)
    assert entry is not None, [e.path for e in report.files]
    assert entry.status == "skipped_dependent", entry.reason
    assert DEPENDENT[rel] in entry.reason
    assert entry.workflows == []


def test_chain_reason_names_the_model_that_taints(report):
    reason = report.file("workflows/chain_through_two_modules.py").reason
    assert "User" in reason and "line" in reason


def test_model_file_next_to_workflows_is_itself_skipped_model(report):
    assert report.file("app/workflows/ticket_models.py").status == "skipped_model"


@pytest.mark.parametrize("rel", CLEAN)
def test_clean_imports_do_not_taint(report, rel):
    entry = report.file(rel)
    assert entry.status == "registered", entry.reason
    assert entry.workflows == [Path(rel).stem]


def test_no_model_module_or_tainted_helper_ever_runs(report, tree):
    ran = {rel: runs(tree / rel) for rel in MODEL_MODULES + TAINTED_HELPERS + tuple(DEPENDENT)}
    assert {rel: pids for rel, pids in ran.items() if pids} == {}
    assert list(tree.rglob("*.db")) == []


def test_clean_local_modules_ran_only_in_workers(report, tree):
    for rel in ("database/queries.py", "cycle_a.py", "cycle_b.py", *CLEAN):
        pids = runs(tree / rel)
        assert pids, f"{rel} was expected to be imported by a worker"
        assert os.getpid() not in pids


def test_every_candidate_has_exactly_one_entry(report):
    paths = [e.path for e in report.files]
    assert len(paths) == len(set(paths))
    assert set(DEPENDENT) | set(CLEAN) <= set(paths)


# --- the graph itself, without a scan -----------------------------------------------------


@pytest.fixture
def graph(tree) -> ImportGraph:
    return ImportGraph([tree], lambda path: analyze(path.read_bytes()))


def test_clean_import_cycle_terminates_with_no_taint(graph, tree):
    assert graph.taint(tree / "cycle_a.py") is None
    assert graph.taint(tree / "cycle_b.py") is None


def test_cycle_reaching_models_terminates_with_the_shortest_chain(graph, tree):
    taint = graph.taint(tree / "cycle_c.py")
    assert taint is not None
    rel = [p.relative_to(tree.resolve()).as_posix() for p in taint.chain]
    assert rel == ["cycle_c.py", "cycle_d.py", "app_models.py"]
    # Entering the same cycle from the other side.
    taint = graph.taint(tree / "cycle_d.py")
    assert [p.name for p in taint.chain] == ["cycle_d.py", "app_models.py"]


def test_installed_libraries_are_not_followed(graph, tree):
    importer = tree / "workflows" / "imports_installed_libraries_only.py"
    for module in ("kailash.workflow.builder", "kailash", "json", "dataflow"):
        assert graph.resolve(importer, ImportRef(module, (), 0, 1)) == []
    assert graph.taint(importer) is None


def test_importing_a_package_runs_its_init_but_not_its_siblings(graph, tree):
    importer = tree / "workflows" / "imports_clean_sibling_in_package.py"
    files = graph.resolve(importer, ImportRef("database", ("queries",), 0, 1))
    rel = sorted(p.relative_to(tree.resolve()).as_posix() for p in files)
    assert rel == ["database/__init__.py", "database/queries.py"]


def test_a_relative_import_past_the_root_stops_at_the_root(graph, tree):
    """A level no path has (a cache entry may say 10**300) is the root, not a long loop."""
    importer = tree / "app" / "workflows" / "relative_import_of_models.py"
    assert graph.resolve(importer, ImportRef("models", (), 10**300, 1)) == []


def test_relative_import_resolves_against_the_package(graph, tree):
    importer = tree / "app" / "workflows" / "relative_import_of_models.py"
    files = graph.resolve(importer, ImportRef("models", ("Ticket",), 2, 1))
    assert [p.relative_to(tree.resolve()).as_posix() for p in files] == ["app/models.py"]
