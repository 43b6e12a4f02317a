"""``nexus-dataflow``: scan a project, serve it, list plugins.

Errors in arguments or configuration are one line on stderr and exit 2, never
a traceback; Ctrl+C is one line and exit 130; a reader that leaves early
(``scan --json | head``) is exit 141 and nothing on stderr. ``scan`` exits 0
when the scan completed, whatever the files' statuses (unless ``--fail-on``
names statuses that were found: then each such file is a line on stderr).
Stdout carries only the table or the JSON: colour only on a terminal (and
never with ``NO_COLOR``), and the progress line of a scan that outlasts a
second goes to stderr, only when stderr is a terminal.
``scan --explain FILE`` shows the static screen's reasoning for one file,
assembled from the engine's own answers. ``freeze`` writes the manifest a
server starts from without scanning; ``freeze --check`` exits 1 when it is stale.
``serve --reload`` serves in watch mode from a child process and starts a new
one when models change.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import ipaddress
import json
import logging
import os
import re
import signal
import site
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import report as r

if TYPE_CHECKING:  # the CLI imports Kailash only for the commands that need it
    from .explain import Explanation

EXIT_OK = 0
EXIT_FAIL_ON = 1
EXIT_USAGE = 2
EXIT_RESTART = 3  # a serve --reload child asking its supervisor for a fresh process
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what `yes | head` reports: the reader left early

# Directories of a project that are not the app: never searched for model modules.
NOT_APP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages",
                          "build", "dist", "tests", "test"})

MSG_FAIL_ON = "--fail-on {status}: {path}"
MSG_NO_MODELS = ("models    none: no project file defines a DataFlow model "
                 "(name the module with --models)")
MSG_MODELS_FAILED = "cannot load the models in {module} (database {url}): {error}"
MSG_TABLES_FAILED = "cannot create the tables of {label} on {url}: {error}"
MSG_OWN_URL = ("note      {label} chooses its own database, not the one serve gave it "
               "({given}); read DATABASE_URL in your models to follow --database-url")
MSG_NO_DRIVER = ('PostgreSQL needs DataFlow\'s driver, which is not installed: '
                 'pip install "nexus-dataflow-plugin[postgres]"')
MSG_EXPOSED = ("note      {url} is reachable from other machines and Nexus authentication "
               "is off")
MSG_AUTOLOAD_ON = "armed at start-up by {file}"
MSG_AUTOLOAD_DISABLED = "{var}={value} is set"
MSG_AUTOLOAD_NO_SITE = "Python runs without site (-S or -I), so no start-up file runs"
MSG_AUTOLOAD_MISSING = "{file} is not in site-packages ({dirs}): reinstall nexus-dataflow-plugin"
MSG_AUTOLOAD_NOT_RUN = "{file} is installed but did not run in this interpreter"
MSG_PLUGIN_NOT_AUTOLOADED = ("loads, but Nexus will not find it by name while autoload is "
                             "off (use app.add_plugin)")

# The progress line appears only when a scan outlasts this, and only on a terminal.
PROGRESS_DELAY_S = 1.0

_COLOURS = {
    r.REGISTERED: "32",
    r.NO_WORKFLOWS: "2",
    r.SKIPPED_MODEL: "36",
    r.SKIPPED_DEPENDENT: "36",
    r.TIMEOUT: "31",
    r.CRASHED: "31",
    r.ERROR: "31",
    r.NOT_TRANSFERABLE: "33",
}


class UsageError(Exception):
    """A problem with what the user typed: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


