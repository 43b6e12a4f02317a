"""serve.py: the steps ``nexus-dataflow serve`` builds its server with, one at a time.

Real files, real DataFlow on SQLite, a real Nexus app (never started: HTTP is
tests/e2e/test_serve.py). The project is entered as ``serve`` enters it, and
what it imported is forgotten afterwards, so each test's models are its own.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nexus import Nexus

from nexus_dataflow_plugin import serve
from nexus_dataflow_plugin.config import Settings
from nexus_dataflow_plugin.plugin import DataFlowCompatiblePlugin

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "shop"

MODELS = """\
import os

from dataflow import DataFlow

db = DataFlow(os.environ["DATABASE_URL"])


@db.model
class {name}:
    label: str
"""


def write(base: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(text)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty project this process has entered, as ``serve`` enters it; its modules and
    their databases are gone afterwards."""
    base = tmp_path / "app"
    base.mkdir()
    monkeypatch.setenv("DATABASE_URL", "unset")  # restored afterwards, whatever serve sets
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    serve.enter_project(base, f"sqlite:///{base / 'app.db'}")
    yield base
    for found in serve.project_dataflows(base, ""):
        found.db.close()
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(base)):
            del sys.modules[name]


@pytest.fixture
def app() -> Iterator[Nexus]:
    app = Nexus(auto_discovery=False, enable_durability=False, enable_auth=False)
    yield app
    app.close()


def server_of(app: Nexus) -> serve.Server:
    return serve.Server(app, DataFlowCompatiblePlugin(), "http://127.0.0.1:1", exposed=False)


# --- which modules are the app's models -------------------------------------------------------


def test_serve_finds_model_classes_not_scripts_that_open_a_database(tmp_path: Path) -> None:
    """A maintenance script with its own ``DataFlow(...)`` and no model is not the app's
    models: ``serve`` must not import (run) it."""
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "models.py").write_text(
        "from dataflow import DataFlow\ndb = DataFlow('sqlite:///:memory:')\n\n"
        "@db.model\nclass Product:\n    name: str\n"
    )
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "reset_db.py").write_text(
        "from dataflow import DataFlow\nprint('reset')\n"
        "db = DataFlow('sqlite:////tmp/other.db')\ndb.create_tables()\n"
    )
    assert serve.find_model_files(tmp_path, Settings()) == ["shop/models.py"]


def test_models_in_tests_environments_build_output_and_excluded_files_are_not_the_apps(
    tmp_path: Path,
) -> None:
    model = MODELS.format(name="Thing")
    write(tmp_path, {
        "shop/models.py": model,
        "shop/test_models.py": model,
        "shop/conftest.py": model,
        "tests/models.py": model,
        "build/lib/shop/models.py": model,
        ".hidden/models.py": model,
        "env/lib/models.py": model,
        "env/pyvenv.cfg": "home = /usr/bin\n",
        "legacy/models.py": model,
    })
    settings = Settings(exclude=("legacy/*",))
    assert serve.find_model_files(tmp_path, settings) == ["shop/models.py"]


def test_modules_named_with_models_are_the_only_ones_loaded(tmp_path: Path) -> None:
    write(tmp_path, {"shop/models.py": MODELS.format(name="Thing")})
    chosen = serve.model_modules(tmp_path, Settings(), ["lab.models"], [])
    assert chosen == ["lab.models"]


def test_model_files_only_the_full_screen_recognises_are_loaded_too(tmp_path: Path) -> None:
    """The shop's ``workflows/supplier_models.py`` decorates with a ``db`` imported from
    ``shop.models``: one file alone does not show it is a model, the project's screen does."""
    base = tmp_path / "shop"
    shutil.copytree(EXAMPLE, base, ignore=shutil.ignore_patterns("app.db*", "__pycache__"))
    settings = Settings()
    static = serve.screen(base, settings)
    assert serve.dependents(static) == ["workflows/order_intake.py"]
    names = serve.model_modules(base, settings, None, static)
    assert names == ["shop.models", "workflows.supplier_models"]


# --- loading the models -----------------------------------------------------------------------


