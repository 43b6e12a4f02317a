"""The running_nexus() helper itself: serves, fires lifecycle hooks, stops, reports failures."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from kailash.workflow.builder import WorkflowBuilder
from nexus import Nexus

from .server import running_nexus


@pytest.fixture
def app() -> Iterator[Nexus]:
    app = Nexus(auto_discovery=False, enable_durability=False, enable_auth=False)
    yield app
    app.close()


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("nexus-e2e-uvicorn-")]


def _port_accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_serves_on_loopback_runs_hooks_and_stops(app: Nexus) -> None:
    builder = WorkflowBuilder()
    builder.add_node("PythonCodeNode", "answer", {"code": "result = {'value': 42}"})
    app.register("answer", builder.build())
    events: list[str] = []
    app.add_startup_handler(lambda: events.append("startup"))
    app.add_shutdown_handler(lambda: events.append("shutdown"))

    with running_nexus(app) as base_url:
        host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
        assert host == "127.0.0.1" and port
        response = httpx.post(f"{base_url}/workflows/answer/execute", json={"inputs": {}})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"]["answer"]["result"] == {"value": 42}
        assert events == ["startup"]

    assert events == ["startup", "shutdown"]
    assert not _server_threads()
    assert not _port_accepts(port)
    assert app.runtime is None  # app.stop() released it


def test_body_exception_propagates_and_server_stops(app: Nexus) -> None:
    with pytest.raises(KeyError, match="boom"):
        with running_nexus(app) as base_url:
            port = urlsplit(base_url).port
            raise KeyError("boom")
    assert not _server_threads()
    assert port is not None and not _port_accepts(port)


def test_start_up_failure_is_reported(app: Nexus) -> None:
    def broken() -> None:
        raise RuntimeError("lifespan start-up broke")

    app.fastapi_app.router.on_startup.append(broken)
    with pytest.raises(RuntimeError, match="exited during start-up"):
        with running_nexus(app, ready_timeout=10):
            pytest.fail("the body must not run when the server did not start")
    assert not _server_threads()