@contextmanager
def progress(label: str, stream: TextIO | None = None) -> Iterator[None]:
    """A spinner with the elapsed time on ``stream`` (stderr) while the block runs.

    Shown only when ``stream`` is a terminal and the block outlasts
    ``PROGRESS_DELAY_S``; the line is erased when the block ends, so stdout
    (a table or JSON) is never touched.
    """
    stream = stream or sys.stderr
    if not stream.isatty():
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def spin() -> None:
        if done.wait(PROGRESS_DELAY_S):
            return
        frames = "|/-\\"
        tick = 0
        while not done.is_set():
            elapsed = time.monotonic() - started
            stream.write(f"\r{frames[tick % 4]} {label} {elapsed:.0f}s\033[K")
            stream.flush()
            tick += 1
            done.wait(0.2)
        stream.write("\r\033[K")
        stream.flush()

    thread = threading.Thread(target=spin, name="nexus-dataflow-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _paint(text: str, status: str, colour: bool) -> str:
    return f"\033[{_COLOURS[status]}m{text}\033[0m" if colour and status in _COLOURS else text


def format_table(report: r.DiscoveryReport, colour: bool = False) -> str:
    """The report as an aligned table (status, file, workflows, time, reason) plus a summary."""
    header = ("STATUS", "FILE", "WORKFLOWS", "TIME", "REASON")
    rows = [
        (e.status, e.path, ", ".join(e.workflows) or "-", f"{e.duration_s:.2f}s", e.reason)
        for e in report.files
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        cells[0] = _paint(cells[0], row[0], colour)
        lines.append("  ".join([*cells, row[4]]).rstrip())
    lines.append("")
    lines.append(report.summary())
    return "\n".join(lines)


def _statuses(text: str) -> frozenset[str]:
    chosen = frozenset(s.strip() for s in text.split(",") if s.strip())
    if not chosen:
        raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(r.STATUSES)}")
    unknown = chosen - set(r.STATUSES)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown status {', '.join(sorted(unknown))}; choose from {', '.join(r.STATUSES)}"
        )
    return chosen


