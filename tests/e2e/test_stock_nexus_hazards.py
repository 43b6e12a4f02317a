"""What stock Nexus discovery does to a DataFlow app, and that the plugin does not.

(a) The shop project with stock discovery (no plugin; our package installed but
    not enabled, so its autoload hook is present and must change nothing): the model
    file executes in the server process during ``start()`` (twice in all: the
    app's import, then discovery's), and the second execution creates a second
    DataFlow instance whose generated nodes replace the app's in Kailash's
    process-global NodeRegistry. A record written through a workflow that
    resolves ``ProductCreateNode`` by name then lands in that instance's
    database, which is not the app's (the shop's default database is DataFlow's
    embedded in-memory SQLite, private to each DataFlow instance). With the
    plugin the model module runs exactly once and the nodes stay the app's.
(b) A model file that calls ``db.create_tables()`` at import, against a
    PostgreSQL address that accepts connections and never answers, hangs stock
    start-up; with the plugin, start-up completes (the file is skipped_model).
(c) The seed document's ``DataFlowNexusApp``, with ``auto_discovery=True`` and
    the plugin, starts and serves.

Every app runs in its own process, its working directory a copy of a fixture
tree; the pytest process never runs discovery.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import sqlite_rows
from shop_harness import harness

STOCK_ENV = {"NEXUS_DISABLE_PLUGIN_AUTOLOAD": "1"}  # nothing of ours touches Nexus at all
HANG_OBSERVATION_S = 15.0


def execute(client: httpx.Client, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/workflows/{name}/execute", json={"inputs": inputs})
    assert response.status_code == 200, (name, response.status_code, response.text[:2000])
    return response.json()["outputs"]


def listed_ids(client: httpx.Client) -> list[int]:
    records = execute(client, "product_list", {"limit": 50})["product_list"]["records"]
    return sorted(r["id"] for r in records)


def test_stock_discovery_reruns_models_and_rebinds_nodes(tmp_path: Path) -> None:
    stock_project = harness.copy_project(tmp_path / "stock" / "shop")
    plugin_project = harness.copy_project(tmp_path / "plugin" / "shop")
    stock = harness.AppProcess(
        stock_project,
        tmp_path / "stock" / "run",
        {"way": "stock", "serve": True},
        harness.clean_env(),  # installed, not enabled: discovery must stay Nexus's own
    )
    plugin = harness.AppProcess(
        plugin_project,
        tmp_path / "plugin" / "run",
        {"way": "add_plugin", "options": {"workers": 1}, "serve": True},
        harness.clean_env(),
    )
    with stock, plugin:  # both start now, side by side
        before = stock.wait_result(timeout=120)
        after = plugin.wait_result(timeout=120)

        # -- stock Nexus ------------------------------------------------------------
        pid = before["pid"]
        assert "nexus_dataflow_plugin.autoload" in before["modules_after_nexus_import"]
        assert before["report"] is None  # smart discovery did not run; native did
        # The model file ran in the server process twice: the app's import, then
        # discovery's (during start(): the app had imported it before start()).
        assert harness.ran(stock_project / "workflows/catalog.py") == [pid, pid]
        assert "catalog.quick_add" not in before["before_start"]
        assert "catalog.quick_add" in before["workflows"]  # discovered from the model file
        # The app's CRUD workflows were built before start() with the app's nodes...
        assert all(all(v) for v in before["crud_nodes_are_apps"].values())
        # ...but after start() the registry's ProductCreateNode is another DataFlow's.
        assert before["registry_node_is_apps"] is False
        assert before["registry_node_db_is_apps"] is False
        with httpx.Client(base_url=before["base_url"], timeout=60) as client:
            written = execute(client, "catalog.quick_add", {"id": 7, "name": "Lost", "price": 1.0})
            assert written["quick_add"]["rows_affected"] == 1
            # The write succeeded, into a database the app never reads.
            assert listed_ids(client) == []
            execute(client, "product_create", {"id": 8, "name": "Kept", "price": 2.0})
            assert listed_ids(client) == [8]

        # -- with the plugin --------------------------------------------------------
        pid = after["pid"]
        assert harness.ran(plugin_project / "workflows/catalog.py") == [pid]
        assert after["registry_node_is_apps"] is True
        assert after["registry_node_db_is_apps"] is True
        assert "catalog.quick_add" not in after["workflows"]
        with httpx.Client(base_url=after["base_url"], timeout=60) as client:
            execute(client, "product_create", {"id": 7, "name": "Found", "price": 1.0})
            assert listed_ids(client) == [7]
            gone = client.post("/workflows/catalog.quick_add/execute", json={"inputs": {}})
            assert gone.status_code == 404


LISTENER = """
    import socket, sys
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    open(sys.argv[1] + ".tmp", "w").write(str(sock.getsockname()[1]))
    __import__("os").replace(sys.argv[1] + ".tmp", sys.argv[1])
    held = []
    while True:  # accept, then never read nor write: a server that never answers
        conn, _ = sock.accept()
        held.append(conn)
        with open(sys.argv[2], "a") as log:
            log.write("accepted\\n")
