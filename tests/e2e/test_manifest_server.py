"""A real Nexus server started from a manifest, over HTTP on 127.0.0.1.

The manifest is built the way CI builds it: ``nexus-dataflow freeze`` in its own
process, then ``freeze --check``. The server (tests/e2e/server.py's
``running_nexus``, ``auto_discovery=True``, the plugin with ``manifest=``) then
starts in this process. The canary files prove that no project file ran; /proc,
sampled from before the plugin installs until the server answers, proves that
no worker process started; the workflows answer over HTTP.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from manifest_project import MANIFEST, NAMES, make_project, ran
from nexus import Nexus
from procs import processes_seen_with_env

from nexus_dataflow_plugin import DataFlowCompatiblePlugin

from .server import running_nexus

CLI = str(Path(sys.executable).with_name("nexus-dataflow"))
MARK = "NDP_MANIFEST_E2E_MARK"


def test_a_server_started_from_a_ci_built_manifest_runs_no_project_file_and_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    project = make_project(tmp_path / "project")
    # The CI steps, each its own process: build (again, over the one made above), check.
    built = subprocess.run([CLI, "freeze", ".", "-o", MANIFEST], cwd=project,
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    checked = subprocess.run([CLI, "freeze", "--check", "-o", MANIFEST], cwd=project,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Ship it: the image gets the tree and the manifest, from another directory.
    image = tmp_path / "image" / "app"
    shutil.copytree(project, image, ignore=shutil.ignore_patterns("*.ran"))
    monkeypatch.chdir(image)
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "server-cache"))

    app = Nexus(auto_discovery=True, enable_durability=False, enable_auth=False)
    with processes_seen_with_env(MARK, mark) as seen:
        app.add_plugin(DataFlowCompatiblePlugin(manifest=MANIFEST, manifest_strict=True))
        with running_nexus(app) as base_url:
            with httpx.Client(base_url=base_url, timeout=30) as client:
                served = set(client.get("/workflows").json())
                response = client.post("/workflows/runnable_pipeline/execute",
                                       json={"inputs": {}})
                helper = client.post("/workflows/helper_flow/execute", json={"inputs": {}})
            assert not seen, f"worker processes started: {seen}"
    assert NAMES <= served and "models.User" not in served
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["total"]["result"] == {"sum": 12, "count": 3}
    assert helper.json()["outputs"]["step"]["result"] == {"value": 1}
    assert ran(image) == [], "a project file ran in the server"
    assert not (tmp_path / "server-cache").exists(), "the server screened (parsed) a file"