def _seconds(text: str) -> float:
    """The ``timeout`` setting's own parser, so every bad value reads the same way."""
    from .config import OPTIONS

    try:
        return float(OPTIONS["timeout"].parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def cmd_scan(args: argparse.Namespace, out: TextIO) -> int:
    from .config import load_settings

    base = Path(args.path).absolute()
    if not base.is_dir():
        raise UsageError(f"{args.path}: not a directory")
    settings = load_settings(base, {"timeout": args.timeout})  # bad settings fail before any work
    if args.explain:
        return cmd_explain(base, args, settings, out)
    from .discovery import SmartDiscovery

    with progress(f"scanning {args.path}"):
        # What the server would do with the project's models loaded (one status per file).
        report = SmartDiscovery(base, settings, models_loaded=False).run()
    if args.json:
        json.dump(report.to_dict(), out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(report, colour=use_colour(out)) + "\n")
    failed = [e for e in report.files if e.status in args.fail_on]
    for entry in failed:
        sys.stderr.write(MSG_FAIL_ON.format(status=entry.status, path=entry.path) + "\n")
    return EXIT_FAIL_ON if failed else EXIT_OK


def cmd_freeze(args: argparse.Namespace, out: TextIO) -> int:
    """Write the manifest of a scan (stdout without -o), or ``--check`` it: exit 1 listing
    the files that no longer match."""
    from .config import load_settings

    base = Path(args.path).absolute()
    if not base.is_dir():
        raise UsageError(f"{args.path}: not a directory")
    settings = load_settings(base, {"timeout": args.timeout})
    target = Path(args.output).absolute() if args.output else None
    if target is None and settings.manifest is not None:
        from .manifest import manifest_path

        target = manifest_path(base, settings.manifest)
    if args.check and target is None:
        raise UsageError("--check needs the manifest: give -o FILE or set the manifest setting")
    from . import manifest as m

    with progress(f"scanning {args.path}"):
        fresh = m.freeze(base, settings)
    for rel, record in fresh["files"].items():  # their workflows are not in the manifest
        if record["status"] in r.PROBLEM_STATUSES:
            sys.stderr.write(f"warning: {rel} [{record['status']}] {record['reason']}\n")
    if args.check and target is not None:
        stale = m.check(target, fresh)
        for line in stale:
            out.write(line + "\n")
        if stale:
            sys.stderr.write(f"{target} does not match {args.path}: run `nexus-dataflow freeze "
                             f"{args.path} -o {target}` and commit the result\n")
            return EXIT_FAIL_ON
        sys.stderr.write(f"{target} matches {args.path}\n")
        return EXIT_OK
    summary = f"{len(fresh['workflows'])} workflow(s) from {len(fresh['files'])} file(s)"
    if target is None:
        out.write(m.dumps(fresh))
    else:
        m.write(fresh, target)
        sys.stderr.write(f"wrote {target}: {summary}\n")
    return EXIT_OK


def _explain_target(base: Path, name: str) -> Path:
    """FILE as given (relative to the current directory), else relative to the project."""
    for path in (Path(name), base / name):
        if path.is_file():
            path = path.absolute()
            try:
                path.relative_to(base)
            except ValueError:
                raise UsageError(f"{name}: not inside the project {base}") from None
            return path
    raise UsageError(f"{name}: no such file (looked in . and in {base})")


def format_explanation(answer: Explanation, colour: bool = False) -> str:
    """``explain()``'s answer for a person."""
    lines = [f"{answer.path}: {_paint(answer.status, answer.status, colour)}",
             f"  {answer.reason}"]
    s = answer.screened
    if s is None:
        return "\n".join(lines)
    if s.parse_error:
        if s.parse_error != answer.reason:
            lines.append(f"  screen: {s.parse_error}")
        return "\n".join(lines)
    lines.append(f"  defines models: {s.models or 'no'}")
    for use in s.model_uses:
        targets = ", ".join(f"{f.path} ({f.models or 'no models'})" for f in use.sources)
        lines.append(f"    line {use.line}: {use.cls} via {use.target}, imported at "
                     f"line {use.imported_at_line} from {targets or 'outside the project'}")
    lines.append("  imports:" if s.imports else "  imports: none")
    for ref in s.imports:
        what = ref.module + (f" ({', '.join(ref.names)})" if ref.names else "")
        files = [f.path + (f" [models: {f.models}]" if f.models else "")
                 for f in ref.project_files]
        where = ", ".join(files) if files else "not a project module"
        lines.append(f"    line {ref.line}: {what} -> {where}")
    if len(s.chain) == 1:
        lines.append("  chain to a model module: none needed, it defines models itself")
    elif s.chain:
        lines.append(f"  chain to a model module: {' -> '.join(s.chain)} ({s.chain_detail})")
    else:
        lines.append("  chain to a model module: none")
    factories = ", ".join(f"{name}()" for name in s.factories)
    lines.append(f"  factories a worker may call: {factories or 'none'}")
    return "\n".join(lines)


def cmd_explain(base: Path, args: argparse.Namespace, settings: Any, out: TextIO) -> int:
    targets = [_explain_target(base, name) for name in args.explain]
    from .discovery import SmartDiscovery
    from .explain import explain

    discovery = SmartDiscovery(base, settings)
    answers = [explain(discovery, path) for path in targets]
    if args.json:
        json.dump({"explain": [a.to_dict() for a in answers]}, out, indent=2)
        out.write("\n")
    else:
        colour = use_colour(out)
        out.write("\n\n".join(format_explanation(a, colour) for a in answers) + "\n")
    return EXIT_OK


def module_name(rel: str) -> str:
    """``workflows/models.py`` -> ``workflows.models``: the name the app's own imports use."""
    return rel[: -len(".py")].replace("/", ".")


def find_model_files(base: Path, settings: Any) -> list[str]:
    """Project files that define DataFlow model classes, by the static screen (nothing is
    run).

    The whole project is read, not only discovery's candidates: the models of an app
    usually live outside ``workflows/``. Environments, tests and build output are
    not the app, so they are left out, as are files ``exclude`` names.
    """
    from .finder import _excluded
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
                if _excluded(rel, name, settings.exclude) or (
                    path.stat().st_size > settings.max_file_bytes
                ):
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            facts = analyze(data)
            # Model classes, not a bare DataFlow(...): a maintenance script that opens
            # its own database is not the app's models and must not run here.
            if facts.model and facts.model_classes:
                found.append(rel)
    return found


def module_file(name: str, base: Path) -> str:
    """Where an imported module lives, relative to the project when it is inside."""
    origin = getattr(sys.modules.get(name), "__file__", None) or "?"
    try:
        return Path(origin).resolve().relative_to(base).as_posix()
    except ValueError:
        return origin


def load_models(
    base: Path, settings: Any, chosen: Sequence[str] | None, static: Sequence[r.FileResult],
    out: TextIO,
) -> None:
    """Import the app's model modules once, in this process, under their own names.

    Chosen with ``--models``, else every project file that defines a model: those
    the file-by-file screen sees, and the candidates the full screen found to be
    model files (``static``, which follows ``db`` to the module it comes from).
    A workflow's ``from shop.models import ...`` then reuses them.
    """
    if chosen:
        names = list(chosen)
    else:
        files = find_model_files(base, settings)
        files += [e.path for e in static if e.status == r.SKIPPED_MODEL and e.path not in files]
        names = [module_name(rel) for rel in files]
    if not names:
        out.write(MSG_NO_MODELS + "\n")
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the project's own code: say where, in one line
            raise UsageError(MSG_MODELS_FAILED.format(
                module=name, url=os.environ.get("DATABASE_URL"), error=_one_line(exc)
            )) from exc
        out.write(f"models    {name} ({module_file(name, base)})\n")


def project_dataflows(base: Path) -> list[tuple[str, Any]]:
    """(``module.attribute``, instance) of each DataFlow held by an imported project module."""
    from dataflow import DataFlow

    from .paths import in_project

    found: dict[int, tuple[str, Any]] = {}
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if not origin or not in_project(origin, base):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, DataFlow):
                found.setdefault(id(value), (f"{name}.{attr}", value))
    return list(found.values())


