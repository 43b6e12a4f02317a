"""``nexus-dataflow``: scan a project, serve it, list plugins.

Errors in arguments or configuration are one line on stderr and exit 2, never
a traceback. ``scan`` exits 0 when the scan completed, whatever the files'
statuses (unless ``--fail-on`` names statuses that were found).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import report as r

EXIT_OK = 0
EXIT_FAIL_ON = 1
EXIT_USAGE = 2

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


def cmd_scan(args: argparse.Namespace, out: TextIO) -> int:
    from .config import load_settings
    from .discovery import SmartDiscovery

    base = Path(args.path).absolute()
    if not base.is_dir():
        raise UsageError(f"{args.path}: not a directory")
    settings = load_settings(base, {"timeout": args.timeout})
    report = SmartDiscovery(base, **settings.discovery_options()).run()
    if args.json:
        json.dump(report.to_dict(), out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(report, colour=out.isatty()) + "\n")
    if args.fail_on and any(e.status in args.fail_on for e in report.files):
        return EXIT_FAIL_ON
    return EXIT_OK


def module_name(rel: str) -> str:
    """``workflows/models.py`` -> ``workflows.models``: the name the app's own imports use."""
    return rel[: -len(".py")].replace("/", ".")


def project_dataflows(base: Path) -> list[Any]:
    """DataFlow instances held by modules of the project that are already imported."""
    from dataflow import DataFlow

    root = str(base.resolve()) + os.sep
    found: dict[int, Any] = {}
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None) or ""
        if not os.path.realpath(origin).startswith(root):
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

    static = SmartDiscovery(base, **settings.discovery_options()).screen()
    for entry in static:
        if entry.status == r.SKIPPED_MODEL:
            importlib.import_module(module_name(entry.path))
            out.write(f"models    {entry.path}\n")
    for entry in static:
        if entry.status == r.SKIPPED_DEPENDENT:
            names = plugin.load_workflows(base / entry.path, app=app)
            out.write(f"explicit  {entry.path}: {', '.join(names) or '-'}\n")
    for db in project_dataflows(base):
        db.create_tables()
        names = register_dataflow_workflows(app, db)
        out.write(f"dataflow  {len(names)} CRUD workflows: {', '.join(names)}\n")


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from nexus import Nexus

    from .config import load_settings
    from .plugin import DataFlowCompatiblePlugin

    base = Path(args.path).resolve()
    if not base.is_dir():
        raise UsageError(f"{args.path}: not a directory")
    database_url = args.database_url or os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{base / 'app.db'}"
    os.chdir(base)  # Nexus discovers from the working directory
    sys.path.insert(0, str(base))
    settings = load_settings(base, {"timeout": args.timeout})
    app = Nexus(api_port=args.port, auto_discovery=True, enable_durability=False)
    plugin = DataFlowCompatiblePlugin(timeout=args.timeout)
    app.add_plugin(plugin)
    out.write(f"project   {base}\ndatabase  {os.environ['DATABASE_URL']}\n")
    prepare_app(app, plugin, base, settings, out)

    def announce() -> None:
        if plugin.report is not None:
            out.write(format_table(plugin.report, colour=out.isatty()) + "\n")
        for name in sorted(app._workflows):
            out.write(f"POST http://127.0.0.1:{args.port}/workflows/{name}/execute\n")
        out.write(f"Serving on http://127.0.0.1:{args.port} (Ctrl+C to stop)\n")
        out.flush()

    app.add_startup_handler(announce)
    app.start()
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
    parser = argparse.ArgumentParser(
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
    scan.set_defaults(func=cmd_scan)
    serve = sub.add_parser("serve", help="run a Nexus server on a project, with the plugin")
    serve.add_argument("path", nargs="?", default=".", help="project directory (default: .)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    serve.add_argument(
        "--database-url",
        help="database for the project's DataFlow models (default: $DATABASE_URL, "
        "else SQLite app.db in the project)",
    )
    serve.add_argument("--timeout", type=_positive, help="per-file discovery timeout, seconds")
    serve.set_defaults(func=cmd_serve)
    plugins = sub.add_parser("plugins", help="list the nexus.plugins entry points")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    from .config import ConfigError

    try:
        return int(args.func(args, out))
    except (UsageError, ConfigError) as exc:
        sys.stderr.write(f"nexus-dataflow: error: {exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
