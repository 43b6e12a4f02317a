"""DataFlowCompatiblePlugin enabled each of the four ways, in a real server process.

Each scenario runs the shop app (tests/fixtures/project_shop) in its own
process, with a copy of the project as its working directory, where Nexus
discovers from; ``start()`` runs with ``auto_discovery=True``. The pytest
process never runs discovery. Fixture files append the executing pid to
``<file>.ran``, which tells who executed them and how often.

The four ways:
- ``app.use_plugin("dataflow_compatible")``: the app never imports our package,
  the entry-point autoload puts the plugin into Nexus's registry;
- ``app.add_plugin(DataFlowCompatiblePlugin(timeout=..., workers=...))``;
- ``NEXUS_DATAFLOW_COMPATIBLE=1`` with a plain ``Nexus(auto_discovery=True)``;
- ``[tool.nexus] dataflow_compatible = true`` in the project's pyproject.toml.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shop_harness import harness

from nexus_dataflow_plugin import DataFlowCompatiblePlugin
from nexus_dataflow_plugin.config import ConfigError

WAYS = ("use_plugin", "add_plugin", "env", "pyproject")
PLUGIN_WAYS = ("use_plugin", "add_plugin")
DEPENDENT = "workflows/new_arrival.py"
ADD_PLUGIN_TIMEOUT_S = 5.0


def configure(way: str, project: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Driver config and extra environment for one way of enabling the plugin."""
    config: dict[str, Any] = {"way": way, "serve": False}
    env: dict[str, str] = {}
    if way in PLUGIN_WAYS:
        config["load"] = [DEPENDENT]  # the user's explicit, in-process load
    if way == "use_plugin":
        env["NEXUS_DATAFLOW_WORKERS"] = "1"  # an option, not the switch
    elif way == "add_plugin":
        config["options"] = {"timeout": ADD_PLUGIN_TIMEOUT_S, "workers": 1}
    elif way == "env":
        env.update(
            NEXUS_DATAFLOW_COMPATIBLE="1",
            NEXUS_DATAFLOW_WORKERS="1",
            NEXUS_DATAFLOW_EXCLUDE="scratch_*.py",
        )
    elif way == "pyproject":
        (project / "pyproject.toml").write_text(
            '[project]\nname = "shop"\nversion = "1.0"\n\n'
            "[tool.nexus]\n"
            "dataflow_compatible = true\n"
            "dataflow_workers = 1\n"
            'dataflow_exclude = ["scratch_*.py"]\n'
        )
    return config, env


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """All four ways, started side by side (they are independent processes).

    way -> (result, project), or the AssertionError that run ended with.
    """
    apps: dict[str, Any] = {}
    outcomes: dict[str, Any] = {}
    try:
        for way in WAYS:
            tmp = tmp_path_factory.mktemp(way)
            extras = {"scratch_workflow.py": "scratch_workflow.py"}
            if way == "add_plugin":
                extras["slow_import.py"] = "workflows/slow_import.py"
            project = harness.copy_project(tmp / "shop", extras=extras)
            config, env = configure(way, project)
            app = harness.AppProcess(project, tmp / "run", config, harness.clean_env(**env))
            apps[way] = (app.start(), project)
        for way, (app, project) in apps.items():
            try:
                result = app.wait_result(timeout=180)
                assert app.stop() == 0, app.stderr_tail()
                assert result["pid"] == app.pid
                outcomes[way] = (result, project)
            except AssertionError as exc:
                outcomes[way] = exc
        yield outcomes
    finally:
        for app, _ in apps.values():
            app.stop()


def run_of(runs: dict[str, Any], way: str) -> tuple[dict[str, Any], Path]:
    outcome = runs[way]
    if isinstance(outcome, AssertionError):
        raise outcome
    return outcome


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {entry["path"]: entry["status"] for entry in report["files"]}


def entry(report: dict[str, Any], path: str) -> dict[str, Any]:
    (found,) = [e for e in report["files"] if e["path"] == path]
    return found


