"""The shop project over real HTTP, smart discovery enabled each of the four ways.

A real Nexus server with ``auto_discovery=True`` runs in its own process, with
a copy of tests/fixtures/project_shop/project as its working directory (where
Nexus discovers from), served by uvicorn on 127.0.0.1 on a free port
(tests/e2e/server.py's ``running_nexus``). Over HTTP, using the endpoints the
Kailash gateway mounts per workflow (``POST /workflows/<name>/execute`` with
``{"inputs": {...}}``, ``GET /workflows``, ``GET /health``):

- a discovered plain workflow runs and returns its result;
- records are created, read and listed through the workflows
  ``register_dataflow_workflows`` registered (and, for the plugin ways, through
  the model-dependent workflow loaded with ``plugin.load_workflows``);
- the rows are then read from the database itself (sqlite3 / psycopg2).

On SQLite (a file in tmp_path) and on PostgreSQL (the server of the
``postgres_url`` fixture; one fresh database per server). For each database the
four servers start side by side (independent processes); each test then drives
its own server and stops it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from conftest import pg_rows, sqlite_rows
from shop_harness import harness

WAYS = ("use_plugin", "add_plugin", "env", "pyproject")
PLUGIN_WAYS = ("use_plugin", "add_plugin")
DEPENDENT = "workflows/new_arrival.py"


@dataclass
class Database:
    url: str
    rows: Callable[[str], list[tuple[Any, ...]]]  # table -> [(id, name, price, sku)] by id


PRODUCTS = "SELECT id, name, price, sku FROM {table} ORDER BY id"


def _sqlite(path: Path) -> Database:
    def rows(table: str) -> list[tuple[Any, ...]]:
        return sqlite_rows(path, PRODUCTS.format(table=table))

    return Database(f"sqlite:///{path}", rows)


def _postgres(url: str) -> Database:
    def rows(table: str) -> list[tuple[Any, ...]]:
        return [(i, n, float(p), s) for i, n, p, s in pg_rows(url, PRODUCTS.format(table=table))]

    return Database(url, rows)


@contextmanager
def _pg_databases(server_url: str, count: int) -> Iterator[list[str]]:
    """``count`` new, empty databases on the test PostgreSQL server, dropped afterwards."""
    import psycopg2
    from psycopg2 import sql

    names = [f"ndp_e2e_{uuid.uuid4().hex[:16]}" for _ in range(count)]

    def admin(statements: list[Any], params: Any = None) -> None:
        conn = psycopg2.connect(server_url, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement, params)
        finally:
            conn.close()

    created: list[str] = []
    try:
        for name in names:
            admin([sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))])
            created.append(name)
        yield [urlunsplit(urlsplit(server_url)._replace(path="/" + name)) for name in names]
    finally:
        for name in created:
            admin(
                [
                    sql.SQL(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = {} AND pid <> pg_backend_pid()"
                    ).format(sql.Literal(name)),
                    sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)),
                ]
            )


@dataclass
class Server:
    app: Any  # harness.AppProcess
    project: Path
    database: Database
    result: dict[str, Any] | None = None
    failure: AssertionError | None = None


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """The shop served four ways on one kind of database, started side by side."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            base = tmp_path_factory.mktemp("sqlite")
            databases = [_sqlite(base / f"shop_{way}.db") for way in WAYS]
        else:
            urls = stack.enter_context(
                _pg_databases(request.getfixturevalue("postgres_url"), len(WAYS))
            )
            databases = [_postgres(url) for url in urls]
        fleet: dict[str, Server] = {}
        for way, database in zip(WAYS, databases, strict=True):
            tmp = tmp_path_factory.mktemp(f"{request.param}_{way}")
            project = harness.copy_project(tmp / "shop")
            config, env = configure(way, project, database.url)
            app = harness.AppProcess(project, tmp / "run", config, harness.clean_env(**env))
            stack.callback(app.stop)
            fleet[way] = Server(app.start(), project, database)
        for server in fleet.values():
            try:
                server.result = server.app.wait_result(timeout=180)
            except AssertionError as exc:
                server.failure = exc
        yield fleet


