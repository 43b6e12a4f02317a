"""The finder: the same candidate files as native Nexus discovery (patterns,
exclusions), each once even when two patterns match it, and paths confined to
the project (symlinks out of it refused, oversized files refused unread).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import place, runs, scan
from nexus.discovery import WorkflowDiscovery

from nexus_dataflow_plugin.config import Settings
from nexus_dataflow_plugin.finder import find_candidates, resolve_base

MAX_FILE_BYTES = Settings().max_file_bytes

FIXTURES = Path(__file__).parent / "fixtures" / "engine"

MATCHING = (
    "workflows/a.py",
    "b.workflow.py",
    "workflow_c.py",
    "d_workflow.py",
    "src/workflows/e.py",
    "app/workflows/f.py",
    "workflow_orders_workflow.py",  # matches two patterns
    "conftest_workflow.py",  # only the exact name conftest.py is excluded
)
NOT_MATCHING = (
    "utils.py",
    "workflows/sub/deep.py",
    "lib/workflows/g.py",
    "src/h_workflow.py",
    "workflows/readme.txt",
    "workflows/__init__.py",
    "workflows/setup.py",
    "workflows/conftest.py",
    "app/workflows/__init__.py",
    "workflow_notes.md",
)


class _NativeRecorder(WorkflowDiscovery):
    """Native discovery's own globbing and exclusions; records instead of importing."""

    def __init__(self, base_path: str) -> None:
        super().__init__(base_path)
        self.seen: list[str] = []

    def _load_workflow_from_file(self, file_path: Path) -> None:
        self.seen.append(file_path.relative_to(self.base_path).as_posix())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for rel in MATCHING + NOT_MATCHING:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    (tmp_path / "dir_workflow.py").mkdir()  # a directory that matches a pattern
    return tmp_path


def test_candidates_are_exactly_the_files_native_discovery_would_import(project):
    found = find_candidates(project, max_file_bytes=MAX_FILE_BYTES)
    assert sorted(c.rel for c in found.candidates) == sorted(MATCHING)
    native = _NativeRecorder(str(project))
    native.discover()
    assert sorted(set(native.seen)) == sorted(c.rel for c in found.candidates)
    # Same (pattern, file) matches, duplicates included, so names resolve as natively.
    assert sorted(found.order) == sorted(native.seen)


def test_a_file_matching_two_patterns_is_one_candidate(project):
    found = find_candidates(project, max_file_bytes=MAX_FILE_BYTES)
    assert [c.rel for c in found.candidates].count("workflow_orders_workflow.py") == 1
    assert found.order.count("workflow_orders_workflow.py") == 2


def test_order_follows_the_native_pattern_order(project):
    found = find_candidates(project, max_file_bytes=MAX_FILE_BYTES)
    first = {rel: found.order.index(rel) for rel in found.order[::-1]}
    patterns_in_order = [
        "workflows/a.py", "b.workflow.py", "workflow_c.py", "d_workflow.py",
        "src/workflows/e.py", "app/workflows/f.py",
    ]
    assert sorted(patterns_in_order, key=first.__getitem__) == patterns_in_order


def test_extra_exclusions(project):
    found = find_candidates(project, exclude=["workflows/*", "*_workflow.py"],
                            max_file_bytes=MAX_FILE_BYTES)
    assert sorted(c.rel for c in found.candidates) == sorted(
        ["b.workflow.py", "workflow_c.py", "src/workflows/e.py", "app/workflows/f.py"]
    )


def _project_linking_outside(root: Path) -> Path:
    """``root/project`` whose ``workflows/linked.py`` links to a workflow outside it."""
    outside = place(root / "outside", {"elsewhere.py": "good_pipeline.py"}, FIXTURES)
    base = root / "project"
    (base / "workflows").mkdir(parents=True)
    (base / "workflows" / "linked.py").symlink_to(outside / "elsewhere.py")
    return base