"""


@pytest.fixture
def silent_postgres(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL address on 127.0.0.1 that accepts connections and never answers."""
    port_file, accepted = tmp_path / "listener.port", tmp_path / "listener.accepted"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LISTENER), str(port_file), str(accepted)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "listener did not start"
            time.sleep(0.05)
        yield f"postgresql://shop:secret@127.0.0.1:{port_file.read_text()}/reports", accepted
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_unanswering_database_hangs_stock_start_up_not_the_plugin(
    tmp_path: Path, silent_postgres: tuple[str, Path]
) -> None:
    pytest.importorskip("psycopg2")
    url, accepted = silent_postgres
    extras = {"reporting.py": "workflows/reporting.py"}
    stock_project = harness.copy_project(tmp_path / "stock" / "shop", extras=extras)
    plugin_project = harness.copy_project(tmp_path / "plugin" / "shop", extras=extras)
    stock = harness.AppProcess(
        stock_project,
        tmp_path / "stock" / "run",
        {"way": "stock", "serve": False},
        harness.clean_env(REPORTING_DATABASE_URL=url, **STOCK_ENV),
    )
    plugin = harness.AppProcess(
        plugin_project,
        tmp_path / "plugin" / "run",
        {"way": "env", "serve": False},
        harness.clean_env(
            REPORTING_DATABASE_URL=url, NEXUS_DATAFLOW_COMPATIBLE="1", NEXUS_DATAFLOW_WORKERS="1"
        ),
    )
    with stock, plugin:
        # With the plugin: start-up completes; the file was never executed.
        result = plugin.wait_result(timeout=120)
        entry = [e for e in result["report"]["files"] if e["path"] == "workflows/reporting.py"]
        assert entry and entry[0]["status"] == "skipped_model", entry
        assert harness.ran(plugin_project / "workflows/reporting.py") == []
        assert "pricing_workflow.quote" in result["workflows"]
        assert result["start_s"] < HANG_OBSERVATION_S

        # Stock: still in start() long after; the model file is stuck in the server process.
        remaining = stock.started_at + HANG_OBSERVATION_S - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        assert stock.in_start(), "the stock app did not even reach start()"
        assert not stock.result_ready(), "stock Nexus finished start-up"
        assert stock.proc is not None and stock.proc.poll() is None, stock.stderr_tail()
        assert harness.ran(stock_project / "workflows/reporting.py") == [stock.pid]
        assert accepted.exists(), "the model file never reached the database address"
        stock.kill()
    assert not stock.result_ready()


def test_seed_dataflow_nexus_app_with_discovery_starts_and_serves(tmp_path: Path) -> None:
    project = harness.copy_project(tmp_path / "seed", source=harness.SEED_APP)
    database = tmp_path / "seed.db"
    app = harness.AppProcess(
        project,
        tmp_path / "run",
        {"way": "add_plugin", "app": "seed", "serve": True},
        harness.clean_env(SEED_DATABASE_URL=f"sqlite:///{database}", NEXUS_DATAFLOW_WORKERS="1"),
    )
    with app:
        result = app.wait_result(timeout=120)
        statuses = {e["path"]: e["status"] for e in result["report"]["files"]}
        assert statuses == {
            "workflows/dataflow_models.py": "skipped_model",
            "workflows/production_workflows.py": "skipped_dependent",
            "workflows/health_check.py": "registered",
        }
        with httpx.Client(base_url=result["base_url"], timeout=60) as client:
            health = client.get("/health").json()
            assert health["status"] == "healthy"
            assert {"create_user", "create_session", "health_check"} <= set(health["workflows"])
            status = execute(client, "health_check", {})["status"]["result"]
            assert status == {"status": "up"}
            user = {
                "id": "u-1",
                "email": "ada@example.com",
                "full_name": "Ada Lovelace",
                "created_at": "2025-01-01T00:00:00",
            }
            created = execute(client, "create_user", user)["create"]
            assert (created["id"], created["email"]) == ("u-1", "ada@example.com")
        assert app.stop() == 0, app.stderr_tail()

    rows = sqlite_rows(database, f"SELECT id, email, full_name FROM {result['table']}")
    assert rows == [("u-1", "ada@example.com", "Ada Lovelace")]
    # The seed app's own module ran once, in the server; the function-scope model
    # file (which native discovery would call as a factory) never ran at all.
    assert harness.ran(project / "dataflow_nexus_app.py") == [result["pid"]]
    assert harness.ran(project / "workflows/dataflow_models.py") == []
    assert result["registry_node_db_is_apps"] is True