def prepare_app(
    app: Any, plugin: Any, base: Path, static: Sequence[r.FileResult], out: TextIO
) -> None:
    """Register what uses the models (already loaded by ``load_models``), as the app would.

    Files that depend on the models are loaded explicitly; every DataFlow
    instance gets its tables and CRUD workflows, and the database line says
    which URL each really uses.
    """
    from .dataflow_workflows import register_dataflow_workflows
    from .plugin import LoadRefused

    for entry in static:
        if entry.status == r.SKIPPED_DEPENDENT:
            try:
                names = plugin.load_workflows(base / entry.path, app=app)
            except LoadRefused as exc:  # its chain reaches models not loaded: nothing ran
                out.write(f"refused   {exc}\n")
                continue
            out.write(f"explicit  {entry.path}: {', '.join(names) or '-'}\n")
    for label, db in project_dataflows(base):
        url = db.config.database.url
        out.write(f"database  {url} ({label})\n")
        if url != os.environ["DATABASE_URL"]:
            out.write(MSG_OWN_URL.format(label=label, given=os.environ["DATABASE_URL"]) + "\n")
        try:
            db.create_tables()
        except Exception as exc:  # the database or the driver: one line, not a traceback
            raise UsageError(MSG_TABLES_FAILED.format(label=label, url=url,
                                                      error=_one_line(exc))) from exc
        names = register_dataflow_workflows(app, db)
        out.write(f"dataflow  {len(names)} CRUD workflows: {', '.join(names)}\n")


def _one_line(exc: BaseException) -> str:
    """An exception as one plain line (no colour codes, no newlines), for an error message."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def database_url(given: str | None, cwd: Path, base: Path) -> str:
    """The URL the models get: ``given`` (a relative SQLite path made absolute against the
    directory the command ran in), else SQLite ``app.db`` in the project."""
    from .dataflow_workflows import absolute_sqlite_url

    if not given:
        return f"sqlite:///{base / 'app.db'}"
    if given.startswith("postgres") and importlib.util.find_spec("psycopg2") is None:
        raise UsageError(MSG_NO_DRIVER)
    return absolute_sqlite_url(given, cwd) or given


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound now: a taken port fails before anything loads, and the
    address printed is the one bound."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror or exc}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"port {port} is not available on {host}: {exc.strerror or exc}") from None
    return sock


def bound_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _loopback(sock: socket.socket) -> bool:
    try:
        return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback
    except ValueError:
        return False


def serve_on(app: Any, sock: socket.socket) -> None:
    """Serve the app on ``sock``: Nexus's ``start()`` always asks for 0.0.0.0."""
    transport = app._http_transport

    def run_blocking(host: str = "") -> None:
        import uvicorn

        uvicorn.Server(uvicorn.Config(transport._gateway.app)).run(sockets=[sock])

    transport.run_blocking = run_blocking


