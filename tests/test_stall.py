"""A screen that cannot be stalled and never raises.

- A file whose parse takes longer than the per-file timeout (CPython 3.11 parses a
  600 KB f-string in about 20 s) ends ``timeout`` with a reason, screened in a
  subprocess that is killed; the other files are screened and imported as usual.
- Import names and paths no file system can hold (longer than a file name may be,
  NUL bytes) are simply not project modules: the scan, and ``Nexus.start()``, go on.
- Whatever a file contains, nothing raises out of the screen or the import graph.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import scan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_dataflow_plugin import SmartDiscovery
from nexus_dataflow_plugin.cache import IN_PROCESS_MAX_BYTES, ScreenCache
from nexus_dataflow_plugin.imports import ImportGraph

FIXTURES = Path(__file__).parent / "fixtures" / "stall"

WORKFLOW = """from kailash.workflow.builder import WorkflowBuilder

workflow = WorkflowBuilder()
workflow.add_node("PythonCodeNode", "step", {"code": "result = {'ok': True}"})
"""
# Large, slow to parse only in the linear sense: screened out of process, correctly.
LARGE_MODEL_FILE = "from dataflow import DataFlow\n\n" + "PADDING = 1\n" * 4000 + (
    "db = DataFlow('sqlite:///large.db')\n")


def huge_fstring(kilobytes: int = 600) -> str:
    """An f-string of ``{a}`` fields: CPython 3.11's parser is quadratic in it."""
    return 'a = 1\nx = f"' + "{a}" * (kilobytes * 1024 // 3) + '"\n' + WORKFLOW


@pytest.fixture(scope="module")
def stalled_scan(tmp_path_factory):
    base = tmp_path_factory.mktemp("stall")
    (base / "workflows").mkdir()
    (base / "workflows" / "huge_fstring_parses_in_quadratic_time.py").write_text(huge_fstring())
    (base / "workflows" / "large_model_file.py").write_text(LARGE_MODEL_FILE)
    (base / "workflows" / "plain_workflow.py").write_text(WORKFLOW)
    for fixture in FIXTURES.glob("*.py"):
        shutil.copyfile(fixture, base / "workflows" / fixture.name)
    return scan(base, timeout=2)


def test_a_file_whose_screen_outlasts_the_timeout_is_a_timeout_with_a_reason(stalled_scan):
    entry = stalled_scan.file("workflows/huge_fstring_parses_in_quadratic_time.py")
    assert entry.status == "timeout", entry.reason
    assert "Screening it" in entry.reason and "2s" in entry.reason
    assert entry.workflows == []


def test_a_large_file_is_still_screened_correctly_out_of_process(stalled_scan):
    assert len(LARGE_MODEL_FILE.encode()) > IN_PROCESS_MAX_BYTES
    entry = stalled_scan.file("workflows/large_model_file.py")
    assert entry.status == "skipped_model", entry.reason


def test_the_other_files_are_screened_and_imported_as_usual(stalled_scan):
    for name in ("plain_workflow.py", "imports_an_over_long_module_name.py",
                 "imports_names_with_nul_and_dots.py"):
        entry = stalled_scan.file(f"workflows/{name}")
        assert entry.status == "registered", (name, entry.reason)


def test_a_stalled_screen_is_not_cached_as_an_answer(tmp_path):
    path = tmp_path / "huge_fstring_parses_in_quadratic_time.py"
    path.write_text(huge_fstring(300))
    cache = ScreenCache(tmp_path, tmp_path / "cache", timeout=0.2)
    assert cache.facts(path).stalled
    cache.save()
    assert ScreenCache(tmp_path, tmp_path / "cache").digest(path) is None


# --- nothing raises out of the screen or the graph ----------------------------------

NAME = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(alphabet="ab.\x00/", min_size=1, max_size=20),
    st.integers(200, 6000).map(lambda n: "m" * n),
    st.integers(1, 40).map(lambda n: ".".join(["pkg"] * n)),
)


@st.composite
def hostile_import_sources(draw) -> str:
    lines = ["import importlib, runpy, sys"]
    for _ in range(draw(st.integers(1, 6))):
        name = draw(NAME)
        lines.append(draw(st.sampled_from([
            "importlib.import_module({!r})", "__import__({!r})", "runpy.run_module({!r})",
            "runpy.run_path({!r})", "sys.path.insert(0, {!r})", "__all__ = [{!r}]",
        ])).format(name))
        if name.isidentifier():
            lines.append(f"from . import {name}")
            lines.append(f"from {'.' * draw(st.integers(0, 60))}{name} import *")
    return "\n".join(lines) + "\n"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_import_sources())
def test_the_import_graph_never_raises_whatever_names_a_file_imports(source):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "pkg").mkdir()
        (base / "pkg" / "__init__.py").write_text(source)
        candidate = base / "pkg" / "candidate.py"
        candidate.write_text(source)
        cache = ScreenCache(base, persist=False, timeout=5)
        graph = ImportGraph([base, base / "pkg"], cache.facts)
        graph.taint(candidate.resolve())
        graph.own_model(candidate.resolve())


def test_a_module_whose_screen_stalls_makes_its_importers_dependent_not_clean(tmp_path):
    (tmp_path / "workflows").mkdir()
    (tmp_path / "huge_fstring_helpers.py").write_text(huge_fstring(300))
    (tmp_path / "workflows" / "imports_a_module_too_slow_to_screen.py").write_text(
        "import huge_fstring_helpers\n" + WORKFLOW)
    [entry] = SmartDiscovery(tmp_path, timeout=0.5, cache=False).screen()
    assert entry.status == "skipped_dependent", entry.reason
    assert "cannot read" in entry.reason and "within the timeout" in entry.reason
