"""Per-file outcomes of a discovery scan.

Errors are data: every candidate file ends with exactly one status and a
reason a person can act on. The user-facing sentences live here as constants
so the CLI, the logs and the docs all say the same thing.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the out-of-process screen imports this without Kailash
    from kailash.workflow import Workflow

REGISTERED = "registered"
NO_WORKFLOWS = "no_workflows"
SKIPPED_MODEL = "skipped_model"
SKIPPED_DEPENDENT = "skipped_dependent"
TIMEOUT = "timeout"
CRASHED = "crashed"
ERROR = "error"
NOT_TRANSFERABLE = "not_transferable"

STATUSES = (
    REGISTERED,
    NO_WORKFLOWS,
    SKIPPED_MODEL,
    SKIPPED_DEPENDENT,
    TIMEOUT,
    CRASHED,
    ERROR,
    NOT_TRANSFERABLE,
)

# What ``scan --explain`` says of a file no scan status covers yet.
PASSES_SCREEN = "passes_screen"
NOT_A_CANDIDATE = "not_a_candidate"

# Statuses that mean "this file needs the user's attention".
PROBLEM_STATUSES = frozenset({TIMEOUT, CRASHED, ERROR, NOT_TRANSFERABLE})
# Files discovery left to the app on purpose: worth a line, not a warning.
SKIPPED_STATUSES = frozenset({SKIPPED_MODEL, SKIPPED_DEPENDENT})

# --- user-facing messages -------------------------------------------------

MSG_REGISTERED = "Imported in an isolated worker; {count} workflow(s) found."
MSG_READ = (
    "Read as data, not run: the file only declares workflows; {count} workflow(s) found."
)
MSG_NO_WORKFLOWS = (
    "Imported in an isolated worker; no module-level Workflow, WorkflowBuilder or "
    "zero-argument factory returning one was found."
)
MSG_SKIPPED_MODEL = (
    "Defines DataFlow models or a DataFlow instance ({detail}); discovery never executes "
    "model files. Register its workflows explicitly after your models are loaded "
    "(register_dataflow_workflows(app, db) or plugin.load_workflows(path))."
)
MSG_SKIPPED_DEPENDENT = (
    "Imports a DataFlow model module ({chain}); importing it would re-run the models. "
    "Load it in the server after your models exist: plugin.load_dependents() (or "
    "load_dependents=True), or plugin.load_workflows({path!r})."
)
MSG_SKIPPED_UNSCREENABLE = (
    "Imports a module the screen cannot read ({chain}); it is not imported, since that "
    "module may reach DataFlow models. Keep its source next to it, or load this file "
    "explicitly after your models exist: plugin.load_workflows({path!r})."
)
MSG_TIMEOUT = (
    "Did not finish within {timeout:g}s (hangs at import or in a factory); its process was "
    "killed. Move slow work out of module level, or raise the timeout."
)
MSG_TIMEOUT_STOPPED = (
    "Was stopped after {elapsed:.1f}s of its {timeout:g}s limit (hangs at import or in a "
    "factory), still running{where}. Move slow work out of module level, or raise the timeout."
)
MSG_CRASHED = (
    "Its process died while importing this file ({how}); the rest of the scan "
    "went on. Check for os._exit, native crashes or resource exhaustion at import."
)
MSG_PASSES_SCREEN = (
    "Neither defines nor imports DataFlow models: a scan reads it as data if it only "
    "declares workflows, else imports it in an isolated worker (run `nexus-dataflow scan` "
    "for the outcome)."
)
MSG_NOT_A_CANDIDATE = (
    "Discovery does not look at this file: it matches none of the patterns {patterns}, or "
    "it is excluded."
)
MSG_SYNTAX = "Cannot be parsed: {what} at line {line}. Fix the syntax error."
MSG_DECODE = (
    "Cannot be decoded as Python source at line {line}: {what}. Save it as UTF-8, or "
    "declare its encoding on the first line (# -*- coding: latin-1 -*-)."
)
MSG_NUL = "Contains a NUL byte at line {line} (byte offset {offset}); not a Python source file."
MSG_UNREADABLE = "Cannot be read: {what}."
MSG_SCREEN_TIMEOUT = (
    "Screening it (parsing its source, without running it) did not finish within "
    "{timeout:g}s, so it was neither screened nor imported. Split the file or simplify "
    "its largest expressions (very long f-strings parse slowly), or raise the timeout."
)
MSG_SCREEN_FAILED = "Could not be screened: {what}."
MSG_SOURCELESS = (
    "{path} is a compiled module without source ({kind}); the screen cannot read what it "
    "imports, so it may reach DataFlow models"
)
MSG_STALLED_MODULE = (
    "{path} could not be screened within the timeout (parsing it took too long), so what "
    "it imports is unknown"
)
MSG_GUARD_STOPPED = (
    "Stopped by the runtime guard when it tried to {action} ({chain}); discovery never lets "
    "a file reach DataFlow. Load it explicitly after your models exist: "
    "plugin.load_workflows({path!r})."
)
MSG_NOT_TRANSFERABLE = (
    "{problems}. Register this workflow explicitly with app.register(name, workflow) "
    "in your app."
)
MSG_INVALID_RESULT = (
    "Its process sent a result the server refused ({problem}); nothing of it was used."
)
PROBLEM_TOO_LARGE = (
    "{size:,} bytes, over the {limit:,}-byte limit set by max_result_bytes "
    "(NEXUS_DATAFLOW_MAX_RESULT_BYTES)"
)
PROBLEM_TOO_MANY_NODES = (
    "{count:,} nodes and connections, over the limit of {limit:,} set by max_result_nodes "
    "(NEXUS_DATAFLOW_MAX_RESULT_NODES)"
)
MSG_CHANGED = (
    "Changed while it was being scanned (its bytes are not the ones the screen judged, "
    "twice); run the scan again once it is saved."
)
MSG_NEEDS_MODELS = (
    "{name!r} is built from DataFlow nodes of your models {models}: the server rebuilds it "
    "with the app's own nodes, so the app must import those models before start()."
)
MSG_MODEL_MISSING = (
    "{attr}: built from DataFlow nodes of {models}, which the app had not registered when "
    "discovery ran; import your models (the module that defines them) before calling "
    "start()."
)
MSG_NAME_TAKEN = (
    "The name {name!r} is also produced by {owner}, which wins (as in native discovery)."
)
MSG_KEPT_LAST_GOOD = (
    "The last good version keeps serving ({names}) until the file is fixed or removed."
)
MSG_MODELS_CHANGED = (
    "DataFlow models, or files loaded into the server process, changed ({paths}); discovery "
    "never re-runs them. Restart the server to load them (nexus-dataflow serve --reload "
    "restarts by itself)."
)


@dataclass(frozen=True)
class FileResult:
    """What happened to one candidate file; made once. What happens to it after the scan
    (a name Nexus refused, a file loaded later) is a new entry from ``noted``."""

    path: str
    status: str
    reason: str
    workflows: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration_s"] = round(self.duration_s, 4)
        return data


def noted(entry: FileResult, note: str, *, drop: str | None = None, status: str | None = None,
          workflows: list[str] | None = None) -> FileResult:
    """``entry`` with ``note`` added to its reason: ``drop`` takes a name off its workflows
    (one it had registered and left with none takes ``status``), ``workflows`` replaces
    them (a file loaded after the scan)."""
    names = list(entry.workflows if workflows is None else workflows)
    if drop is not None and drop in names:
        names.remove(drop)
    new_status = entry.status
    if status is not None and not names and entry.status == REGISTERED:
        new_status = status
    reason = f"{entry.reason} {note}" if note else entry.reason
    return replace(entry, status=new_status, reason=reason, workflows=names)


def log_level(status: str) -> int:
    """Problems at WARNING, files left to the app at INFO, the rest at DEBUG."""
    if status in PROBLEM_STATUSES:
        return logging.WARNING
    return logging.INFO if status in SKIPPED_STATUSES else logging.DEBUG


@dataclass
class DiscoveryReport:
    """The outcome of one scan: the workflows to register and one entry per file."""

    base_path: str
    workflows: dict[str, Workflow] = field(default_factory=dict)
    files: list[FileResult] = field(default_factory=list)
    duration_s: float = 0.0
    # What a server with the project's models loaded would register, not rebuilt by this
    # scan (it ran without them: ``SmartDiscovery(models_loaded=False)``): name -> the
    # workflow as data (``data``, ``node_modules``), for ``freeze``.
    deferred: dict[str, dict[str, Any]] = field(default_factory=dict)
    # ``skipped_dependent`` files since loaded into the server (``load_dependents()``).
    loaded: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of files per status, in the canonical status order."""
        seen = Counter(entry.status for entry in self.files)
        return {status: seen[status] for status in STATUSES if seen[status]}

    def by_status(self, *statuses: str) -> list[FileResult]:
        return [entry for entry in self.files if entry.status in statuses]

    def file(self, path: str) -> FileResult | None:
        """The entry for a relative POSIX path, or None."""
        for entry in self.files:
            if entry.path == path:
                return entry
        return None

    def note(self, path: str, note: str, *, drop: str | None = None,
             status: str | None = None, workflows: list[str] | None = None) -> None:
        """Replace ``path``'s entry with ``noted(entry, ...)``: the one way the plugin
        changes a report after the scan. A path the report lacks is left alone."""
        for i, entry in enumerate(self.files):
            if entry.path == path:
                self.files[i] = noted(entry, note, drop=drop, status=status,
                                      workflows=workflows)

    def log(self, log: logging.Logger, title: str) -> None:
        """One INFO summary under ``title``, then each file at its status's level."""
        log.info("%s: %s", title, self.summary())
        for entry in self.files:
            log.log(log_level(entry.status), "  %s [%s] %s", entry.path, entry.status,
                    entry.reason)

    def summary(self) -> str:
        """One line: counts by status and total time, for logs and the CLI."""
        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items())
        return (
            f"{len(self.workflows) + len(self.deferred)} workflow(s) from {len(self.files)} file(s)"
            f" [{counts or 'no candidate files'}] in {self.duration_s:.2f}s"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflows": [*self.workflows, *self.deferred],
            "files": [entry.to_dict() for entry in self.files],
        }
