"""What the package declares matches what it depends on.

``requires-python`` is the strictest of the dependencies' own (a lower one
promises installs that pip then cannot satisfy), ruff targets that version,
and the ``postgres`` extra pulls the driver DataFlow imports for PostgreSQL.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def lower_bound(specifier: str) -> tuple[int, ...]:
    (spec,) = [s for s in SpecifierSet(specifier) if s.operator == ">="]
    return tuple(int(part) for part in spec.version.split("."))


def test_requires_python_is_the_strictest_of_the_dependencies() -> None:
    needed = {}
    for line in PROJECT["dependencies"]:
        name = Requirement(line).name
        requires = importlib.metadata.metadata(name).get("Requires-Python")
        if requires:
            needed[name] = lower_bound(requires)
    ours = lower_bound(PROJECT["requires-python"])
    assert ours == max(needed.values()), (PROJECT["requires-python"], needed)


def test_ruff_targets_the_oldest_python_we_support() -> None:
    major, minor = lower_bound(PROJECT["requires-python"])[:2]
    assert PYPROJECT["tool"]["ruff"]["target-version"] == f"py{major}{minor}"


def test_the_postgres_extra_pulls_the_driver_dataflow_imports() -> None:
    (line,) = PROJECT["optional-dependencies"]["postgres"]
    wanted = Requirement(line)
    assert wanted.name == "kailash-dataflow" and wanted.extras
    provided = [
        Requirement(r).name
        for r in importlib.metadata.requires("kailash-dataflow") or []
        if any(f'extra == "{extra}"' in r for extra in wanted.extras)
    ]
    # The module DataFlow's PostgreSQL table creation imports, and says is required.
    import dataflow.migrations.sync_ddl_executor as ddl

    source = Path(ddl.__file__).read_text()
    assert re.search(r"^\s*import psycopg2\b", source, re.M)
    assert "psycopg2-binary" in provided, provided