# Set by serve --reload in the environment of the child process that serves.
RELOAD_CHILD_ENV = "NEXUS_DATAFLOW_SERVE_RELOAD_CHILD"
STOP_CHILD_S = 10.0
MSG_RESTARTING = "reload    {paths} changed: restarting the server\n"


def supervise(argv: Sequence[str], out: TextIO) -> int:
    """``serve --reload``: run the server in a child (the same command line) and start
    it again each time it exits asking for a restart, as uvicorn's reloader does."""
    env = {**os.environ, RELOAD_CHILD_ENV: "1"}
    command = [sys.executable, "-m", __name__, *argv]
    while True:
        out.flush()
        child = subprocess.Popen(command, env=env)
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


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    base = Path(args.path).resolve()
    if not base.is_dir():
        raise UsageError(f"{args.path}: not a directory")
    url = database_url(args.database_url or os.environ.get("DATABASE_URL"), Path.cwd(), base)
    sock = bind(args.host, args.port)
    if args.reload and not os.environ.get(RELOAD_CHILD_ENV):
        sock.close()  # free, as checked; each server process the supervisor starts binds it
        return supervise(args.argv, out)

    from nexus import Nexus

    from .config import load_settings
    from .discovery import SmartDiscovery
    from .plugin import DataFlowCompatiblePlugin

    os.environ["DATABASE_URL"] = url
    os.chdir(base)  # Nexus discovers from the working directory
    sys.path.insert(0, str(base))
    settings = load_settings(base, {"timeout": args.timeout})
    out.write(f"project   {base}\n")
    static = SmartDiscovery(base, settings).screen()
    load_models(base, settings, args.models, static, out)  # before Nexus: errors come first
    app = Nexus(api_port=args.port, auto_discovery=True, enable_durability=False)
    plugin = DataFlowCompatiblePlugin(timeout=args.timeout, watch=True if args.reload else None)
    restart: list[str] = []
    if args.reload:
        def models_changed(paths: list[str]) -> None:
            """Stop serving as Ctrl+C does; the supervisor starts a fresh process."""
            if not restart:
                restart.extend(paths)
                os.kill(os.getpid(), signal.SIGINT)

        plugin.on_models_changed = models_changed
    app.add_plugin(plugin)
    prepare_app(app, plugin, base, static, out)
    serve_on(app, sock)
    served = bound_url(sock)
    if not _loopback(sock) and not getattr(app, "_enable_auth", False):
        out.write(MSG_EXPOSED.format(url=served) + "\n")

    def announce() -> None:
        if plugin.report is not None:
            out.write(format_table(plugin.report, colour=use_colour(out)) + "\n")
        for name in sorted(app._workflows):
            out.write(f"POST {served}/workflows/{name}/execute\n")
        out.write(f"Serving on {served} (Ctrl+C to stop)\n")
        out.flush()

    app.add_startup_handler(announce)
    app.start()
    if restart:
        out.write(MSG_RESTARTING.format(paths=", ".join(restart)))
        return EXIT_RESTART
    return EXIT_OK


def autoload_state() -> tuple[bool, str]:
    """Whether this interpreter armed the autoload at start-up, and if not, why not.

    Asked before anything imports Nexus (the armed hook removes itself then).
    """
    from .autoload import _PATCHED
    from .startup import DISABLE_ENV, PTH_FILE, START_FILE, _Finder, disabled

    if disabled():
        return False, MSG_AUTOLOAD_DISABLED.format(var=DISABLE_ENV, value=os.environ[DISABLE_ENV])
    if sys.flags.no_site:
        return False, MSG_AUTOLOAD_NO_SITE
    wanted = START_FILE if sys.version_info >= (3, 15) else PTH_FILE
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    shipped = [Path(d) / wanted for d in dirs if (Path(d) / wanted).is_file()]
    if not shipped:
        return False, MSG_AUTOLOAD_MISSING.format(file=wanted, dirs=", ".join(dirs))
    nexus_class = getattr(sys.modules.get("nexus.core"), "Nexus", None)
    fired = hasattr(getattr(nexus_class, "_auto_discover_workflows", None), _PATCHED)
    if not fired and not any(isinstance(f, _Finder) for f in sys.meta_path):
        return False, MSG_AUTOLOAD_NOT_RUN.format(file=shipped[0])
    return True, MSG_AUTOLOAD_ON.format(file=shipped[0])


