"""``nexus-dataflow serve`` on the example shop, as a user runs it: a real server process.

The example (docs/examples/shop) is copied to a temporary directory, so the
SQLite file lands there. The server is the console script in a subprocess on
a free port; everything is checked from outside: HTTP, the database file (or
PostgreSQL) read directly, the report it prints, how it stops on Ctrl+C
(SIGINT), and that no process it started outlives it.

``ServeProcess`` is shared with test_readme.py; ``processes_with_env`` lives in procs.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import pg_rows, sqlite_rows
from procs import processes_with_env

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "shop"
CLI = str(Path(sys.executable).with_name("nexus-dataflow"))
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
MARK = "NDP_SERVE_TEST_MARK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_example(target: Path) -> Path:
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("app.db*", "migrations", "__pycache__")
    )
    return target


class ServeProcess:
    """A command that serves Nexus, run in its own session like a terminal's foreground job.

    Its environment carries a unique marker, so every process it starts
    (discovery workers included) can be found afterwards, re-parented or not.
    """

    def __init__(
        self, argv: Sequence[str], *, cwd: Path, env: dict[str, str], port: int, log: Path
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.marker = uuid.uuid4().hex
        self.stdout: list[str] = []
        self.log = log
        self._err = log.open("wb")
        self.process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**env, MARK: self.marker},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.stdout.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.stdout)

    def stderr_tail(self, limit: int = 3000) -> str:
        self._err.flush()
        return self.log.read_text(errors="replace")[-limit:]

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until GET /health answers 200; fail with the server's output if it never does."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"server exited with {self.process.returncode} before answering /health\n"
                    f"stdout:\n{self.output()}\nstderr:\n{self.stderr_tail()}",
                    pytrace=False,
                )
            try:
                response = httpx.get(f"{self.url}/health", timeout=5)
                if response.status_code == 200:
                    return
                last = response.status_code
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.2)
        pytest.fail(
            f"server did not answer /health within {timeout:.0f}s ({last!r})\n"
            f"stdout:\n{self.output()}\nstderr:\n{self.stderr_tail()}",
            pytrace=False,
        )

    def wait_output(self, text: str, timeout: float = 30.0) -> None:
        """Until a stdout line contains ``text`` (the server prints after it binds)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stdout):
            assert time.monotonic() < deadline, f"{text!r} never printed:\n{self.output()}"
            time.sleep(0.05)

    def execute(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/workflows/{name}/execute", json={"inputs": inputs}, timeout=60
        )
        assert response.status_code == 200, (name, response.status_code, response.text)
        return response.json()["outputs"]

    def interrupt(self, timeout: float = STOP_TIMEOUT_S) -> tuple[int, float]:
        """Ctrl+C: SIGINT to the foreground process group; (exit code, seconds to exit)."""
        started = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"server did not exit within {timeout:.0f}s of SIGINT", pytrace=False)
        self._reader.join(5)
        return code, time.monotonic() - started

    def leftovers(self, grace: float = 5.0) -> list[tuple[int, str]]:
        """Processes of this command still alive (after a short grace for reaping)."""
        deadline = time.monotonic() + grace
        while (alive := processes_with_env(MARK, self.marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return alive

    def kill(self) -> None:
        """Last-resort cleanup: SIGKILL the server's group and anything carrying its marker."""
        for pid, _ in processes_with_env(MARK, self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._err.close()


def serve_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEXUS_DATAFLOW_") and k not in {"DATABASE_URL", "NO_COLOR"}
    }
    env.update(extra)
    return env


def report_rows(output: str) -> dict[str, str]:
    """``{file: status}`` from the report table the server prints."""
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("workflows/") and parts[1].endswith(".py"):
            rows[parts[1]] = parts[0]
    return rows


def product_rows(backend: str, database: str) -> list[tuple[str, float, int]]:
    query = "SELECT name, price, stock FROM products ORDER BY name"
    return (sqlite_rows if backend == "sqlite" else pg_rows)(database, query)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_serve_the_example_shop(backend: str, tmp_path: Path, request: Any) -> None:
    project = copy_example(tmp_path / "shop")
    port = free_port()
    argv = [CLI, "serve", str(project), "--port", str(port)]
    if backend == "postgresql":
        database = request.getfixturevalue("fresh_pg_database")
        argv += ["--database-url", database]
    else:
        database = str(project / "app.db")  # the default: SQLite in the project directory
    server = ServeProcess(argv, cwd=tmp_path, env=serve_env(), port=port,
                          log=tmp_path / "serve.err")
    try:
        server.wait_ready()
        server.wait_output("Serving on")

        quote = server.execute("price_quote", {"price": 10, "quantity": 3})
        assert quote["quote"]["result"] == {"total": 36.0, "currency": "EUR"}

        created = server.execute("product_create", {"name": "pen", "price": 1.5, "stock": 3})
        assert created["product_create"]["name"] == "pen", created
        listed = server.execute("product_list", {})
        assert [r["name"] for r in listed["product_list"]["records"]] == ["pen"], listed
        restocked = server.execute("order_intake.restock_workflow", {})
        assert restocked["restock"]["name"] == "restocked item", restocked

        assert product_rows(backend, database) == [("pen", 1.5, 3), ("restocked item", 1.0, 0)]
        if backend == "sqlite":
            assert not (tmp_path / "app.db").exists()

        output = server.output()
        assert f"database  {database if backend == 'postgresql' else 'sqlite:///' + database}" \
            in output
        rows = report_rows(output)
        assert rows["workflows/exits_at_import.py"] == "error"
        assert rows["workflows/supplier_models.py"] == "skipped_model"
        assert rows["workflows/order_intake.py"] == "skipped_dependent"
        assert rows["workflows/price_quote.py"] == "registered"
        assert f"POST http://127.0.0.1:{port}/workflows/price_quote/execute" in output
        assert "explicit  workflows/order_intake.py: order_intake.restock_workflow" in output

        running = [pid for pid, _ in processes_with_env(MARK, server.marker)]
        assert server.process.pid in running  # the leftover check below can see it

        code, seconds = server.interrupt()
        assert code in (0, 130), server.stderr_tail()
        assert seconds < STOP_TIMEOUT_S
        # Ctrl+C is a clean stop, not a KeyboardInterrupt traceback. (Libraries may log
        # tracebacks of their own while serving, e.g. DataFlow's model registry on PostgreSQL
        # without the psycopg 3 driver; those are not the server stopping.)
        assert "KeyboardInterrupt" not in server.stderr_tail(100_000)
        assert server.leftovers() == [], "processes of the server outlived it"
    finally:
        server.kill()


# --- a project whose models no discovered file imports ----------------------------------------

MODELS = '''import os

from dataflow import DataFlow

db = DataFlow(os.environ["DATABASE_URL"])


@db.model
class Product:
    name: str
    price: float
'''

# A second model module with a database of its own (not DATABASE_URL): the database line
# must say so.
LAB_MODELS = '''from dataflow import DataFlow

db = DataFlow({url!r})


@db.model
class Gadget:
    label: str
'''

HELLO = '''from kailash.workflow.builder import WorkflowBuilder

workflow = WorkflowBuilder()
workflow.add_node("PythonCodeNode", "hello", {"code": "result = {'greeting': 'hi'}"})
'''


def write_project(root: Path) -> Path:
    """Models in shop/ and lab/, a workflow that imports neither, and one that depends on
    shop's models and raises at import."""
    for rel, text in {
        "shop/__init__.py": "",
        "shop/models.py": MODELS,
        "lab/__init__.py": "",
        "lab/models.py": LAB_MODELS.format(url=f"sqlite:///{root / 'lab.db'}"),
        "workflows/hello.py": HELLO,
        "workflows/raises_at_import.py": "from shop.models import Product\n\n"
                                         "raise RuntimeError('half-written workflow')\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def refused(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex((host, port)) != 0


def test_serve_loads_the_models_no_discovered_file_imports_on_127_0_0_1_only(
    tmp_path: Path,
) -> None:
    project = write_project(tmp_path / "app")
    port = free_port()
    server = ServeProcess([CLI, "serve", str(project), "--port", str(port)], cwd=tmp_path,
                          env=serve_env(), port=port, log=tmp_path / "serve.err")
    try:
        server.wait_ready()
        server.wait_output("Serving on")
        output = server.output()
        assert "models    lab.models (lab/models.py)" in output
        assert "models    shop.models (shop/models.py)" in output
        assert f"database  sqlite:///{project / 'app.db'} (shop.models.db)" in output
        assert f"database  sqlite:///{project / 'lab.db'} (lab.models.db)" in output
        assert "note      lab.models.db chooses its own database" in output
        # A dependent file that raises is reported; the server serves the rest.
        assert ("error     workflows/raises_at_import.py: Raised RuntimeError while importing "
                "(line 3): half-written workflow") in output
        created = server.execute("product_create", {"name": "pen", "price": 1.5})
        assert created["product_create"]["name"] == "pen", created
        assert server.execute("gadget_count", {})["gadget_count"]["count"] == 0
        assert server.execute("hello", {})["hello"]["result"] == {"greeting": "hi"}
        # Listening on loopback only, and saying so.
        assert f"Serving on http://127.0.0.1:{port} (Ctrl+C to stop)" in output
        assert refused("127.0.0.2", port), "the default host answers beyond 127.0.0.1"
        assert "reachable from other machines" not in output
    finally:
        server.kill()


def test_serve_takes_models_and_host_and_makes_a_relative_sqlite_url_absolute(
    tmp_path: Path,
) -> None:
    project = write_project(tmp_path / "app")
    port = free_port()
    argv = [CLI, "serve", str(project), "--port", str(port), "--host", "0.0.0.0",
            "--models", "shop.models", "--database-url", "sqlite:///relative.db"]
    server = ServeProcess(argv, cwd=tmp_path, env=serve_env(), port=port,
                          log=tmp_path / "serve.err")
    try:
        server.wait_ready()
        server.wait_output("Serving on")
        output = server.output()
        assert [line for line in output.splitlines() if line.startswith("models ")] == [
            "models    shop.models (shop/models.py)"
        ]
        # Relative to where the command ran, as a shell user means it.
        database = tmp_path / "relative.db"
        assert f"database  sqlite:///{database} (shop.models.db)" in output
        server.execute("product_create", {"name": "pen", "price": 1.5})
        listed = server.execute("product_list", {})
        assert [r["name"] for r in listed["product_list"]["records"]] == ["pen"], listed
        assert sqlite_rows(database, "SELECT name FROM products") == [("pen",)]
        gadget = httpx.post(f"{server.url}/workflows/gadget_count/execute",
                            json={"inputs": {}}, timeout=30)
        assert gadget.status_code == 404  # lab.models was not chosen
        # Every interface, said plainly.
        assert f"Serving on http://0.0.0.0:{port} (Ctrl+C to stop)" in output
        assert f"note      http://0.0.0.0:{port} is reachable from other machines" in output
        assert httpx.get(f"http://127.0.0.2:{port}/health", timeout=10).status_code == 200
    finally:
        server.kill()