def test_symlink_out_of_the_project_is_refused(tmp_path):
    base = _project_linking_outside(tmp_path)
    [candidate] = find_candidates(base, max_file_bytes=MAX_FILE_BYTES).candidates
    assert candidate.refusal is not None and "outside the project" in candidate.refusal


def test_symlinked_directory_out_of_the_project_is_refused(tmp_path):
    outside = tmp_path / "shared_workflows"
    outside.mkdir()
    shutil.copyfile(FIXTURES / "good_pipeline.py", outside / "shared.py")
    base = tmp_path / "project"
    base.mkdir()
    (base / "workflows").symlink_to(outside, target_is_directory=True)
    [candidate] = find_candidates(base, max_file_bytes=MAX_FILE_BYTES).candidates
    assert candidate.rel == "workflows/shared.py"
    assert "outside the project" in candidate.refusal


def test_symlink_inside_the_project_is_followed(tmp_path):
    (tmp_path / "impl").mkdir()
    shutil.copyfile(FIXTURES / "good_pipeline.py", tmp_path / "impl" / "pipeline.py")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "pipeline.py").symlink_to(tmp_path / "impl" / "pipeline.py")
    [candidate] = find_candidates(tmp_path, max_file_bytes=MAX_FILE_BYTES).candidates
    assert candidate.refusal is None
    assert candidate.rel == "workflows/pipeline.py"


def test_broken_and_looping_symlinks_are_refused(tmp_path):
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "dangling.py").symlink_to(tmp_path / "gone.py")
    (tmp_path / "workflows" / "loop.py").symlink_to(tmp_path / "workflows" / "loop.py")
    found = {c.rel: c.refusal
             for c in find_candidates(tmp_path, max_file_bytes=MAX_FILE_BYTES).candidates}
    assert set(found) == {"workflows/dangling.py", "workflows/loop.py"}
    assert all(refusal and "symlink" in refusal for refusal in found.values())


def test_oversized_file_is_refused_unread(tmp_path):
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "generated.py").write_text("x = 1\n" * 2000)
    (tmp_path / "workflows" / "small.py").write_text("x = 1\n")
    found = {c.rel: c.refusal for c in find_candidates(tmp_path, max_file_bytes=1000).candidates}
    assert found["workflows/small.py"] is None
    assert "12,000 bytes" in found["workflows/generated.py"]
    assert "1,000-byte limit" in found["workflows/generated.py"]


def test_refused_files_are_errors_in_the_report_and_never_run(tmp_path):
    base = _project_linking_outside(tmp_path)
    (base / "workflows" / "dangling.py").symlink_to(tmp_path / "gone.py")
    started = time.monotonic()
    report = scan(base, timeout=2)
    assert time.monotonic() - started < 1.0  # decided without a worker
    assert {e.path: e.status for e in report.files} == {
        "workflows/linked.py": "error",
        "workflows/dangling.py": "error",
    }
    assert not (tmp_path / "outside" / "elsewhere.py.ran").exists()


def test_base_defaults_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_base(None) == Path(os.getcwd()).absolute()
    assert resolve_base("sub") == tmp_path / "sub"


def test_a_path_that_is_not_valid_utf8_is_refused_not_run(tmp_path):
    """A name with a byte that is not UTF-8 (``bad\\xff.py``) decodes to a lone surrogate,
    which no message to a file's process can carry: its process was never told the file
    and the scan waited forever. It is refused, naming the path; the others run."""
    (tmp_path / "workflows").mkdir()
    shutil.copyfile(FIXTURES / "good_pipeline.py", tmp_path / "workflows" / "good.py")
    bad = os.fsdecode(b"bad\xff.py")
    shutil.copyfile(FIXTURES / "good_pipeline.py", tmp_path / "workflows" / bad)
    report = scan(tmp_path, timeout=5)
    statuses = {e.path: (e.status, e.reason) for e in report.files}
    status, reason = statuses[f"workflows/{bad}"]
    assert status == "error" and "not valid UTF-8" in reason and "\\udcff" in reason
    assert statuses["workflows/good.py"][0] == "registered"
    assert runs(tmp_path / "workflows" / bad) == []

