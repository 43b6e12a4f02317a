"""Discovered workflows built from the app's models, over real HTTP, on SQLite and PostgreSQL.

The seed registers DataFlow workflows by hand (``register_production_workflows(app,
db)``). Here the app only imports its models and starts a real Nexus server with
``auto_discovery=True`` and the plugin; discovery finds a file that names the
models' nodes (``add_node("<Model>CreateNode", ...)``, no import of the models) and
a file that imports the models, loaded by the one call (``load_dependents()``, or
the ``NEXUS_DATAFLOW_LOAD_DEPENDENTS=1`` setting). Both write rows, read back from
the database itself. ``models.py`` appends the executing pid to ``models.py.ran``:
it ran once, by the app's import. ``nexus-dataflow scan`` run on the same project
(another process, no models loaded) gives every file the status the server gave it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import pg_rows, sqlite_rows
from nexus import Nexus

from nexus_dataflow_plugin import DataFlowCompatiblePlugin, plugin_of

from .server import running_nexus

Rows = Callable[[str], list[tuple[Any, ...]]]
DATABASE_ENV = "SHOP_DATABASE_URL"

MODELS = '''
import os

with open(__file__ + ".ran", "a") as _marker:
    _marker.write(f"{{os.getpid()}}\\n")

from dataflow import DataFlow

db = DataFlow(os.environ["{env}"], enable_model_persistence=False, pool_size=2,
              pool_max_overflow=2)


@db.model
class {model}:
    id: int
    email: str


db.create_tables()
'''

# The seed's pattern, as a discovered file: the models' node by name, no import.
SIGNUP = '''
from kailash.workflow.builder import WorkflowBuilder

workflow = WorkflowBuilder()
workflow.add_node("{model}CreateNode", "signup", {{}})
'''

# Imports the models: skipped by discovery, loaded in the server by the one call.
REFERRAL = '''
from kailash.workflow.builder import WorkflowBuilder

from models import {model}  # noqa: F401

workflow = WorkflowBuilder()
workflow.add_node("{model}CreateNode", "referral", {{}})
'''

# A node type neither a library nor a model provides: an error, in both places.
MISTYPED = '''
from kailash.workflow.builder import WorkflowBuilder

workflow = WorkflowBuilder()
workflow.add_node("{model}sCreateNode", "signup", {{}})
'''


def write_project(base: Path, model: str) -> Path:
    (base / "workflows").mkdir()
    (base / "models.py").write_text(MODELS.format(env=DATABASE_ENV, model=model))
    for name, template in (("signup", SIGNUP), ("referral", REFERRAL), ("mistyped", MISTYPED)):
        (base / "workflows" / f"{name}.py").write_text(template.format(model=model))
    return base


@pytest.fixture
def app_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """This test process as the app: imports ``models`` from the project, as an app does."""
    opened: list[Any] = []
    bases: list[Path] = []

    def start(base: Path, url: str) -> Any:
        bases.append(base)
        monkeypatch.setenv(DATABASE_ENV, url)
        monkeypatch.chdir(base)
        monkeypatch.syspath_prepend(str(base))
        import models  # noqa: PLC0415 - the app's own import of its models

        opened.append(models.db)
        return models

    yield start
    for db in opened:
        db.close()
    forget_project_modules(bases)


def forget_project_modules(bases: list[Path]) -> None:
    """Drop the project's modules (``models``) so the next test's project is imported
    afresh; libraries stay (a second copy of a C extension's module can crash)."""
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if any(origin.startswith(str(base)) for base in bases):
            del sys.modules[name]


def execute(client: httpx.Client, name: str, inputs: dict[str, Any]) -> Any:
    response = client.post(f"/workflows/{name}/execute", json={"inputs": inputs})
    assert response.status_code == 200, (name, response.status_code, response.text)
    return response.json()["outputs"]


def scan(base: Path, url: str) -> dict[str, Any]:
    """``nexus-dataflow scan --json`` in a process of its own, as CI would run it."""
    env = {**os.environ, DATABASE_ENV: url}
    proc = subprocess.run(
        [sys.executable, "-m", "nexus_dataflow_plugin.cli", "scan", "--json", str(base)],
        capture_output=True, text=True, timeout=120, env=env, cwd=base,
    )
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


def run_scenario(base: Path, url: str, model: str, start_app: Callable[..., Any],
                 rows: Rows, by_setting: bool) -> None:
    models = start_app(write_project(base, model), url)
    table = models.db.get_model_info(model)["table_name"]
    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    app.add_plugin(DataFlowCompatiblePlugin(cache=False, workers=1,
                                            load_dependents=True if by_setting else None))

    with running_nexus(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        plugin = plugin_of(app)
        if not by_setting:
            loaded = plugin.load_dependents()  # on the running server: served at once
            assert (list(loaded.workflows), loaded.refused) == (["referral"], {})
        report = plugin.report
        created = execute(client, "signup", {"id": 1, "email": "ada@example.com"})
        assert created["signup"]["email"] == "ada@example.com"
        execute(client, "referral", {"id": 2, "email": "bob@example.com"})
        assert client.post("/workflows/mistyped/execute", json={"inputs": {}}).status_code == 404
        info = client.get("/workflows/signup/workflow/info").json()
        assert [n["type"] for n in info["nodes"]] == [f"{model}CreateNode"]
        for name, node_id in (("signup", "signup"), ("referral", "referral")):
            node = app._workflows[name]._node_instances[node_id]
            assert type(node) is models.db._nodes[f"{model}CreateNode"]  # the app's own

    assert rows(f'SELECT id, email FROM "{table}" ORDER BY id') == [
        (1, "ada@example.com"), (2, "bob@example.com"),
    ]
    server = {e.path: (e.status, e.workflows) for e in report.files}
    assert server == {
        "workflows/mistyped.py": ("error", []),
        "workflows/referral.py": ("skipped_dependent", ["referral"]),
        "workflows/signup.py": ("registered", ["signup"]),
    }
    scanned = scan(base, url)
    statuses = {f["path"]: f["status"] for f in scanned["files"]}
    assert statuses == {path: status for path, (status, _) in server.items()}
    signup = next(f for f in scanned["files"] if f["path"] == "workflows/signup.py")
    assert f"{model} (models.py)" in signup["reason"] and signup["workflows"] == ["signup"]
    assert (base / "models.py.ran").read_text().split() == [str(os.getpid())]


def test_model_workflows_are_discovered_and_served_on_sqlite(
    tmp_path: Path, app_process: Callable[..., Any]
) -> None:
    path = tmp_path / "shop.db"
    base = tmp_path / "project"
    base.mkdir()
    rows = functools.partial(sqlite_rows, path)
    run_scenario(base, f"sqlite:///{path}", "Subscriber", app_process, rows, by_setting=False)


@pytest.mark.postgres
def test_model_workflows_are_discovered_and_served_on_postgresql(
    tmp_path: Path, app_process: Callable[..., Any], fresh_pg_database: str
) -> None:
    rows = functools.partial(pg_rows, fresh_pg_database)

    run_scenario(tmp_path, fresh_pg_database, "Applicant", app_process, rows, by_setting=True)