def configure(way: str, project: Path, db_url: str) -> tuple[dict[str, Any], dict[str, str]]:
    config: dict[str, Any] = {"way": way, "serve": True}
    env = {"SHOP_DATABASE_URL": db_url}
    if way in PLUGIN_WAYS:
        config["load"] = [DEPENDENT]
    if way == "use_plugin":
        env["NEXUS_DATAFLOW_WORKERS"] = "1"
    elif way == "add_plugin":
        config["options"] = {"timeout": 20, "workers": 1}
    elif way == "env":
        env.update(NEXUS_DATAFLOW_COMPATIBLE="1", NEXUS_DATAFLOW_WORKERS="1")
    elif way == "pyproject":
        (project / "pyproject.toml").write_text(
            "[tool.nexus]\ndataflow_compatible = true\ndataflow_workers = 1\n"
        )
    return config, env


def execute(client: httpx.Client, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/workflows/{name}/execute", json={"inputs": inputs})
    assert response.status_code == 200, (name, response.status_code, response.text[:2000])
    return response.json()["outputs"]


@pytest.mark.parametrize("way", WAYS)
def test_shop_over_http(servers: dict[str, Server], way: str) -> None:
    server = servers[way]
    if server.failure is not None:
        raise server.failure
    app, project, database, result = server.app, server.project, server.database, server.result
    assert result is not None
    table = result["table"]
    with httpx.Client(base_url=result["base_url"], timeout=60) as client:
        assert client.get("/health").json()["status"] == "healthy"
        served = client.get("/workflows").json()
        assert {"pricing_workflow.quote", "greet", "product_create"} <= set(served)
        assert "catalog.quick_add" not in served  # the model file was never imported
        assert "bad name_workflow" not in served

        # A discovered plain workflow (built in a worker, rebuilt in the server).
        quote = execute(client, "pricing_workflow.quote", {"net": 10})
        assert quote["quote"]["result"] == {"net": 10.0, "gross": 12.0}
        # The explicit registration of a discovered name is what is served.
        greeting = execute(client, "greet", {"name": "Ada"})["greet"]["result"]
        assert greeting == {"greeting": "Hello from the app, Ada"}

        # DataFlow CRUD through the registered workflows.
        created = execute(
            client, "product_create", {"id": 1, "name": "Widget", "price": 2.5, "sku": "W-1"}
        )["product_create"]
        assert (created["id"], created["name"]) == (1, "Widget")
        execute(client, "product_create", {"id": 2, "name": "Gizmo", "price": 7.0})
        read = execute(client, "product_read", {"id": 1})["product_read"]
        assert read["found"] is True
        assert (read["name"], read["price"], read["sku"]) == ("Widget", 2.5, "W-1")
        expected = [(1, "Widget", 2.5, "W-1"), (2, "Gizmo", 7.0, "")]

        if way in PLUGIN_WAYS:
            # The skipped_dependent file, loaded explicitly: writes with the app's DataFlow.
            arrival = execute(client, "new_arrival", {"id": 3, "name": "Gadget", "price": 4.0})
            assert arrival["new_arrival"]["id"] == 3
            expected.append((3, "Gadget", 4.0, ""))
        else:
            missing = client.post("/workflows/new_arrival/execute", json={"inputs": {}})
            assert missing.status_code == 404

        listed = execute(client, "product_list", {"limit": 50})["product_list"]
        assert sorted((r["id"], r["name"]) for r in listed["records"]) == [
            (i, n) for i, n, _, _ in expected
        ]

        # The rows, read from the database itself while the server runs.
        assert database.rows(table) == expected
    assert app.stop() == 0, app.stderr_tail()

    # The model module ran once, in the server process: the app's own import.
    assert harness.ran(project / "workflows/catalog.py") == [result["pid"]]
    assert result["report"]["summary"].startswith("3 workflow(s) from 5 file(s)")
    assert database.rows(table) == expected  # still there after shutdown