@pytest.mark.parametrize("way", WAYS)
def test_smart_discovery_in_the_server_process(runs: dict[str, Any], way: str) -> None:
    result, project = run_of(runs, way)
    pid = result["pid"]
    report = result["report"]
    assert report is not None, "no discovery report: smart discovery did not run"

    # Discovered plain workflows are registered; the model file and its dependent are not.
    found = statuses(report)
    assert found["workflows/catalog.py"] == "skipped_model"
    assert found[DEPENDENT] == "skipped_dependent"
    assert found["pricing_workflow.py"] == "registered"
    assert "pricing_workflow.quote" in result["workflows"]
    assert "catalog.quick_add" not in result["workflows"]

    # Model files never run in the server process: only the app's own import, once.
    assert harness.ran(project / "workflows/catalog.py") == [pid]
    # Plain candidates did run, but in isolated workers, never in the server process.
    for plain in ("pricing_workflow.py", "workflows/greet.py", "bad name_workflow.py"):
        pids = harness.ran(project / plain)
        assert pids and pid not in pids, (plain, pids, pid)

    # Explicit registrations win over discovered names; the file registered nothing.
    assert found["workflows/greet.py"] == "no_workflows"
    assert "explicit workflow wins" in entry(report, "workflows/greet.py")["reason"]
    assert "Hello from the app" in result["greet_code"]

    # A name Nexus rejects is skipped, reported, and does not stop the rest
    # ('bad name_workflow' comes before 'pricing_workflow.quote' in discovery order).
    bad = entry(report, "bad name_workflow.py")
    assert bad["status"] == "error"
    assert "Nexus rejected the name 'bad name_workflow'" in bad["reason"]
    assert bad["workflows"] == []
    assert "bad name_workflow" not in result["workflows"]
    names = list(report["workflows"])
    assert names.index("bad name_workflow") < names.index("pricing_workflow.quote")

    # The app's DataFlow nodes stay the app's.
    assert result["registry_node_is_apps"] and result["registry_node_db_is_apps"]
    assert result["crud_nodes_are_apps"] == {
        "product_create": [True],
        "product_read": [True],
        "product_list": [True],
    }

    # One INFO summary line with counts by status; the rejected name at WARNING.
    logs = result["logs"]
    summaries = [r for r in logs if r["message"].startswith("dataflow_compatible discovery:")]
    assert len(summaries) == 1 and summaries[0]["level"] == "INFO"
    assert summaries[0]["message"].endswith(report["summary"])
    for count in ("1 skipped_model", "1 skipped_dependent", "1 error"):
        assert count in report["summary"]
    assert any(r["level"] == "WARNING" and "'bad name_workflow'" in r["message"] for r in logs)

    if way in PLUGIN_WAYS:
        # plugin.report is the last report, the same object the app carries.
        assert result["plugin_report"] == report
        assert result["app_report_is_plugin_report"] is True
        # load_workflows: the dependent file ran once, in-process, on the user's call,
        # and its workflow uses the app's DataFlow (the node was not rebound).
        assert harness.ran(project / DEPENDENT) == [pid]
        assert result["loaded"] == {"new_arrival": [True]}
        assert "new_arrival" in result["workflows"]
    else:
        assert harness.ran(project / DEPENDENT) == []
        assert "new_arrival" not in result["workflows"]
        # Options come from the same source as the switch: the exclude pattern applied.
        assert "scratch_workflow.py" not in found
        assert harness.ran(project / "scratch_workflow.py") == []
        assert result["plugin_in_app"] == []  # no code change: no plugin object in the app

    if way == "use_plugin":
        # The app never imported our package; Nexus's registry got the plugin by entry point.
        assert result["plugin_module_before_use_plugin"] is False
        assert "nexus_dataflow_plugin.autoload" in result["modules_after_nexus_import"]
        assert "nexus_dataflow_plugin.plugin" in result["modules_at_end"]
    if way == "add_plugin":
        assert result["plugin_in_app"] == ["dataflow_compatible"]
        assert result["plugin_options"]["timeout"] == ADD_PLUGIN_TIMEOUT_S
        assert result["plugin_options"]["workers"] == 1
        # The per-file timeout given to the constructor reached the workers.
        slow = entry(report, "workflows/slow_import.py")
        assert slow["status"] == "timeout", slow
        assert f"{ADD_PLUGIN_TIMEOUT_S:g}s" in slow["reason"]
        assert pid not in harness.ran(project / "workflows/slow_import.py")


class LegacyNexus:
    """An app object from a Nexus without the internals the plugin replaces."""

    def __init__(self) -> None:
        self._workflows: dict[str, Any] = {}

    def register(self, name: str, workflow: Any) -> None:
        self._workflows[name] = workflow


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> DataFlowCompatiblePlugin:
    for var in list(os.environ):
        if var.startswith("NEXUS_DATAFLOW_"):
            monkeypatch.delenv(var)
    return DataFlowCompatiblePlugin()


@pytest.mark.parametrize("method", ["install", "apply"])
def test_install_into_incompatible_nexus_names_the_version(
    plugin: DataFlowCompatiblePlugin, method: str
) -> None:
    import nexus

    app = LegacyNexus()
    with pytest.raises(RuntimeError) as raised:
        getattr(plugin, method)(app)
    message = str(raised.value)
    assert f"Nexus {nexus.__version__}" in message
    assert "_auto_discover_workflows" in message
    assert not hasattr(app, "_auto_discover_workflows")


def test_plugin_protocols(plugin: DataFlowCompatiblePlugin) -> None:
    from nexus.plugins import NexusPlugin

    assert isinstance(plugin, NexusPlugin)
    assert plugin.name == "dataflow_compatible"
    assert plugin.validate()
    for hook in ("install", "apply", "on_startup", "on_shutdown"):
        assert callable(getattr(plugin, hook))


def test_bad_constructor_argument_is_a_config_error(
    plugin: DataFlowCompatiblePlugin,
) -> None:
    with pytest.raises(ConfigError, match=r"timeout = -1 .*from argument"):
        DataFlowCompatiblePlugin(timeout=-1)
    with pytest.raises(ConfigError, match=r"workers = 'many' .*from argument"):
        DataFlowCompatiblePlugin(workers="many")  # type: ignore[arg-type]


def test_load_workflows_needs_an_app_and_an_existing_file(
    plugin: DataFlowCompatiblePlugin, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="not installed"):
        plugin.load_workflows(tmp_path / "x_workflow.py")
    with pytest.raises(FileNotFoundError, match="no such file"):
        plugin.load_workflows(tmp_path / "missing_workflow.py", app=LegacyNexus())


def test_load_workflows_on_a_directory_says_it_is_a_directory(
    plugin: DataFlowCompatiblePlugin, tmp_path: Path
) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "order_intake.py").write_text("")
    with pytest.raises(IsADirectoryError) as raised:
        plugin.load_workflows(folder, app=LegacyNexus())
    message = str(raised.value)
    assert f"{folder}: it is a directory" in message and "no such file" not in message
    assert str(folder / "order_intake.py") in message  # what to pass instead
