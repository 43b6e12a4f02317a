"""register_dataflow_workflows: names, selection, errors, skips, node binding.

Real DataFlow (SQLite file in tmp_path) and real Nexus; no server here (see
tests/e2e/test_dataflow_http.py for HTTP).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import sqlite_rows
from dataflow import DataFlow
from kailash.nodes.base import NodeRegistry
from kailash.runtime.async_local import AsyncLocalRuntime
from nexus import Nexus

from nexus_dataflow_plugin import dataflow_workflows as dw
from nexus_dataflow_plugin.dataflow_workflows import (
    OPERATIONS,
    DataFlowInputRejected,
    register_dataflow_workflows,
)

ALL_NAMES = [f"{m}_{op}" for m in ("product", "order_item") for op in OPERATIONS]


def make_db(path: Path) -> DataFlow:
    db = DataFlow(f"sqlite:///{path}", enable_model_persistence=False)

    @db.model
    class Product:
        id: int
        name: str
        price: float
        sku: str = ""

    @db.model
    class OrderItem:
        id: int
        quantity: int

    return db


@pytest.fixture
def db(tmp_path: Path) -> Iterator[DataFlow]:
    db = make_db(tmp_path / "shop.db")
    yield db
    db.close()


@pytest.fixture
def app() -> Iterator[Nexus]:
    app = Nexus(auto_discovery=False, enable_durability=False, enable_auth=False)
    yield app
    app.close()


def test_registers_every_operation_of_every_model(app: Nexus, db: DataFlow) -> None:
    registered = register_dataflow_workflows(app, db)

    assert list(registered) == ALL_NAMES
    assert set(ALL_NAMES) <= set(app._workflows)
    for name, workflow in registered.items():
        assert app._workflows[name] is workflow
        # one node, named like the workflow, of the class DataFlow generated for this db
        (node_id,) = workflow.nodes
        assert node_id == name
        node = workflow.get_node(node_id)
        model = "Product" if name.startswith("product_") else "OrderItem"
        operation = name.removeprefix("product_").removeprefix("order_item_")
        node_name = dw.node_name_for(model, operation)
        assert type(node).__name__ == node_name
        assert issubclass(type(node), db._nodes[node_name])
        assert node.dataflow_instance is db


def test_generated_node_names_match_dataflow(db: DataFlow) -> None:
    expected = {dw.node_name_for(m, op) for m in ("Product", "OrderItem") for op in OPERATIONS}
    generated = {n for n in db._nodes if n.startswith(("Product", "OrderItem"))}
    assert generated == expected
    assert "OrderItemBulkUpsertNode" in generated


def test_select_models_by_name_or_class_and_operations(app: Nexus, db: DataFlow) -> None:
    product = db.get_models()["Product"]
    registered = register_dataflow_workflows(
        app, db, models=[product, "Product"], operations=["list", "create", "list"]
    )
    assert list(registered) == ["product_list", "product_create"]

    one = register_dataflow_workflows(app, db, models="OrderItem", operations="count")
    assert list(one) == ["order_item_count"]


def test_prefix(app: Nexus, db: DataFlow) -> None:
    registered = register_dataflow_workflows(app, db, models=["Product"], prefix="shop")
    assert list(registered) == [f"shop_product_{op}" for op in OPERATIONS]
    # the node id (the key of the response's outputs) stays unprefixed
    assert list(registered["shop_product_create"].nodes) == ["product_create"]


def test_unknown_model_is_a_clear_error_and_registers_nothing(app: Nexus, db: DataFlow) -> None:
    before = set(app._workflows)
    with pytest.raises(ValueError, match="Unknown DataFlow model") as info:
        register_dataflow_workflows(app, db, models=["Product", "Customer"])
    assert "'Customer'" in str(info.value)
    assert "Product, OrderItem" in str(info.value)
    assert set(app._workflows) == before


def test_unknown_operation_is_a_clear_error(app: Nexus, db: DataFlow) -> None:
    with pytest.raises(ValueError, match="Unknown DataFlow operation") as info:
        register_dataflow_workflows(app, db, operations=["create", "truncate"])
    assert "'truncate'" in str(info.value)
    assert ", ".join(OPERATIONS) in str(info.value)
    assert not any(name.startswith("product_") for name in app._workflows)


def test_model_class_of_another_dataflow_is_rejected(
    app: Nexus, db: DataFlow, tmp_path: Path
) -> None:
    other = make_db(tmp_path / "other.db")
    try:
        with pytest.raises(ValueError, match="not the one registered as 'Product'"):
            register_dataflow_workflows(app, db, models=[other.get_models()["Product"]])
    finally:
        other.close()


def test_bad_argument_types(app: Nexus, db: DataFlow) -> None:
    with pytest.raises(TypeError, match="dataflow.DataFlow instance"):
        register_dataflow_workflows(app, object())
    with pytest.raises(TypeError, match="Nexus app"):
        register_dataflow_workflows(object(), db)
    with pytest.raises(TypeError, match="`prefix` must be a string"):
        register_dataflow_workflows(app, db, prefix=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`operations` must be"):
        register_dataflow_workflows(app, db, operations=3)  # type: ignore[arg-type]


def test_append_only_model(app: Nexus, tmp_path: Path) -> None:
    db = DataFlow(f"sqlite:///{tmp_path / 'log.db'}", enable_model_persistence=False)

    @db.model(append_only=True)
    class EventLog:
        id: int
        kind: str

    try:
        registered = register_dataflow_workflows(app, db)
        assert list(registered) == [
            f"event_log_{op}" for op in OPERATIONS if op in dw.APPEND_ONLY_OPERATIONS
        ]
        with pytest.raises(ValueError, match="not available for append-only model 'EventLog'"):
            register_dataflow_workflows(app, db, operations=["update"], prefix="x")
    finally:
        db.close()


def test_names_nexus_rejects_are_skipped_with_a_warning(
    app: Nexus, db: DataFlow, caplog: pytest.LogCaptureFixture
) -> None:
    taken = register_dataflow_workflows(app, db, models=["Product"], operations=["create"])
    caplog.set_level(logging.WARNING, logger=dw.__name__)

    registered = register_dataflow_workflows(app, db, models=["Product"])

    assert "product_create" not in registered
    assert list(registered) == [f"product_{op}" for op in OPERATIONS if op != "create"]
    assert app._workflows["product_create"] is taken["product_create"]
    warnings = [r for r in caplog.records if r.name == dw.__name__]
    assert len(warnings) == 1
    assert "product_create" in warnings[0].getMessage()


def test_invalid_prefix_skips_every_name_without_raising(
    app: Nexus, db: DataFlow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=dw.__name__)
    assert register_dataflow_workflows(app, db, models=["Product"], prefix="my shop!") == {}
    assert len([r for r in caplog.records if r.name == dw.__name__]) == len(OPERATIONS)


def test_workflows_stay_bound_to_their_dataflow(app: Nexus, db: DataFlow, tmp_path: Path) -> None:
    """A second DataFlow with the same model names rebinds NodeRegistry, not our workflows."""
    db.create_tables()
    registered = register_dataflow_workflows(app, db, models=["Product"], operations=["create"])
    other = make_db(tmp_path / "other.db")
    try:
        other.create_tables()
        assert NodeRegistry.get("ProductCreateNode") is other._nodes["ProductCreateNode"]

        workflow = registered["product_create"]
        assert workflow.get_node("product_create").dataflow_instance is db
        results, _ = asyncio.run(
            AsyncLocalRuntime().execute_workflow_async(
                workflow, inputs={"id": 7, "name": "kept", "price": 1.0}
            )
        )
        assert results["product_create"]["name"] == "kept"
        def names(path: Path) -> list[str]:
            return [row[0] for row in sqlite_rows(path, "SELECT name FROM products")]

        assert names(tmp_path / "shop.db") == ["kept"]
        assert names(tmp_path / "other.db") == []
    finally:
        other.close()


def test_database_url_cannot_come_from_the_request(
    app: Nexus, db: DataFlow, tmp_path: Path
) -> None:
    db.create_tables()
    registered = register_dataflow_workflows(app, db, models=["Product"], operations=["create"])
    elsewhere = tmp_path / "elsewhere.db"
    for inputs in (
        {"id": 1, "name": "x", "price": 1.0, "database_url": f"sqlite:///{elsewhere}"},
        {"id": 1, "name": "x", "price": 1.0, "config": {"database_url": f"sqlite:///{elsewhere}"}},
    ):
        with pytest.raises(Exception) as info:
            asyncio.run(
                AsyncLocalRuntime().execute_workflow_async(
                    registered["product_create"], inputs=inputs
                )
            )
        chain, exc = [], info.value
        while exc is not None:
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__
        rejected = [e for e in chain if isinstance(e, DataFlowInputRejected)]
        assert rejected, chain
        assert rejected[0].status_code == 400
        assert rejected[0].body == {"error": dw.ERR_DATABASE_URL_REJECTED}
    assert not elsewhere.exists()


def test_node_id_avoids_colliding_with_a_parameter(app: Nexus, tmp_path: Path) -> None:
    db = DataFlow(f"sqlite:///{tmp_path / 'odd.db'}", enable_model_persistence=False)

    @db.model
    class Item:
        id: int
        item_create: str  # same as the create workflow's default node id

    try:
        registered = register_dataflow_workflows(app, db, operations=["create", "read"])
        assert list(registered["item_create"].nodes) == ["item_create_node"]
        assert list(registered["item_read"].nodes) == ["item_read"]
    finally:
        db.close()


@pytest.mark.parametrize(
    ("model", "snake"),
    [("User", "user"), ("OrderItem", "order_item"), ("HTTPLog", "http_log"), ("V2Item", "v2_item")],
)
def test_workflow_names(model: str, snake: str) -> None:
    assert dw.workflow_name_for(model, "bulk_create") == f"{snake}_bulk_create"
    assert dw.workflow_name_for(model, "list", "shop") == f"shop_{snake}_list"


def test_a_relative_sqlite_url_is_warned_about_once_with_its_absolute_form(
    app: Nexus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    name = f"relative_{tmp_path.name}.db"  # a URL of its own: the warning is once per URL
    db = DataFlow(f"sqlite:///{name}", enable_model_persistence=False)

    @db.model
    class Note:
        id: int
        text: str

    try:
        with caplog.at_level(logging.WARNING, logger=dw.__name__):
            register_dataflow_workflows(app, db, operations=["create"])
            register_dataflow_workflows(app, db, operations=["list"])
        warnings = [r.getMessage() for r in caplog.records
                    if r.name == dw.__name__ and r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert f"sqlite:///{name} is a relative SQLite path" in warnings[0]
        assert warnings[0].endswith(f"Use the absolute form: sqlite:///{tmp_path / name}")
    finally:
        db.close()


@pytest.mark.parametrize("url,absolute", [
    ("sqlite:///app.db", "sqlite:////base/app.db"),
    ("sqlite://app.db", "sqlite:////base/app.db"),
    ("sqlite:app.db", "sqlite:////base/app.db"),
    ("SQLITE:///app.db", "sqlite:////base/app.db"),
    ("sqlite+aiosqlite:///data/app.db", "sqlite+aiosqlite:////base/data/app.db"),
    ("sqlite:////srv/app.db", None),
    ("sqlite:///:memory:", None),
    ("postgresql://localhost/app", None),
])
def test_every_relative_spelling_of_a_sqlite_url_has_an_absolute_form(
    url: str, absolute: str | None
) -> None:
    assert dw.absolute_sqlite_url(url, "/base") == absolute


def test_an_absolute_sqlite_url_is_not_warned_about(
    app: Nexus, db: DataFlow, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=dw.__name__):
        register_dataflow_workflows(app, db)
    assert [r for r in caplog.records if r.name == dw.__name__] == []
