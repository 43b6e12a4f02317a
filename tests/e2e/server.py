"""Run a real Nexus HTTP server for end-to-end tests: ``running_nexus(app)``.

Usage (from a test module in this package)::

    from .server import running_nexus

    app = Nexus(auto_discovery=False, enable_durability=False)
    app.register("hello", workflow)
    with running_nexus(app) as base_url:
        httpx.post(f"{base_url}/workflows/hello/execute", json={"inputs": {}})

What it does, and why it is not just ``app.start()``:

* ``Nexus.start()`` (blocking) serves with uvicorn on ``0.0.0.0`` at the
  constructor's ``api_port``, starts the MCP server thread on ``mcp_port``, and
  only returns on Ctrl+C. Tests need loopback only, a port nobody else holds,
  no MCP listener, and a clean stop.
* So we call ``app.start(blocking=False)``: the same code path ``start()`` runs
  before serving -- auto-discovery when ``auto_discovery=True`` (including
  whatever a plugin installed there), queued middleware/routers/endpoints, and
  registering every workflow with the gateway -- without binding anything.
* Then the gateway's FastAPI app (``app.fastapi_app``) is served by a
  ``uvicorn.Server`` in a daemon thread, on a socket we bind ourselves on
  127.0.0.1 port 0 (so there is no pick-a-free-port-then-bind race). The
  FastAPI lifespan runs, so plugin ``on_startup``/``on_shutdown`` hooks fire as
  they would under ``start()``. The ``api_port`` given to ``Nexus(...)`` is
  not used for binding (Nexus only prints it in log lines).
* Readiness is bounded: the server must report ``started`` and answer
  ``GET /health`` within ``ready_timeout`` seconds of entering the context,
  otherwise it is torn down and ``RuntimeError`` says why (including an
  exception from the server thread, e.g. a failing lifespan start-up step).
  ``app.start(blocking=False)`` itself runs synchronously first and cannot be
  interrupted; its time counts against the same budget.
* On exit (normal or exception) uvicorn is asked to exit, then forced, each
  with a bounded wait; then ``app.stop()`` releases the app's runtime and
  gateway (pass ``stop_app=False`` to keep the app usable). A server thread
  that will not stop is an error, not a silently leaked thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_READY_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 15.0
_POLL_S = 0.02


class _ServerThread(threading.Thread):
    """Runs ``server.run(sockets=[sock])``, keeping any exception for the caller."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket) -> None:
        super().__init__(name=f"nexus-e2e-uvicorn-{sock.getsockname()[1]}", daemon=True)
        self.server = server
        self.sock = sock
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # SystemExit included: uvicorn exits on startup failure
            self.error = exc


def _bind_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _wait_ready(thread: _ServerThread, base_url: str, deadline: float) -> None:
    """Block until the server is started and answers /health, or raise RuntimeError."""
    while not thread.server.started:
        if not thread.is_alive():
            raise RuntimeError(
                f"Nexus test server on {base_url} exited during start-up: {thread.error!r}"
            ) from thread.error
        if time.monotonic() > deadline:
            raise RuntimeError(f"Nexus test server on {base_url} did not start in time")
        time.sleep(_POLL_S)
    last: object = None
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        while True:
            try:
                response = client.get("/health")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = exc
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Nexus test server on {base_url} is not answering GET /health: {last}"
                )
            time.sleep(_POLL_S)


def _stop_thread(thread: _ServerThread, timeout: float) -> None:
    thread.server.should_exit = True
    thread.join(timeout)
    if thread.is_alive():
        logger.warning("Nexus test server did not exit in %.1fs; forcing", timeout)
        thread.server.force_exit = True
        thread.join(5.0)
    if thread.is_alive():
        raise RuntimeError(f"Nexus test server thread {thread.name} did not stop")


@contextmanager
def running_nexus(
    app: Any,
    *,
    ready_timeout: float = DEFAULT_READY_TIMEOUT_S,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT_S,
    stop_app: bool = True,
) -> Iterator[str]:
    """Serve ``app`` (a ``nexus.Nexus``) on 127.0.0.1 and yield its base URL.

    Args:
        app: the Nexus app; ``app.start(blocking=False)`` is called on it first.
        ready_timeout: seconds allowed for start-up (start(), bind, lifespan, /health).
        stop_timeout: seconds allowed for a graceful stop before forcing.
        stop_app: call ``app.stop()`` afterwards (releases runtime and gateway).

    Yields:
        ``"http://127.0.0.1:<port>"``.

    Raises:
        RuntimeError: the server did not become ready, or did not stop.
    """
    deadline = time.monotonic() + ready_timeout
    sock = _bind_loopback()
    port = sock.getsockname()[1]
    base_url = f"http://{HOST}:{port}"
    thread: _ServerThread | None = None
    try:
        app.start(blocking=False)
        if app.fastapi_app is None:
            raise RuntimeError("Nexus app has no FastAPI app (gateway not initialised)")
        config = uvicorn.Config(
            app.fastapi_app,
            lifespan="on",
            log_config=None,  # leave the test process's logging configuration alone
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=max(1, int(stop_timeout / 2)),
        )
        thread = _ServerThread(uvicorn.Server(config), sock)
        thread.start()
        _wait_ready(thread, base_url, deadline)
        logger.info("Nexus test server ready on %s", base_url)
        yield base_url
    finally:
        try:
            if thread is not None:
                _stop_thread(thread, stop_timeout)
        finally:
            sock.close()
            if stop_app:
                app.stop()
