"""A small project with canary files and its manifest, for the frozen-discovery tests.

Every file that can run writes ``<file>.ran`` when executed (see
tests/fixtures/engine/README.md). ``make_project`` builds the manifest with a
real scan (isolated workers), checks the canaries fired there, and removes
their markers, so any marker found afterwards was left by the code under test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nexus_dataflow_plugin import manifest as m
from nexus_dataflow_plugin.config import load_settings

ENGINE = Path(__file__).resolve().parent / "fixtures" / "engine"
MANIFEST = "nexus-manifest.json"
FILES = {
    "workflows/good_pipeline.py": "good_pipeline.py",
    "workflows/runnable_pipeline.py": "runnable_pipeline.py",
    "workflows/models.py": "models_from_dataflow_import.py",
}
HELPER_FLOW = '''"""A workflow whose node code comes from a project module."""

import os

from kailash.workflow.builder import WorkflowBuilder

from steps import CODE

with open(__file__ + ".ran", "a") as _marker:
    _marker.write(f"{os.getpid()}\\n")

workflow = WorkflowBuilder()
workflow.add_node("PythonCodeNode", "step", {"code": CODE})
'''
STEPS = 'CODE = "result = {\'value\': 1}"\n'
NAMES = {"good_pipeline", "runnable_pipeline", "helper_flow"}
SCANNED = ["workflows/good_pipeline.py", "workflows/helper_flow.py",
           "workflows/runnable_pipeline.py"]


def ran(project: Path) -> list[str]:
    """Project files that have executed, as relative paths."""
    return sorted(p.relative_to(project).as_posix()[: -len(".ran")]
                  for p in project.rglob("*.ran"))


def make_project(root: Path) -> Path:
    """The project at ``root`` with ``MANIFEST`` frozen from it; no canary has fired since."""
    for rel, fixture in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ENGINE / fixture, root / rel)
    (root / "workflows/helper_flow.py").write_text(HELPER_FLOW)
    (root / "steps.py").write_text(STEPS)
    m.write(m.freeze(root, load_settings(root, {"workers": 1})), root / MANIFEST)
    assert ran(root) == SCANNED, "the freeze scan ran the workflow files, in workers"
    for marker in root.rglob("*.ran"):
        marker.unlink()
    return root
