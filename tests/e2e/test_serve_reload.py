"""``nexus-dataflow serve --reload`` on the example shop, as a user runs it.

A saved workflow file is served over HTTP within 2 s, in the same process; a
saved model module restarts the server process (its models must be loaded
again), which then serves again; Ctrl+C stops supervisor and server and
leaves no process behind.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from nexus_dataflow_plugin.plugin import REPORT_PATH

from .test_serve import CLI, ServeProcess, copy_example, free_port, serve_env

SAVE_TO_SERVED_S = 2.0
RESTART_TIMEOUT_S = 120.0


def _quote_currency(server: ServeProcess) -> str:
    return server.execute("price_quote", {"price": 10, "quantity": 3})["quote"]["result"][
        "currency"
    ]


def _serving_lines(server: ServeProcess) -> int:
    return sum(line.startswith("Serving on") for line in list(server.stdout))


def test_serve_reload_swaps_a_saved_workflow_and_restarts_for_a_saved_model(
    tmp_path: Path,
) -> None:
    project = copy_example(tmp_path / "shop")
    port = free_port()
    server = ServeProcess([CLI, "serve", str(project), "--port", str(port), "--reload"],
                          cwd=tmp_path, env=serve_env(), port=port, log=tmp_path / "serve.err")
    try:
        server.wait_ready()
        server.wait_output("Serving on")
        assert _quote_currency(server) == "EUR"
        report = httpx.get(server.url + REPORT_PATH, timeout=10).json()
        assert report["watching"] is True and report["restart_required"] == []

        quote = project / "workflows" / "price_quote.py"
        quote.write_text(quote.read_text().replace("'EUR'", "'USD'"))
        saved = time.monotonic()
        while _quote_currency(server) != "USD":
            assert time.monotonic() - saved < SAVE_TO_SERVED_S, "the saved workflow is not served"
            time.sleep(0.05)
        assert _serving_lines(server) == 1  # swapped in place, no restart

        models = project / "shop" / "models.py"
        models.write_text(models.read_text() + "\n# a saved model module\n")
        server.wait_output("reload    shop/models.py changed: restarting the server", 30)
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while _serving_lines(server) < 2:
            assert server.process.poll() is None, server.stderr_tail()
            assert time.monotonic() < deadline, "the server did not come back after the restart"
            time.sleep(0.2)
        server.wait_ready()
        assert _quote_currency(server) == "USD"
        listed = server.execute("product_list", {})  # the models were loaded again
        assert listed["product_list"]["records"] == []
        fresh = httpx.get(server.url + REPORT_PATH, timeout=10).json()
        assert fresh["restart_required"] == [] and fresh["last_scan"] != report["last_scan"]

        code, _ = server.interrupt()
        assert code in (0, 130), server.stderr_tail()
        assert server.leftovers() == [], "processes of the server outlived it"
    finally:
        server.kill()


def test_serve_reload_run_as_python_m_starts_its_server_process_by_the_modules_name(
    tmp_path: Path,
) -> None:
    """The supervisor starts the server as ``python -m <the CLI's module>``: run that way
    itself, the CLI's ``__name__`` is ``__main__``, which no child could import."""
    project = copy_example(tmp_path / "shop")
    port = free_port()
    argv = [sys.executable, "-m", "nexus_dataflow_plugin.cli", "serve", str(project),
            "--port", str(port), "--reload"]
    server = ServeProcess(argv, cwd=tmp_path, env=serve_env(), port=port,
                          log=tmp_path / "serve.err")
    try:
        server.wait_ready()
        assert _quote_currency(server) == "EUR"
        code, _ = server.interrupt()
        assert code in (0, 130), server.stderr_tail()
        assert server.leftovers() == [], "processes of the server outlived it"
    finally:
        server.kill()
