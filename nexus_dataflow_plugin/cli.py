"""``nexus-dataflow``: scan a project, serve it, list plugins.

Errors in arguments or configuration are one line on stderr and exit 2, never
a traceback; Ctrl+C is one line and exit 130. ``scan`` exits 0 when the scan
completed, whatever the files' statuses (unless ``--fail-on`` names statuses
that were found). Stdout carries only the table or the JSON: colour only on a
terminal (and never with ``NO_COLOR``), and the progress line of a scan that
outlasts a second goes to stderr, only when stderr is a terminal.
``scan --explain FILE`` shows the static screen's reasoning for one file,
assembled from the engine's own answers. ``freeze`` writes the manifest a
server starts from without scanning; ``freeze --check`` exits 1 when it is stale.
``serve --reload`` serves in watch mode from a child process and starts a new
one when models change.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from . import report as r

EXIT_OK = 0
EXIT_FAIL_ON = 1
EXIT_USAGE = 2
EXIT_RESTART = 3  # a serve --reload child asking its supervisor for a fresh process
EXIT_INTERRUPTED = 130

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
    unknown = chosen - set(r.STATUSES)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown status {', '.join(sorted(unknown))}; choose from {', '.join(r.STATUSES)}"
        )
    return chosen


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


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
        report = SmartDiscovery(base, models_loaded=False, **settings.discovery_options()).run()
    if args.json:
        json.dump(report.to_dict(), out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(report, colour=use_colour(out)) + "\n")
    if args.fail_on and any(e.status in args.fail_on for e in report.files):
        return EXIT_FAIL_ON
    return EXIT_OK


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


def format_explanation(info: dict[str, Any], colour: bool = False) -> str:
    """``explain()``'s answer for a person."""
    status = _paint(info["status"], info["status"], colour)
    lines = [f"{info['path']}: {status}", f"  {info['reason']}"]
    if "imports" not in info:
        return "\n".join(lines)
    if info["parse_error"]:
        if info["parse_error"] != info["reason"]:
            lines.append(f"  screen: {info['parse_error']}")
        return "\n".join(lines)
    lines.append(f"  defines models: {info['models'] or 'no'}")
    for use in info["model_uses"]:
        targets = ", ".join(f"{f['path']} ({f['models'] or 'no models'})" for f in use["from"])
        lines.append(f"    line {use['line']}: {use['class']} via {use['target']}, imported at "
                     f"line {use['imported_at_line']} from {targets or 'outside the project'}")
    lines.append("  imports:" if info["imports"] else "  imports: none")
    for ref in info["imports"]:
        what = ref["module"] + (f" ({', '.join(ref['names'])})" if ref["names"] else "")
        files = [f"{f['path']}" + (f" [models: {f['models']}]" if f["models"] else "")
                 for f in ref["project_files"]]
        where = ", ".join(files) if files else "not a project module"
        lines.append(f"    line {ref['line']}: {what} -> {where}")
    if len(info["chain"]) == 1:
        lines.append("  chain to a model module: none needed, it defines models itself")
    elif info["chain"]:
        chain = " -> ".join(info["chain"])
        lines.append(f"  chain to a model module: {chain} ({info['chain_detail']})")
    else:
        lines.append("  chain to a model module: none")
    factories = ", ".join(f"{name}()" for name in info["factories"])
    lines.append(f"  factories a worker may call: {factories or 'none'}")
    return "\n".join(lines)


def cmd_explain(base: Path, args: argparse.Namespace, settings: Any, out: TextIO) -> int:
    targets = [_explain_target(base, name) for name in args.explain]
    from .discovery import SmartDiscovery

    discovery = SmartDiscovery(base, **settings.discovery_options())
    answers = [discovery.explain(path) for path in targets]
    if args.json:
        json.dump({"explain": answers}, out, indent=2)
        out.write("\n")
    else:
        colour = use_colour(out)
        out.write("\n\n".join(format_explanation(a, colour) for a in answers) + "\n")
    return EXIT_OK


def module_name(rel: str) -> str:
    """``workflows/models.py`` -> ``workflows.models``: the name the app's own imports use."""
    return rel[: -len(".py")].replace("/", ".")


def project_dataflows(base: Path) -> list[Any]:
    """DataFlow instances held by modules of the project that are already imported."""
    from dataflow import DataFlow

    from ._paths import in_project

    found: dict[int, Any] = {}
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None)
        if not origin or not in_project(origin, base):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, DataFlow):
                found.setdefault(id(value), value)
    return list(found.values())


