"""``nexus-dataflow serve``'s start-up: the steps that build a server for a project.

The CLI calls them in order and prints each answer as it comes, so a step that
fails leaves the lines of those before it. The order is the point: the models
are imported once, in this process, before Nexus exists (a workflow's
``from shop.models import ...`` then reuses them, and a broken model module
fails before anything else starts); files that depend on them are loaded
explicitly once the app is made; each DataFlow then gets its tables and CRUD
workflows. A project that cannot be served raises ``ServeError``: one line,
never a traceback. ``--reload`` runs the server in a child process that
``supervise`` starts again each time the child exits with ``EXIT_RESTART``.
"""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import report as r
from .paths import read_regular

if TYPE_CHECKING:
    from .config import Settings
    from .plugin import DataFlowCompatiblePlugin

EXIT_RESTART = 3  # a serve --reload child asking its supervisor for a fresh process
# Set by the supervisor in the environment of the child process that serves.
RELOAD_CHILD_ENV = "NEXUS_DATAFLOW_SERVE_RELOAD_CHILD"
STOP_CHILD_S = 10.0

# Directories of a project that are not the app: never searched for model modules.
NOT_APP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages",
                          "build", "dist", "tests", "test"})

MSG_MODELS_FAILED = "cannot load the models in {module} (database {url}): {error}"
MSG_TABLES_FAILED = "cannot create the tables of {label} on {url}: {error}"
MSG_NO_DRIVER = ('PostgreSQL needs DataFlow\'s driver, which is not installed: '
                 'pip install "nexus-dataflow-plugin[postgres]"')
MSG_HOST = "--host {host}: {error}"
MSG_PORT_TAKEN = "port {port} is not available on {host}: {error}"


class ServeError(Exception):
    """The project cannot be served as asked: one line for the user, exit 2."""


@dataclass(frozen=True)
class ModelModule:
    """A model module imported into this process."""

    name: str
    file: str  # relative to the project when it is inside, else as Python found it


@dataclass(frozen=True)
class Explicit:
    """A file that depends on the models, loaded in this process: its workflows, why it
    was refused (its chain reaches models that were not loaded; nothing of it ran), or
    what it raised (the server goes on without it, as discovery goes on past a file)."""

    path: str
    workflows: tuple[str, ...] = ()
    refused: str | None = None
    failed: str | None = None


@dataclass(frozen=True)
class ProjectDataFlow:
    """A DataFlow instance held by an imported project module."""

    label: str  # module.attribute
    db: Any
    url: str
    own_database: bool  # its URL is not the one serve gave the models


@dataclass
class Server:
    """The app as built: Nexus with the plugin, serving on the socket bound first."""

    app: Any
    plugin: DataFlowCompatiblePlugin
    url: str
    exposed: bool  # reachable from other machines with Nexus authentication off
    # Model files whose save stopped the server to ask for a fresh process (--reload).
    restart: list[str] = field(default_factory=list)

    def workflow_names(self) -> list[str]:
        """Every workflow the app holds, registered and discovered: what it will serve."""
        return sorted(self.app._workflows)


def database_url(given: str | None, cwd: Path, base: Path) -> str:
    """The URL the models get: ``given`` (a relative SQLite path made absolute against the
    directory the command ran in), else SQLite ``app.db`` in the project."""
    from .dataflow_workflows import absolute_sqlite_url

    if not given:
        return f"sqlite:///{base / 'app.db'}"
    if given.startswith("postgres") and importlib.util.find_spec("psycopg2") is None:
        raise ServeError(MSG_NO_DRIVER)
    return absolute_sqlite_url(given, cwd) or given


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound now: a taken port fails before anything loads, and the
    address printed is the one bound."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ServeError(MSG_HOST.format(host=host, error=exc.strerror or exc)) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(MSG_PORT_TAKEN.format(port=port, host=host,
                                               error=exc.strerror or exc)) from None
    return sock


def supervise(command: Sequence[str]) -> int:
    """``serve --reload``: run ``command`` (the server) in a child and start it again each
    time it exits asking for a restart, as uvicorn's reloader does."""
    env = {**os.environ, RELOAD_CHILD_ENV: "1"}
    while True:
        child = subprocess.Popen(list(command), env=env)
        try:
            code = child.wait()
        except KeyboardInterrupt:
            _stop_child(child)
            raise
        if code != EXIT_RESTART:
            return code


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    """Ctrl+C reached the supervisor: a terminal sends it to the child as well; a signal
    sent to the supervisor alone is passed on."""
    for step in (lambda: None, lambda: child.send_signal(signal.SIGINT), child.kill):
        step()
        try:
            child.wait(STOP_CHILD_S)
            return
        except subprocess.TimeoutExpired:
            continue


def enter_project(base: Path, url: str) -> None:
    """Make this process the project's, as its own server would be: the models read
    ``DATABASE_URL``, Nexus discovers from the working directory, and the app's
    packages import by their own names."""
    os.environ["DATABASE_URL"] = url
    os.chdir(base)
    sys.path.insert(0, str(base))


def screen(base: Path, settings: Settings) -> list[r.FileResult]:
    """Discovery's static screen of the project: which candidates are model files or
    depend on one (nothing is run)."""
    from .discovery import SmartDiscovery

    return SmartDiscovery(base, settings).screen()


def module_name(rel: str) -> str:
    """``workflows/models.py`` -> ``workflows.models``: the name the app's own imports use."""
    return rel[: -len(".py")].replace("/", ".")


