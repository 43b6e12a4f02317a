"""Frozen discovery: a reviewed manifest of a scan, and starting from it.

``nexus-dataflow freeze`` scans once (in CI or the image build) and writes
what the scan found as data: every workflow that would be registered
(``Workflow.to_dict()`` plus the library modules of its node classes), every
file's report entry, the sha256 of each scanned file and of each project
module those files import, and the versions of the four packages involved.
At ``start()``, a server with the ``manifest`` setting hashes those files and,
when every digest matches, rebuilds the workflows with ``transfer.decode``
(which imports installed library modules only): no worker starts, and no
project file is executed, imported or parsed. Files that changed are scanned
in isolation as usual, or, in strict mode, refuse the start.

The manifest holds relative paths only and nothing of the machine, so one
artifact serves every replica; the same tree gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from kailash.workflow import Workflow

from . import report as r
from .config import Settings
from .discovery import SmartDiscovery, name_workflows
from .finder import Candidate, find_candidates
from .isolation import WorkerPool
from .paths import read_regular
from .transfer import decode, quiet_rebuilds

logger = logging.getLogger(__name__)

FORMAT = 1
KIND = "nexus-dataflow-manifest"
DISTRIBUTIONS = ("nexus-dataflow-plugin", "kailash", "kailash-nexus", "kailash-dataflow")
# Generated workflow ids become stable ones, derived from the registered name.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://pypi.org/project/nexus-dataflow-plugin/")

FIX = "Re-run `nexus-dataflow freeze -o {path}` with this project and these packages."
MSG_MISSING = "Manifest {path} does not exist. " + FIX
MSG_CORRUPT = "Manifest {path} cannot be used: {problem}. " + FIX
MSG_FOREIGN = "Manifest {path} was made with {made}, but {installed} is installed. " + FIX
MSG_STALE = (
    "Manifest {path} does not match the project: {files}. manifest_strict refuses to start "
    "from a manifest that is out of date. " + FIX
)
MSG_PARTIAL = (
    "Manifest {path}: {count} file(s) differ from it and are scanned in isolation; the rest "
    "come from the manifest: {files}"
)
MSG_STARTED = "Started from manifest {path}: {kept} file(s) from it, {scanned} scanned."
MSG_FALLBACK = "{error} Scanning every file instead (set manifest_strict to refuse to start)."
# How a file can differ from the manifest (the lists above name each file so).
CHANGED = "changed"
ADDED = "new"
REMOVED = "removed"
UNREBUILDABLE = "cannot be rebuilt: {error}"


class ManifestError(RuntimeError):
    """A manifest that cannot be used: the message names the file and says what to do."""


# -- building ------------------------------------------------------------------------


def installed_versions() -> dict[str, str]:
    """The versions a manifest is made with and checked against."""
    found = {}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def digest(path: Path) -> str | None:
    """sha256 of the file's bytes; None when it cannot be read."""
    try:
        return hashlib.sha256(read_regular(path)).hexdigest()
    except OSError:
        return None


def _candidate_digest(candidate: Candidate) -> str | None:
    """A refused candidate (outside the project, too large) is never read: no digest."""
    if candidate.refusal is not None or candidate.real is None:
        return None
    return digest(candidate.real)