def prepare_app(app: Any, plugin: Any, base: Path, settings: Any, out: TextIO) -> None:
    """Load the project's models as the app itself would, then register what uses them.

    Model files are imported once, in this process, under their own module
    names (so a workflow's ``from shop.models import ...`` reuses them); files
    that depend on them are loaded explicitly; every DataFlow instance gets
    its tables and CRUD workflows.
    """
    from .dataflow_workflows import register_dataflow_workflows
    from .discovery import SmartDiscovery
    from .plugin import LoadRefused

    static = SmartDiscovery(base, **settings.discovery_options()).screen()
    for entry in static:
        if entry.status == r.SKIPPED_MODEL:
            try:
                importlib.import_module(module_name(entry.path))
            except Exception as exc:  # the project's own code: say where, in one line
                raise UsageError(
                    f"cannot load the models in {entry.path} (database "
                    f"{os.environ.get('DATABASE_URL')}): {_one_line(exc)}"
                ) from exc
            out.write(f"models    {entry.path}\n")
    for entry in static:
        if entry.status == r.SKIPPED_DEPENDENT:
            try:
                names = plugin.load_workflows(base / entry.path, app=app)
            except LoadRefused as exc:  # its chain reaches models not loaded: nothing ran
                out.write(f"refused   {exc}\n")
                continue
            out.write(f"explicit  {entry.path}: {', '.join(names) or '-'}\n")
    for db in project_dataflows(base):
        db.create_tables()
        names = register_dataflow_workflows(app, db)
        out.write(f"dataflow  {len(names)} CRUD workflows: {', '.join(names)}\n")


def _one_line(exc: BaseException) -> str:
    """An exception as one plain line (no colour codes, no newlines), for an error message."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _check_port(port: int) -> None:
    """Fail fast, before loading anything, when the HTTP port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            raise UsageError(f"port {port} is not available: {exc.strerror or exc}") from None


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
    _check_port(args.port)
    if args.reload and not os.environ.get(RELOAD_CHILD_ENV):
        return supervise(args.argv, out)

    from nexus import Nexus

    from .config import load_settings
    from .plugin import DataFlowCompatiblePlugin

    database_url = args.database_url or os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{base / 'app.db'}"
    os.chdir(base)  # Nexus discovers from the working directory
    sys.path.insert(0, str(base))
    settings = load_settings(base, {"timeout": args.timeout})
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
    out.write(f"project   {base}\ndatabase  {os.environ['DATABASE_URL']}\n")
    prepare_app(app, plugin, base, settings, out)

    def announce() -> None:
        if plugin.report is not None:
            out.write(format_table(plugin.report, colour=use_colour(out)) + "\n")
        for name in sorted(app._workflows):
            out.write(f"POST http://127.0.0.1:{args.port}/workflows/{name}/execute\n")
        out.write(f"Serving on http://127.0.0.1:{args.port} (Ctrl+C to stop)\n")
        out.flush()

    app.add_startup_handler(announce)
    app.start()
    if restart:
        out.write(MSG_RESTARTING.format(paths=", ".join(restart)))
        return EXIT_RESTART
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace, out: TextIO) -> int:
    from .autoload import ENTRY_POINT_GROUP, load_entry_points

    loaded = load_entry_points()
    if not loaded:
        out.write(f"No plugins in the {ENTRY_POINT_GROUP!r} entry-point group.\n")
    for item in loaded:
        state = "loads" if item.error is None else f"FAILS: {item.error}"
        out.write(f"{item.name}  ({item.distribution or '?'}: {item.value})  {state}\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nexus-dataflow",
        description="Safe Nexus workflow discovery for projects with DataFlow models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="report what smart discovery finds in a project")
    scan.add_argument("path", nargs="?", default=".", help="project directory (default: .)")
    scan.add_argument("--json", action="store_true", help="print the report as JSON")
    scan.add_argument("--timeout", type=_positive, help="per-file timeout in seconds")
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
    serve.add_argument("--port", type=_port, default=8000, help="HTTP port (default: 8000)")
    serve.add_argument(
        "--database-url",
        help="database for the project's DataFlow models (default: $DATABASE_URL, "
        "else SQLite app.db in the project)",
    )
    serve.add_argument("--timeout", type=_positive, help="per-file discovery timeout, seconds")
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
    freeze.add_argument("--timeout", type=_positive, help="per-file timeout in seconds")
    freeze.set_defaults(func=cmd_freeze)
    plugins = sub.add_parser("plugins", help="list the nexus.plugins entry points")
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
    except (UsageError, ConfigError) as exc:
        sys.stderr.write(f"nexus-dataflow: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("nexus-dataflow: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
