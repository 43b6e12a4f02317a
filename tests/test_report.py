"""The report: one entry per candidate file with a relative POSIX path, one of the
eight statuses, a reason, the names it contributed and a duration; ``to_dict()``
is the JSON shape the CLI prints.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest
from conftest import scan
from kailash.workflow import Workflow

from nexus_dataflow_plugin import DiscoveryReport, FileResult
from nexus_dataflow_plugin.report import STATUSES

FIXTURES = Path(__file__).parent / "fixtures" / "engine"

LAYOUT = {
    "src/workflows/deep_pipeline.py": FIXTURES / "runnable_pipeline.py",
    "app/workflows/settings.py": FIXTURES / "constants_only.py",
    "workflows/models.py": FIXTURES / "models_from_dataflow_import.py",
    "app_models.py": FIXTURES / "import_tree" / "app_models.py",
    "workflows/uses_models.py": (
        FIXTURES / "import_tree" / "workflows" / "direct_import_of_models.py"
    ),
    "workflows/broken.py": FIXTURES / "syntax_error_at_line_4.py",
    "workflows/exits.py": FIXTURES / "calls_os_exit.py",
    "workflows/hangs.py": FIXTURES / "hang_at_import.py",
    "workflows/with_function.py": FIXTURES / "function_in_node_config.py",
    "orders.workflow.py": FIXTURES / "good_pipeline.py",
}
EXPECTED = {
    "src/workflows/deep_pipeline.py": "registered",
    "app/workflows/settings.py": "no_workflows",
    "workflows/models.py": "skipped_model",
    "workflows/uses_models.py": "skipped_dependent",
    "workflows/broken.py": "error",
    "workflows/exits.py": "crashed",
    "workflows/hangs.py": "timeout",
    "workflows/with_function.py": "not_transferable",
    "orders.workflow.py": "registered",
}


@pytest.fixture(scope="module")
def report(tree: Path) -> DiscoveryReport:
    """One scan of the ``LAYOUT`` (conftest's ``tree``), one worker per core."""
    return scan(tree, timeout=2, workers=None)


def test_statuses_are_exactly_the_eight_of_the_spec():
    assert set(STATUSES) == {
        "registered", "no_workflows", "skipped_model", "skipped_dependent",
        "timeout", "crashed", "error", "not_transferable",
    }


def test_one_entry_per_candidate_with_the_right_status(report):
    assert {e.path: e.status for e in report.files} == EXPECTED
    assert set(report.counts()) == set(STATUSES)  # every status appears in this tree


def test_to_dict_shape_is_json(report):
    data = report.to_dict()
    assert set(data) == {"workflows", "files"}
    assert json.loads(json.dumps(data)) == data
    assert sorted(data["workflows"]) == sorted(report.workflows) == [
        "deep_pipeline", "orders.workflow"
    ]
    for entry in data["files"]:
        assert set(entry) == {"path", "status", "reason", "workflows", "duration_s"}
        assert isinstance(entry["path"], str)
        assert entry["status"] in STATUSES
        assert isinstance(entry["reason"], str) and entry["reason"].strip()
        assert isinstance(entry["workflows"], list)
        assert all(isinstance(n, str) for n in entry["workflows"])
        assert isinstance(entry["duration_s"], float) and entry["duration_s"] >= 0


def test_paths_are_relative_posix_and_point_at_the_file(report):
    base = Path(report.base_path)
    for entry in report.files:
        path = PurePosixPath(entry.path)
        assert not path.is_absolute() and "\\" not in entry.path and ".." not in path.parts
        assert (base / entry.path).is_file()


def test_workflows_in_entries_match_the_report(report):
    listed = [name for e in report.files for name in e.workflows]
    assert sorted(listed) == sorted(report.workflows)
    assert all(isinstance(w, Workflow) for w in report.workflows.values())
    assert report.file("src/workflows/deep_pipeline.py").workflows == ["deep_pipeline"]


def test_durations_are_measured(report):
    hang = report.file("workflows/hangs.py")
    assert 1.0 <= hang.duration_s <= 5.0
    assert report.file("orders.workflow.py").duration_s > 0
    assert report.duration_s >= max(e.duration_s for e in report.files)


def test_reasons_are_actionable(report):
    reason = {e.path: e.reason for e in report.files}
    assert "line 4" in reason["workflows/broken.py"]
    assert "app_models.py" in reason["workflows/uses_models.py"]
    assert "User" in reason["workflows/models.py"]
    assert "2s" in reason["workflows/hangs.py"]
    assert "doubler" in reason["workflows/with_function.py"]


def test_helpers_summarise_and_look_up(report):
    assert report.file("workflows/nope.py") is None
    assert sorted(e.path for e in report.by_status("timeout", "crashed")) == [
        "workflows/exits.py", "workflows/hangs.py"
    ]
    assert list(report.counts()) == [s for s in STATUSES if s in report.counts()]
    summary = report.summary()
    assert "2 workflow(s) from 9 file(s)" in summary
    assert "1 timeout" in summary and "2 registered" in summary


def test_file_result_to_dict_rounds_the_duration():
    entry = FileResult("workflows/x.py", "registered", "ok", ["x"], 0.123456789)
    assert entry.to_dict() == {
        "path": "workflows/x.py",
        "status": "registered",
        "reason": "ok",
        "workflows": ["x"],
        "duration_s": 0.1235,
    }


def test_empty_project_gives_an_empty_report(tmp_path):
    report = scan(tmp_path, timeout=2)
    assert report.to_dict() == {"workflows": [], "files": []}
    assert "no candidate files" in report.summary()
