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
``serve`` builds its server with the steps of ``serve.py`` and prints what each
step did; ``serve --reload`` serves in watch mode from a child process and
starts a new one when models change.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import site
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
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what `yes | head` reports: the reader left early

MSG_FAIL_ON = "--fail-on {status}: {path}"
MSG_NO_MODELS = ("models    none: no project file defines a DataFlow model "
                 "(name the module with --models)")
MSG_OWN_URL = ("note      {label} chooses its own database, not the one serve gave it "
               "({given}); read DATABASE_URL in your models to follow --database-url")
MSG_EXPOSED = ("note      {url} is reachable from other machines and Nexus authentication "
               "is off")
MSG_RESTARTING = "reload    {paths} changed: restarting the server\n"
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


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    """Build the server step by step (``serve.py``), printing each step's answer."""
    from . import serve
    from .config import load_settings

    base = Path(args.path).resolve()
    if not base.is_dir():
        raise UsageError(f"{args.path}: not a directory")
    url = serve.database_url(args.database_url or os.environ.get("DATABASE_URL"), Path.cwd(),
                             base)
    sock = serve.bind(args.host, args.port)
    if args.reload and not os.environ.get(serve.RELOAD_CHILD_ENV):
        sock.close()  # free, as checked; each server process the supervisor starts binds it
        out.flush()
        return serve.supervise([sys.executable, "-m", __spec__.name, *args.argv])

    serve.enter_project(base, url)
    settings = load_settings(base, {"timeout": args.timeout})
    out.write(f"project   {base}\n")
    static = serve.screen(base, settings)
    names = serve.model_modules(base, settings, args.models, static)
    if not names:
        out.write(MSG_NO_MODELS + "\n")
    for name in names:  # before Nexus: errors come first
        model = serve.load_model(name, base)
        out.write(f"models    {model.name} ({model.file})\n")
    server = serve.build(sock, args.timeout, args.reload)
    for rel in serve.dependents(static):
        loaded = serve.load_explicitly(server, base, rel)
        if loaded.refused is not None:
            out.write(f"refused   {loaded.refused}\n")
        elif loaded.failed is not None:
            out.write(f"error     {loaded.path}: {loaded.failed}\n")
        else:
            out.write(f"explicit  {loaded.path}: {', '.join(loaded.workflows) or '-'}\n")
    for found in serve.project_dataflows(base, url):
        out.write(f"database  {found.url} ({found.label})\n")
        if found.own_database:
            out.write(MSG_OWN_URL.format(label=found.label, given=url) + "\n")
        crud = serve.set_up_dataflow(server, found)
        out.write(f"dataflow  {len(crud)} CRUD workflows: {', '.join(crud)}\n")
    if server.exposed:
        out.write(MSG_EXPOSED.format(url=server.url) + "\n")

    def announce() -> None:
        if server.plugin.report is not None:
            out.write(format_table(server.plugin.report, colour=use_colour(out)) + "\n")
        for name in server.workflow_names():
            out.write(f"POST {server.url}/workflows/{name}/execute\n")
        out.write(f"Serving on {server.url} (Ctrl+C to stop)\n")
        out.flush()

    server.app.add_startup_handler(announce)
    server.app.start()
    if server.restart:
        out.write(MSG_RESTARTING.format(paths=", ".join(server.restart)))
        return serve.EXIT_RESTART
    return EXIT_OK


def autoload_state() -> tuple[bool, str]:
    """Whether this interpreter armed the autoload at start-up, and if not, why not.

    Asked before anything imports Nexus (the armed hook removes itself then).
    """
    from .autoload import discovery_hooked
    from .startup import DISABLE_ENV, PTH_FILE, START_FILE, armed, disabled

    if disabled():
        return False, MSG_AUTOLOAD_DISABLED.format(var=DISABLE_ENV, value=os.environ[DISABLE_ENV])
    if sys.flags.no_site:
        return False, MSG_AUTOLOAD_NO_SITE
    wanted = START_FILE if sys.version_info >= (3, 15) else PTH_FILE
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    shipped = [Path(d) / wanted for d in dirs if (Path(d) / wanted).is_file()]
    if not shipped:
        return False, MSG_AUTOLOAD_MISSING.format(file=wanted, dirs=", ".join(dirs))
    fired = discovery_hooked(getattr(sys.modules.get("nexus.core"), "Nexus", None))
    if not fired and not armed():
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
    from .serve import ServeError

    try:
        return int(args.func(args, out))
    except BrokenPipeError:
        # The reader (`| head`) left: nothing more to say, and nothing to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return EXIT_BROKEN_PIPE
    except (UsageError, ConfigError, ServeError) as exc:
        sys.stderr.write(f"nexus-dataflow: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("nexus-dataflow: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
