"""DataFlow CRUD workflows over real HTTP, on SQLite and on PostgreSQL.

A DataFlow with two models, registered with register_dataflow_workflows(), is
served by a real Nexus server (uvicorn on 127.0.0.1, see server.py). Records
are created, read, listed, counted, updated and deleted with
``POST /workflows/<name>/execute``; the rows are then checked in the database
itself (sqlite3 / psycopg2), not through DataFlow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import pg_rows, sqlite_rows
from dataflow import DataFlow
from nexus import Nexus

from nexus_dataflow_plugin.dataflow_workflows import (
    ERR_DATABASE_URL_REJECTED,
    OPERATIONS,
    register_dataflow_workflows,
)

from .server import running_nexus

Rows = Callable[[str], list[tuple[Any, ...]]]


def make_db(url: str) -> DataFlow:
    # A small pool: the test PostgreSQL cluster is shared by the whole suite.
    db = DataFlow(url, enable_model_persistence=False, pool_size=2, pool_max_overflow=2)

    @db.model
    class Product:
        id: int
        name: str
        price: float
        sku: str = ""

    @db.model
    class Order:
        id: int
        customer: str
        quantity: int

    db.create_tables()
    return db


@pytest.fixture
def app() -> Iterator[Nexus]:
    app = Nexus(auto_discovery=False, enable_durability=False, enable_auth=False)
    yield app
    app.close()  # running_nexus() already stopped it; close() is idempotent


def execute(client: httpx.Client, name: str, body: dict[str, Any]) -> Any:
    response = client.post(f"/workflows/{name}/execute", json=body)
    assert response.status_code == 200, (name, response.status_code, response.text)
    outputs = response.json()["outputs"]
    return outputs[name]  # node id == workflow name (no prefix used here)


def run_scenario(app: Nexus, db: DataFlow, rows: Rows) -> None:
    registered = register_dataflow_workflows(app, db)
    assert sorted(registered) == sorted(
        f"{model}_{op}" for model in ("product", "order") for op in OPERATIONS
    )
    products = db.get_model_info("Product")["table_name"]
    orders = db.get_model_info("Order")["table_name"]

    with running_nexus(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        created = execute(
            client,
            "product_create",
            {"inputs": {"id": 1, "name": "Widget", "price": 2.5, "sku": "W-1"}},
        )
        assert created["name"] == "Widget"
        execute(client, "product_create", {"inputs": {"id": 2, "name": "Gadget", "price": 7.0}})
        # the legacy {"parameters": ...} body (what the Nexus CLI sends) maps the same way
        execute(client, "product_create", {"parameters": {"id": 3, "name": "Gizmo", "price": 1}})
        execute(
            client,
            "order_create",
            {"inputs": {"id": 1, "customer": "ada", "quantity": 2}},
        )

        read = execute(client, "product_read", {"inputs": {"id": 2}})
        assert (read["id"], read["name"], read["found"]) == (2, "Gadget", True)

        listed = execute(client, "product_list", {"inputs": {"limit": 100}})
        assert sorted(r["name"] for r in listed["records"]) == ["Gadget", "Gizmo", "Widget"]

        assert execute(client, "product_count", {"inputs": {}})["count"] == 3
        cheap = execute(client, "product_count", {"inputs": {"filter": {"price": {"$lt": 5}}}})
        assert cheap["count"] == 2

        updated = execute(
            client,
            "product_update",
            {"inputs": {"filter": {"id": 1}, "fields": {"name": "Widget v2", "price": 3.0}}},
        )
        assert updated["updated"] is True  # SQLite adds rows_affected, PostgreSQL the record

        deleted = execute(client, "product_delete", {"inputs": {"id": 3}})
        assert deleted["deleted"] is True

        # a request cannot point the node at another database
        response = client.post(
            "/workflows/product_create/execute",
            json={"inputs": {"id": 9, "name": "x", "price": 1, "database_url": "sqlite:///x.db"}},
        )
        assert response.status_code == 400
        assert response.json() == {"error": ERR_DATABASE_URL_REJECTED}

        listed = execute(client, "order_list", {"inputs": {}})
        assert [r["customer"] for r in listed["records"]] == ["ada"]

        info = client.get("/workflows/product_create/workflow/info").json()
        assert [n["type"] for n in info["nodes"]] == ["ProductCreateNode"]

    assert rows(f'SELECT id, name, price, sku FROM "{products}" ORDER BY id') == [
        (1, "Widget v2", 3.0, "W-1"),
        (2, "Gadget", 7.0, ""),
    ]
    assert rows(f'SELECT id, customer, quantity FROM "{orders}" ORDER BY id') == [(1, "ada", 2)]


def test_dataflow_crud_over_http_sqlite(app: Nexus, tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    db = make_db(f"sqlite:///{path}")

    try:
        run_scenario(app, db, functools.partial(sqlite_rows, path))
    finally:
        db.close()


@pytest.mark.postgres
def test_dataflow_crud_over_http_postgresql(app: Nexus, fresh_pg_database: str) -> None:
    db = make_db(fresh_pg_database)

    rows = functools.partial(pg_rows, fresh_pg_database)

    try:
        run_scenario(app, db, rows)
    finally:
        db.close()