def test_a_loaded_model_module_is_named_with_its_file_in_the_project(project: Path) -> None:
    write(project, {"shop/__init__.py": "", "shop/models.py": MODELS.format(name="ServeShelf")})
    loaded = serve.load_model("shop.models", project)
    assert loaded == serve.ModelModule("shop.models", "shop/models.py")


def test_a_model_module_that_fails_is_one_line_naming_it_and_the_database(
    project: Path,
) -> None:
    write(project, {"shop/__init__.py": "",
                    "shop/models.py": "raise ValueError('no price\\n\\x1b[31mcolumn\\x1b[0m')\n"})
    with pytest.raises(serve.ServeError) as caught:
        serve.load_model("shop.models", project)
    assert str(caught.value) == (
        f"cannot load the models in shop.models (database sqlite:///{project / 'app.db'}): "
        "ValueError: no price column"
    )


def test_a_model_module_that_exits_at_import_is_one_line_not_a_silent_exit(
    project: Path,
) -> None:
    write(project, {"shop/__init__.py": "", "shop/models.py": "import sys\nsys.exit(3)\n"})
    with pytest.raises(serve.ServeError, match=r"cannot load the models in shop\.models "
                       r".*: SystemExit: 3$"):
        serve.load_model("shop.models", project)


def test_a_model_module_that_does_not_exist_is_one_line(project: Path) -> None:
    with pytest.raises(serve.ServeError, match=r"cannot load the models in shop\.nope .*"
                       r"ModuleNotFoundError: No module named 'shop'"):
        serve.load_model("shop.nope", project)


# --- the app's databases ----------------------------------------------------------------------


