"""The shop app, served over real HTTP, with files that reach DataFlow by routes no
reading resolves and a file whose import names no file system can hold.

Before this work, an over-long module name raised ``OSError`` out of the import graph
and ``Nexus.start()`` failed; a model module reached through a computed name ran its
``DataFlow(...)`` in a worker. Now the server starts, serves the shop's workflows, the
runtime guard stops the computed routes before DataFlow acts, and the app's own nodes
still belong to the app's DataFlow.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
from shop_harness import harness

REACH = Path(__file__).resolve().parents[1] / "fixtures" / "reach" / "project"
STALL = Path(__file__).resolve().parents[1] / "fixtures" / "stall"

GUARDED = (
    "workflows/computed_module_name_swallowed_by_except_exception.py",
    "workflows/config_driven_plugin_loader_with_bare_except.py",
)


def test_the_server_starts_serves_and_the_guard_stops_what_the_screen_cannot_see(
    tmp_path: Path,
) -> None:
    project = harness.copy_project(tmp_path / "shop")
    for rel in (*GUARDED, "computed_models.py", "plugins.json", "plugins/__init__.py",
                "plugins/billing_models.py"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REACH / rel, project / rel)
    shutil.copyfile(STALL / "imports_an_over_long_module_name.py",
                    project / "workflows" / "imports_an_over_long_module_name.py")
    env = harness.clean_env(SHOP_DATABASE_URL=f"sqlite:///{tmp_path / 'shop.db'}",
                            NEXUS_DATAFLOW_WORKERS="1")
    app = harness.AppProcess(project, tmp_path / "run", {"way": "add_plugin", "serve": True}, env)
    with app:
        result = app.wait_result(timeout=180)
        statuses = {e["path"]: (e["status"], e["reason"]) for e in result["report"]["files"]}
        for rel in GUARDED:
            status, reason = statuses[rel]
            assert status == "skipped_dependent" and "runtime guard" in reason, reason
        assert statuses["workflows/imports_an_over_long_module_name.py"][0] == "registered"
        with httpx.Client(base_url=result["base_url"], timeout=60) as client:
            health = client.get("/health").json()
            assert health["status"] == "healthy"
            served = set(health["workflows"])
            assert {"greet", "imports_an_over_long_module_name"} <= served
            assert not {Path(rel).stem for rel in GUARDED} & served
            run = client.post("/workflows/imports_an_over_long_module_name/execute",
                              json={"inputs": {}})
            assert run.status_code == 200, run.text
        assert app.stop() == 0, app.stderr_tail()
    assert result["registry_node_db_is_apps"] is True
    # The reached model modules ran in a worker up to DataFlow(...), never in the server,
    # and DataFlow made no database for them.
    for rel in ("computed_models.py", "plugins/billing_models.py"):
        assert result["pid"] not in harness.ran(project / rel)
    assert sorted(p.name for p in project.rglob("*.db")) == []
