"""Files that only declare workflows, read as data by a real server and run over HTTP.

The shop app (add_plugin way) with the declarative fixtures beside its own workflow
files: each is registered without a process of its own, under native names, and runs
over HTTP as the workflow the file declares; the shop's files that do more still run in
workers, and the app's DataFlow nodes are still the app's. Started again on the same
cache, the server rebuilds them from the first start's readings, and they run the same.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from shop_harness import harness

from nexus_dataflow_plugin import report as r

DECLARATIVE = Path(__file__).resolve().parents[1] / "fixtures" / "declarative" / "reads_as_data"


@pytest.mark.parametrize("starts", [1, 2])
def test_declared_workflows_are_served_and_run_as_declared(tmp_path: Path, starts: int) -> None:
    """The second start (the same cache) rebuilds them from what the first one read."""
    project = harness.copy_project(tmp_path / "shop")
    for source in DECLARATIVE.glob("*.py"):
        shutil.copyfile(source, project / "workflows" / source.name)
    env = harness.clean_env(SHOP_DATABASE_URL=f"sqlite:///{tmp_path / 'shop.db'}",
                            NEXUS_DATAFLOW_WORKERS="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    for start in range(starts):
        app = harness.AppProcess(project, tmp_path / f"run{start}",
                                 {"way": "add_plugin", "serve": True}, env)
        result = _serve_and_run(app)
    assert result["registry_node_db_is_apps"] is True
    if starts == 2:
        assert list((tmp_path / "cache" / "nexus-dataflow-plugin").glob("read-*.txt"))


def _serve_and_run(app: harness.AppProcess) -> dict:
    with app:
        result = app.wait_result(timeout=180)
        reasons = {e["path"]: e["reason"] for e in result["report"]["files"]}
        for source in DECLARATIVE.glob("*.py"):
            assert reasons[f"workflows/{source.name}"].startswith(r.MSG_READ.split(";")[0])
        assert reasons["workflows/greet.py"].startswith(r.MSG_REGISTERED.split(";")[0])
        with httpx.Client(base_url=result["base_url"], timeout=60) as client:
            served = set(client.get("/health").json()["workflows"])
            assert {"unbuilt_builder", "module_builder_then_built", "greet",
                    "factories_aliases_and_a_guard.make_report"} <= served
            run = client.post("/workflows/module_builder_then_built/execute",
                              json={"inputs": {}})
            assert run.status_code == 200, (run.text, app.stderr_tail())
            assert run.json()["outputs"] == {"first": {"result": {"step": 1}}}
            run = client.post("/workflows/factories_aliases_and_a_guard.make_report/execute",
                              json={"inputs": {}})
            assert run.status_code == 200, (run.text, app.stderr_tail())
            assert run.json()["outputs"]["a"]["result"] == {"total": 0.5, "items": [1, 2, 3]}
        assert app.stop() == 0, app.stderr_tail()
    return result
