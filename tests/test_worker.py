"""The worker's import rule, enforced: what a candidate finds in its process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The standard library, Kailash, and these modules of ours (see worker's docstring).
ALLOWED_OWN = {
    "nexus_dataflow_plugin", "nexus_dataflow_plugin.worker", "nexus_dataflow_plugin.protocol",
    "nexus_dataflow_plugin.probe", "nexus_dataflow_plugin.paths",
    "nexus_dataflow_plugin.guard", "nexus_dataflow_plugin.transfer",
}


def _modules(statement: str) -> set[str]:
    probe = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=env, check=True, timeout=120)
    return set(json.loads(out.stdout))


def test_a_read_ahead_process_imports_only_the_modules_the_worker_names_for_it():
    """It imports ``screen`` and ``declarative`` after its fork (a file's process never
    has them); they follow the worker's rule."""
    statement = ("import nexus_dataflow_plugin.worker; "
                 "from nexus_dataflow_plugin import declarative, screen")
    modules = _modules(statement) - _modules("pass")
    assert not {name.split(".")[0] for name in modules} & {"nexus", "dataflow", "fastapi"}
    own = {name for name in modules if name.split(".")[0] == "nexus_dataflow_plugin"}
    read_ahead = {"nexus_dataflow_plugin.declarative", "nexus_dataflow_plugin.screen",
                  "nexus_dataflow_plugin.report"}
    assert own <= ALLOWED_OWN | read_ahead, sorted(own - ALLOWED_OWN - read_ahead)


def test_the_worker_imports_only_the_standard_library_kailash_and_the_modules_it_names():
    # What importing the worker adds to a bare interpreter (site's own start-up aside).
    modules = _modules("import nexus_dataflow_plugin.worker") - _modules("pass")
    tops = {name.split(".")[0] for name in modules}
    assert "nexus" not in tops and "dataflow" not in tops, sorted(tops)
    own = {name for name in modules if name.split(".")[0] == "nexus_dataflow_plugin"}
    assert own <= ALLOWED_OWN, sorted(own - ALLOWED_OWN)
    stdlib = set(sys.stdlib_module_names)
    foreign = {t for t in tops if t not in stdlib and t != "nexus_dataflow_plugin"
               and not t.startswith("_")}
    # Kailash and what Kailash itself imports at its core.
    assert "kailash" in foreign
    kailash_deps = foreign - {"kailash"}
    assert not {"nexus", "dataflow", "fastapi", "uvicorn"} & kailash_deps, sorted(kailash_deps)