def find_model_files(base: Path, settings: Settings) -> list[str]:
    """Project files that define DataFlow model classes, by the static screen (nothing is
    run).

    The whole project is read, not only discovery's candidates: the models of an app
    usually live outside ``workflows/``. Environments, tests and build output are
    not the app, so they are left out, as are files ``exclude`` names.
    """
    from .finder import excluded
    from .screen import analyze

    found: list[str] = []
    for root, dirs, files in os.walk(base):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and d not in NOT_APP_DIRS
            and not (here / d / "pyvenv.cfg").exists()
        )
        for name in sorted(files):
            if not name.endswith(".py") or name.startswith("test_") or name == "conftest.py":
                continue
            path = here / name
            rel = path.relative_to(base).as_posix()
            try:
                if excluded(rel, name, settings.exclude) or (
                    path.stat().st_size > settings.max_file_bytes
                ):
                    continue
                data = read_regular(path, settings.max_file_bytes)
            except OSError:
                continue
            facts = analyze(data)
            # Model classes, not a bare DataFlow(...): a maintenance script that opens
            # its own database is not the app's models and must not run here.
            if facts.model and facts.model_classes:
                found.append(rel)
    return found


def model_modules(
    base: Path, settings: Settings, chosen: Sequence[str] | None,
    static: Sequence[r.FileResult],
) -> list[str]:
    """The app's model modules, by the names its imports use.

    ``chosen`` (``--models``) when given, else every project file that defines a
    model: those the file-by-file screen sees, and the candidates the full screen
    found to be model files (``static``, which follows ``db`` to the module it
    comes from).
    """
    if chosen:
        return list(chosen)
    files = find_model_files(base, settings)
    files += [e.path for e in static if e.status == r.SKIPPED_MODEL and e.path not in files]
    return [module_name(rel) for rel in files]


def load_model(name: str, base: Path) -> ModelModule:
    """Import a model module once, in this process, under its own name."""
    try:
        module = importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # the project's own code: say where, in one line
        raise ServeError(MSG_MODELS_FAILED.format(
            module=name, url=os.environ.get("DATABASE_URL"), error=_one_line(exc)
        )) from exc
    origin = getattr(module, "__file__", None) or "?"
    try:
        file = Path(origin).resolve().relative_to(base).as_posix()
    except ValueError:
        file = origin
    return ModelModule(name, file)


def build(sock: socket.socket, timeout: float | None, reload: bool) -> Server:
    """Nexus with the plugin (watching with ``reload``), to be served on ``sock``.

    With ``reload``, a saved model module stops the server as Ctrl+C does, and
    ``Server.restart`` says which files asked for the fresh process.
    """
    from nexus import Nexus

    from .plugin import DataFlowCompatiblePlugin

    host, port = sock.getsockname()[:2]
    app = Nexus(api_port=port, auto_discovery=True, enable_durability=False)
    plugin = DataFlowCompatiblePlugin(timeout=timeout, watch=True if reload else None)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    server = Server(app, plugin, url,
                    exposed=not _loopback(host) and not getattr(app, "_enable_auth", False))
    if reload:
        def models_changed(paths: list[str]) -> None:
            if not server.restart:
                server.restart.extend(paths)
                os.kill(os.getpid(), signal.SIGINT)

        plugin.on_models_changed = models_changed
    app.add_plugin(plugin)
    _serve_on(app, sock)
    return server


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _serve_on(app: Any, sock: socket.socket) -> None:
    """Serve the app on ``sock``: Nexus's ``start()`` always asks for 0.0.0.0."""
    transport = app._http_transport

    def run_blocking(host: str = "") -> None:
        import uvicorn

        uvicorn.Server(uvicorn.Config(transport._gateway.app)).run(sockets=[sock])

    transport.run_blocking = run_blocking


def dependents(static: Sequence[r.FileResult]) -> list[str]:
    """The candidates that depend on the models: discovery skips them, serve loads them."""
    return [e.path for e in static if e.status == r.SKIPPED_DEPENDENT]


def load_explicitly(server: Server, base: Path, rel: str) -> Explicit:
    """Load a dependent file in this process, as the app would with ``load_workflows``."""
    from .plugin import LoadRefused
    from .probe import import_raised

    path = base / rel
    try:
        names = server.plugin.load_workflows(path, app=server.app)
    except LoadRefused as exc:  # its chain reaches models not loaded: nothing ran
        return Explicit(rel, refused=str(exc))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - one file's failure is its own
        return Explicit(rel, failed=import_raised(exc, str(path)))
    return Explicit(rel, tuple(names))


def project_dataflows(base: Path, given_url: str) -> list[ProjectDataFlow]:
    """Each DataFlow held by an imported project module, once, with the URL it really uses."""
    from dataflow import DataFlow

    from .paths import in_project

    found: dict[int, ProjectDataFlow] = {}
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if not origin or not in_project(origin, base):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, DataFlow) and id(value) not in found:
                url = value.config.database.url
                found[id(value)] = ProjectDataFlow(f"{name}.{attr}", value, url,
                                                   own_database=url != given_url)
    return list(found.values())


def set_up_dataflow(server: Server, found: ProjectDataFlow) -> list[str]:
    """Create a DataFlow's tables and register its CRUD workflows; their names."""
    from .dataflow_workflows import register_dataflow_workflows

    try:
        found.db.create_tables()
    except Exception as exc:  # the database or the driver: one line, not a traceback
        raise ServeError(MSG_TABLES_FAILED.format(label=found.label, url=found.url,
                                                  error=_one_line(exc))) from exc
    return list(register_dataflow_workflows(server.app, found.db))


def _one_line(exc: BaseException) -> str:
    """An exception as one plain line (no colour codes, no newlines), for an error message."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