def _stable(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``to_dict()`` without what changes at every build: the build time and a random id.

    A generated (UUID4) workflow id becomes a UUID5 of the registered name, so
    every replica registers the same id; an id the project chose is kept.
    """
    data = dict(data)
    meta = {k: v for k, v in (data.get("metadata") or {}).items() if k != "created_at"}
    data["metadata"] = meta
    old = str(data.get("workflow_id", ""))
    try:
        generated = uuid.UUID(old).version == 4
    except ValueError:
        generated = False
    if generated:
        new = str(uuid.uuid5(_ID_NAMESPACE, name))
        data["workflow_id"] = new
        for holder in (data, meta):
            if holder.get("name") == f"Workflow-{old[:8]}":
                holder["name"] = f"Workflow-{new[:8]}"
    return data


def workflow_record(workflow: Workflow, name: str, rel: str) -> dict[str, Any]:
    """A registered workflow as the server needs it to rebuild it."""
    modules = {
        node.get("node_type"): type(workflow._node_instances[node_id]).__module__
        for node_id, node in workflow.to_dict().get("nodes", {}).items()
        if node_id in workflow._node_instances
    }
    return {"file": rel, "node_modules": dict(sorted(modules.items())),
            "data": _stable(workflow.to_dict(), name)}


def _deferred_record(deferred: Mapping[str, Any], name: str, rel: str) -> dict[str, Any]:
    """A workflow built from the project's model nodes, as the worker sent it: the server
    rebuilds it with the app's own nodes at start, as a scan would."""
    return {"file": rel, "node_modules": dict(sorted(deferred["node_modules"].items())),
            "data": _stable(deferred["data"], name)}


def _relative_text(text: str, base: Path) -> str:
    """A reason without the machine's paths: the project's become relative."""
    for root in dict.fromkeys((str(base.resolve()), str(base))):
        text = text.replace(root + os.sep, "").replace(root, ".")
    for prefix in dict.fromkeys((sys.prefix, sys.exec_prefix, sys.base_prefix)):
        text = text.replace(prefix + os.sep, "<python>/")
    return text


def _reason(entry: r.FileResult, discovery: SmartDiscovery) -> str:
    """The entry's reason, minus what differs between two scans of the same tree."""
    if entry.status == r.TIMEOUT:  # how long it ran before it was stopped varies
        return r.MSG_TIMEOUT.format(timeout=discovery.settings.timeout)
    return _relative_text(entry.reason, discovery.base)


def _imports(discovery: SmartDiscovery, candidates: Sequence[Candidate]) -> dict[str, list[str]]:
    """Each readable candidate's project imports, transitively, as relative paths."""
    cache = discovery.screen_cache()
    graph = discovery.import_graph(cache)
    root = discovery.base.resolve()
    found: dict[str, list[str]] = {}
    for candidate in candidates:
        if candidate.refusal is not None or candidate.real is None:
            continue
        seen: dict[Path, None] = {}
        stack = [candidate.real]
        while stack:
            for target in graph.edges(stack.pop()):
                if target not in seen and target != candidate.real:
                    seen[target] = None
                    stack.append(target)
        found[candidate.rel] = sorted(p.relative_to(root).as_posix() for p in seen
                                      if p.is_relative_to(root))
    cache.save()
    return found


def build_manifest(discovery: SmartDiscovery, report: r.DiscoveryReport) -> dict[str, Any]:
    """The manifest of ``report``, a full scan made by ``discovery``."""
    found = discovery.find()
    imports = _imports(discovery, found.candidates)
    root = discovery.base.resolve()
    entries = {entry.path: entry for entry in report.files}
    files: dict[str, Any] = {}
    for candidate in sorted(found.candidates, key=lambda c: c.rel):
        entry = entries.get(candidate.rel)
        if entry is None:
            continue
        files[candidate.rel] = {
            "sha256": _candidate_digest(candidate),
            "status": entry.status,
            "reason": _reason(entry, discovery),
            "workflows": list(entry.workflows),
            "imports": imports.get(candidate.rel, []),
        }
    owner = {name: rel for rel, record in files.items() for name in record["workflows"]}
    modules = sorted({m for record in files.values() for m in record["imports"]})
    return {
        "kind": KIND,
        "format": FORMAT,
        "versions": installed_versions(),
        "files": files,
        "modules": {m: digest(root / m) for m in modules},
        "workflows": {
            name: workflow_record(report.workflows[name], name, owner[name])
            if name in report.workflows else _deferred_record(report.deferred[name], name,
                                                               owner[name])
            for name in sorted([*report.workflows, *report.deferred]) if name in owner
        },
    }


def freeze(base: str | os.PathLike[str] | None, settings: Settings) -> dict[str, Any]:
    """Scan ``base`` (isolated, as always) and return its manifest; as ``scan``, it records
    what a server with the project's models loaded would register."""
    discovery = SmartDiscovery(base, settings, models_loaded=False)
    return build_manifest(discovery, discovery.run())


def dumps(manifest: Mapping[str, Any]) -> str:
    """Deterministic text a reviewer can diff: keys in order, one item a line."""
    return json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"


def write(manifest: Mapping[str, Any], path: Path) -> None:
    """Replace ``path`` atomically, so a replica never reads half a manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dumps(manifest))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- reading -------------------------------------------------------------------------


def _shape_problem(data: Any) -> str | None:
    """What is wrong with the document's shape, or None."""
    if not isinstance(data, dict) or data.get("kind") != KIND:
        return f"it is not a {KIND} (no \"kind\": \"{KIND}\")"
    if data.get("format") != FORMAT:
        return f"its format is {data.get('format')!r}; this plugin reads format {FORMAT}"
    for key in ("versions", "files", "modules", "workflows"):
        if not isinstance(data.get(key), dict):
            return f"its {key!r} is not an object"
    for rel in [*data["files"], *data["modules"]]:
        if not _relative(rel):
            return f"it names {rel!r}, which is not a path inside the project"
    for rel, record in data["files"].items():
        if not (isinstance(record, dict) and _strings(record.get("workflows"))
                and _strings(record.get("imports"))
                and all(m in data["modules"] for m in record["imports"])
                and isinstance(record.get("status"), str)
                and isinstance(record.get("reason"), str)
                and isinstance(record.get("sha256"), (str, type(None)))):
            return f"its entry for {rel} is incomplete"
    for name, record in data["workflows"].items():
        if not (isinstance(record, dict) and isinstance(record.get("data"), dict)
                and isinstance(record.get("node_modules", {}), dict)
                and record.get("file") in data["files"]):
            return f"its workflow {name!r} is incomplete"
    return None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _relative(rel: str) -> bool:
    """A relative POSIX path that stays inside the project (no ``..``, not absolute)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts and "\\" not in rel


def load_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, made with the installed versions, or ``ManifestError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(MSG_MISSING.format(path=path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(MSG_CORRUPT.format(path=path, problem=exc)) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(MSG_CORRUPT.format(path=path, problem=f"not JSON ({exc})")) from None
    problem = _shape_problem(data)
    if problem:
        raise ManifestError(MSG_CORRUPT.format(path=path, problem=problem))
    installed = installed_versions()
    made = data["versions"]
    differ = [d for d in DISTRIBUTIONS if made.get(d) != installed[d]]
    if differ:
        raise ManifestError(MSG_FOREIGN.format(
            path=path,
            made=", ".join(f"{d} {made.get(d, 'unknown')}" for d in differ),
            installed=", ".join(f"{d} {installed[d]}" for d in differ),
        ))
    return data


def manifest_path(base: Path, setting: str) -> Path:
    """The ``manifest`` setting, relative to the project when it is relative."""
    return Path(base, setting).absolute()


# -- comparing -----------------------------------------------------------------------


def differences(manifest: Mapping[str, Any], base: Path,
                candidates: Iterable[Candidate]) -> dict[str, str]:
    """Files that no longer match the manifest, by hashing (never parsing) them.

    A candidate differs when it is new, its bytes changed, or a project module
    it imports changed; a file the manifest lists that is no candidate now is
    removed. Keys are relative paths, values say how (``CHANGED`` ...).
    """
    files = manifest["files"]
    root = base.resolve()
    modules = {m: digest(root / m) for m in manifest["modules"]}
    changed_modules = {m for m, d in modules.items() if d != manifest["modules"][m]}
    found: dict[str, str] = {}
    present = set()
    for candidate in candidates:
        present.add(candidate.rel)
        record = files.get(candidate.rel)
        if record is None:
            found[candidate.rel] = ADDED
        elif _candidate_digest(candidate) != record["sha256"]:
            found[candidate.rel] = CHANGED
        elif changed := [m for m in record["imports"] if m in changed_modules]:
            found[candidate.rel] = f"{CHANGED} via {', '.join(changed)}"
    for rel in files:
        if rel not in present:
            found[rel] = REMOVED
    return found


def _view(manifest: Mapping[str, Any], rel: str) -> Any:
    """What of a file must be equal for it to match: all but the wording of its reason."""
    record = manifest["files"].get(rel)
    if record is None:
        return None
    owned = {n: manifest["workflows"].get(n) for n in record["workflows"]}
    return ({k: v for k, v in record.items() if k != "reason"}, owned)


def check(path: Path, fresh: Mapping[str, Any]) -> list[str]:
    """Why the manifest at ``path`` is not what a freeze makes now (empty: it is)."""
    try:
        old = load_manifest(path)
    except ManifestError as exc:
        return [str(exc)]
    fresh = json.loads(dumps(fresh))  # as it would be read back: tuples become lists
    lines = []
    for rel in sorted(set(old["files"]) | set(fresh["files"])):
        if _view(old, rel) != _view(fresh, rel):
            how = ADDED if rel not in old["files"] else (
                REMOVED if rel not in fresh["files"] else CHANGED)
            lines.append(f"{rel}: {how}")
    for module in sorted(set(old["modules"]) | set(fresh["modules"])):
        if old["modules"].get(module) != fresh["modules"].get(module):
            lines.append(f"{module}: {CHANGED} (imported by a discovered file)")
    return lines


# -- starting from a manifest ---------------------------------------------------------


def _rebuild(manifest: Mapping[str, Any], rels: Iterable[str]) -> tuple[
        dict[str, dict[str, Workflow]], dict[str, str]]:
    """Each file's workflows rebuilt from data; the files where that failed, and why."""
    by_file: dict[str, dict[str, Workflow]] = {rel: {} for rel in rels}
    failed: dict[str, str] = {}
    strings: dict[str, str] = {}
    with quiet_rebuilds:
        for name, record in manifest["workflows"].items():
            rel = record["file"]
            if rel not in by_file or rel in failed:
                continue
            try:
                by_file[rel][name] = decode(record["data"], record.get("node_modules") or {},
                                            strings)
            except Exception as exc:  # noqa: BLE001 - any rebuild failure: rescan that file
                failed[rel] = UNREBUILDABLE.format(error=f"{type(exc).__name__}: {exc}")
    return by_file, failed


def _listing(found: Mapping[str, str]) -> str:
    return "; ".join(f"{rel} ({how})" for rel, how in found.items())


def start_from_manifest(
    base: Path, settings: Settings, pool: WorkerPool | None = None
) -> r.DiscoveryReport:
    """Discovery at ``start()`` with the ``manifest`` setting: see the module docstring.

    Raises ``ManifestError`` in strict mode when the manifest cannot be used or
    does not match; otherwise such a manifest is logged at ERROR and every file
    is scanned, and changed files alone are scanned with one WARNING line.
    """
    if settings.manifest is None:
        raise ValueError("start_from_manifest needs the manifest setting")
    path = manifest_path(base, settings.manifest)
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        if settings.manifest_strict:
            raise
        logger.error(MSG_FALLBACK.format(error=exc))
        return SmartDiscovery(base, settings, pool=pool).run()
    began = time.monotonic()
    started = r.DiscoveryReport(base_path=str(base))
    found = find_candidates(base, exclude=settings.exclude, max_file_bytes=settings.max_file_bytes)
    differ = differences(manifest, base, found.candidates)
    unchanged = [c.rel for c in found.candidates if c.rel not in differ]
    rebuilt, failed = _rebuild(manifest, unchanged)
    differ.update(failed)
    if differ and settings.manifest_strict:
        raise ManifestError(MSG_STALE.format(path=path, files=_listing(differ)))
    scanned = r.DiscoveryReport(base_path=str(base))
    if differ:
        logger.warning(MSG_PARTIAL.format(path=path, count=len(differ), files=_listing(differ)))
        rescan = [rel for rel in differ if differ[rel] != REMOVED]
        if rescan:
            scanned = SmartDiscovery(base, settings, pool=pool).run(only=rescan)
    entries: dict[str, r.FileResult] = {e.path: e for e in scanned.files}
    workflows: dict[str, dict[str, Workflow]] = {
        e.path: {n: scanned.workflows[n] for n in e.workflows} for e in scanned.files}
    for rel in unchanged:
        if rel in failed:
            continue
        record = manifest["files"][rel]
        entries[rel] = r.FileResult(rel, record["status"], record["reason"],
                                    list(record["workflows"]))
        workflows[rel] = rebuilt[rel]
    owner = name_workflows(found.order, workflows)
    for name, rel in owner.items():
        started.workflows[name] = workflows[rel][name]
    for rel, named in workflows.items():
        for name in named:
            if owner[name] != rel and name in entries[rel].workflows:
                entries[rel] = r.noted(entries[rel], r.MSG_NAME_TAKEN.format(
                    name=name, owner=owner[name]), drop=name)
    started.files = [entries[c.rel] for c in found.candidates if c.rel in entries]
    started.duration_s = time.monotonic() - began
    logger.info(MSG_STARTED.format(path=path, kept=len(unchanged) - len(failed),
                                   scanned=len(scanned.files)))
    return started