def cmd_plugins(args: argparse.Namespace, out: TextIO) -> int:
    on, why = autoload_state()
    from .autoload import ENTRY_POINT_GROUP, load_entry_points

    out.write(f"autoload  {'on' if on else 'off'}: {why}\n")
    loaded = load_entry_points()
    if not loaded:
        out.write(f"No plugins in the {ENTRY_POINT_GROUP!r} entry-point group.\n")
    for item in loaded:
        if item.error is not None:
            state = f"FAILS: {item.error}"
        else:
            state = "loads" if on else MSG_PLUGIN_NOT_AUTOLOADED
        out.write(f"{item.name}  ({item.distribution or '?'}: {item.value})  {state}\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nexus-dataflow",
        description="Safe Nexus workflow discovery for projects with DataFlow models.",
    )
    parser.add_argument(
        "--version", action="version",
        version=f"%(prog)s {importlib.metadata.version('nexus-dataflow-plugin')}",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="report what smart discovery finds in a project")
    scan.add_argument("path", nargs="?", default=".", help="project directory (default: .)")
    scan.add_argument("--json", action="store_true", help="print the report as JSON")
    scan.add_argument("--timeout", type=_seconds, help="per-file timeout in seconds")
    scan.add_argument(
        "--fail-on",
        type=_statuses,
        default=frozenset(),
        metavar="STATUSES",
        help="exit 1 if any file ends with one of these comma-separated statuses",
    )
    scan.add_argument(
        "--explain",
        action="append",
        metavar="FILE",
        help="show why FILE was screened as it was: model lines, imports, the chain to a "
        "model module (repeatable; FILE relative to . or to PATH)",
    )
    scan.set_defaults(func=cmd_scan)
    serve = sub.add_parser("serve", help="run a Nexus server on a project, with the plugin")
    serve.add_argument("path", nargs="?", default=".", help="project directory (default: .)")
    serve.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for all)",
    )
    serve.add_argument("--port", type=_port, default=8000, help="HTTP port (default: 8000)")
    serve.add_argument(
        "--models", action="append", metavar="MODULE",
        help="import this module as the app's models (repeatable; default: every project "
        "file that defines a DataFlow model)",
    )
    serve.add_argument(
        "--database-url",
        help="database for the project's DataFlow models, as DATABASE_URL (default: "
        "$DATABASE_URL, else SQLite app.db in the project; a relative SQLite path is taken "
        "from the current directory)",
    )
    serve.add_argument("--timeout", type=_seconds, help="per-file discovery timeout, seconds")
    serve.add_argument(
        "--reload",
        action="store_true",
        help="watch the project: swap in saved workflow files, restart when models change",
    )
    serve.set_defaults(func=cmd_serve)
    freeze = sub.add_parser(
        "freeze", help="write a manifest of a scan, for servers to start from (see "
        "docs/deploying.md)")
    freeze.add_argument("path", nargs="?", default=".", help="project directory (default: .)")
    freeze.add_argument("-o", "--output", metavar="FILE",
                        help="write the manifest here (default: the manifest setting, else "
                        "stdout)")
    freeze.add_argument("--check", action="store_true",
                        help="do not write: exit 1, listing the files, if FILE no longer "
                        "matches the project")
    freeze.add_argument("--timeout", type=_seconds, help="per-file timeout in seconds")
    freeze.set_defaults(func=cmd_freeze)
    plugins = sub.add_parser(
        "plugins", help="list the nexus.plugins entry points",
        description="Show whether entry-point autoload is on in this Python (and why not), "
        "then each plugin of the nexus.plugins entry-point group and whether it loads.",
    )
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    from .config import ConfigError

    try:
        return int(args.func(args, out))
    except BrokenPipeError:
        # The reader (`| head`) left: nothing more to say, and nothing to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return EXIT_BROKEN_PIPE
    except (UsageError, ConfigError) as exc:
        sys.stderr.write(f"nexus-dataflow: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("nexus-dataflow: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