def test_each_dataflow_gets_its_tables_and_crud_workflows_once_and_says_its_url(
    project: Path, app: Nexus
) -> None:
    lab_db = project / "lab.db"
    write(project, {
        "shop/__init__.py": "",
        "shop/models.py": MODELS.format(name="ServeCrate"),
        "shop/again.py": "from shop.models import db\n",  # the same instance, found once
        "lab/__init__.py": "",
        "lab/models.py": MODELS.format(name="ServeFlask").replace(
            'os.environ["DATABASE_URL"]', repr(f"sqlite:///{lab_db}")),
    })
    for name in ("shop.models", "shop.again", "lab.models"):
        serve.load_model(name, project)
    given = f"sqlite:///{project / 'app.db'}"
    found = {f.label: f for f in serve.project_dataflows(project, given)}
    assert sorted(found) == ["lab.models.db", "shop.models.db"]
    assert (found["shop.models.db"].url, found["shop.models.db"].own_database) == (given, False)
    assert (found["lab.models.db"].url, found["lab.models.db"].own_database) == (
        f"sqlite:///{lab_db}", True)

    server = server_of(app)
    crud = serve.set_up_dataflow(server, found["shop.models.db"])
    assert "serve_crate_create" in crud and "serve_crate_list" in crud
    assert server.workflow_names() == sorted(crud)
    with sqlite3.connect(project / "app.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "serve_crates" in tables


def test_tables_that_cannot_be_created_are_one_line_naming_the_dataflow_and_url(
    project: Path, app: Nexus
) -> None:
    url = f"sqlite:///{project / 'missing-dir' / 'sub' / 'x.db'}"
    (project / "missing-dir").write_text("a file where a directory should be")
    write(project, {"shop/__init__.py": "", "shop/models.py": MODELS.format(
        name="ServeBin").replace('os.environ["DATABASE_URL"]', repr(url))})
    serve.load_model("shop.models", project)
    (found,) = serve.project_dataflows(project, url)
    with pytest.raises(serve.ServeError) as caught:
        serve.set_up_dataflow(server_of(app), found)
    message = str(caught.value)
    assert message.startswith(f"cannot create the tables of shop.models.db on {url}: ")
    assert "\n" not in message


# --- files that depend on the models ----------------------------------------------------------

INTAKE = """\
from pathlib import Path

from kailash.workflow.builder import WorkflowBuilder

from shop.models import ServeBox

Path(__file__).with_name("ran").touch()


def intake_workflow():
    workflow = WorkflowBuilder()
    workflow.add_node("PythonCodeNode", "ok", {"code": "result = {'ok': True}"})
    return workflow.build()
"""


def test_a_dependent_file_is_refused_before_it_runs_until_its_models_are_loaded(
    project: Path, app: Nexus
) -> None:
    write(project, {"shop/__init__.py": "", "shop/models.py": MODELS.format(name="ServeBox"),
                    "workflows/intake.py": INTAKE})
    server = server_of(app)
    refused = serve.load_explicitly(server, project, "workflows/intake.py")
    assert refused.path == "workflows/intake.py" and refused.workflows == ()
    assert refused.refused is not None and "shop/models.py" in refused.refused
    assert not (project / "workflows" / "ran").exists(), "a refused file must not run"

    serve.load_model("shop.models", project)
    loaded = serve.load_explicitly(server, project, "workflows/intake.py")
    assert loaded == serve.Explicit("workflows/intake.py", ("intake.intake_workflow",))
    assert "intake.intake_workflow" in server.workflow_names()


def test_a_dependent_file_that_raises_is_reported_and_the_others_still_load(
    project: Path, app: Nexus
) -> None:
    write(project, {
        "shop/__init__.py": "", "shop/models.py": MODELS.format(name="ServeBox"),
        "workflows/intake.py": INTAKE,
        "workflows/raises_at_import.py": "from shop.models import db\n\nraise KeyError('sku')\n",
        "workflows/exits_at_import.py": "import sys\nfrom shop.models import db\nsys.exit(4)\n",
    })
    serve.load_model("shop.models", project)
    server = server_of(app)
    static = serve.screen(project, Settings())
    assert serve.dependents(static) == [
        "workflows/exits_at_import.py", "workflows/intake.py", "workflows/raises_at_import.py"]
    results = {rel: serve.load_explicitly(server, project, rel) for rel in serve.dependents(static)}
    assert results["workflows/raises_at_import.py"].failed == (
        "Raised KeyError while importing (line 3): 'sku'")
    assert results["workflows/exits_at_import.py"].failed == (
        "Raised SystemExit while importing (line 3): 4")
    assert results["workflows/intake.py"].workflows == ("intake.intake_workflow",)
    assert server.workflow_names() == ["intake.intake_workflow"]


# --- where it serves --------------------------------------------------------------------------


def test_the_database_defaults_to_sqlite_in_the_project_and_a_relative_path_is_the_shells(
    tmp_path: Path,
) -> None:
    base, cwd = tmp_path / "app", tmp_path / "here"
    assert serve.database_url(None, cwd, base) == f"sqlite:///{base / 'app.db'}"
    assert serve.database_url("sqlite:///rel.db", cwd, base) == f"sqlite:///{cwd / 'rel.db'}"
    given = "postgresql://u@localhost/db"
    assert serve.database_url(given, cwd, base) == given


def test_a_taken_port_or_an_unknown_host_is_one_line_before_anything_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(serve.ServeError, match=rf"^port {port} is not available on "
                           r"127\.0\.0\.1: "):
            serve.bind("127.0.0.1", port)
    with pytest.raises(serve.ServeError, match=r"^--host no-such-host\.invalid: "):
        serve.bind("no-such-host.invalid", 8000)


@pytest.mark.parametrize(("host", "exposed"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_the_server_says_its_bound_address_and_whether_other_machines_reach_it(
    host: str, exposed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no workflow files here: nothing for the plugin to start
    sock = serve.bind(host, 0)
    try:
        server = serve.build(sock, timeout=None, reload=False)
        try:
            assert server.url == f"http://{host}:{sock.getsockname()[1]}"
            assert server.exposed is exposed
            assert server.restart == []
        finally:
            server.app.close()
    finally:
        sock.close()


def test_the_supervisor_starts_the_server_again_while_it_asks_for_a_restart(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    child = (
        "import os, pathlib, sys\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "runs.write_text(runs.read_text() + os.environ[sys.argv[1]] if runs.exists() else "
        "os.environ[sys.argv[1]])\n"
        f"sys.exit({serve.EXIT_RESTART} if len(runs.read_text()) < 3 else 7)\n"
    )
    code = serve.supervise([sys.executable, "-c", child, serve.RELOAD_CHILD_ENV])
    assert code == 7  # any other exit is the supervisor's own
    assert runs.read_text() == "111"  # three server processes, each told it is the child
