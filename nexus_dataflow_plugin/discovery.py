"""SmartDiscovery: the stages in order.

find (finder) -> screen (screen, imports) -> isolate (isolation) ->
transfer (transfer) -> report (report). Nothing from a candidate file is ever
executed in this process.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import stat
import sys
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kailash.workflow import Workflow

from . import protocol as proto
from . import report as r
from .cache import ScreenCache
from .dataflow_workflows import OPERATIONS, node_name_for
from .finder import (
    DEFAULT_MAX_FILE_BYTES,
    WORKFLOW_PATTERNS,
    Candidate,
    Found,
    find_candidates,
    resolve_base,
)
from .imports import FactsOf, ImportGraph
from .isolation import (
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_MAX_RESULT_NODES,
    GENERATED_NODES_MODULE,
    OUTCOME_CRASHED,
    OUTCOME_INVALID,
    OUTCOME_TIMEOUT,
    Limits,
    Outcome,
    Task,
    WorkerPool,
    library_node_modules,
)
from .paths import is_environment
from .probe import workflow_name
from .screen import Facts
from .transfer import decode, quiet_rebuilds

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0


def dataflow_node_types() -> frozenset[str]:
    """Node types DataFlow generated from the app's models, as the server has them now."""
    from kailash.nodes.base import NodeRegistry

    return frozenset(
        name
        for name, cls in list(NodeRegistry._nodes.items())
        if getattr(cls, "__module__", None) == GENERATED_NODES_MODULE
    )


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for a scan, as it was found after.

    A scan allocates many small objects (ASTs, workflow graphs) and frees them
    in bulk; in a server that has imported Nexus, collection passes over its
    whole heap cost about a quarter of the screen's time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# What DataFlow appends to a model's class name for each node it generates.
MODEL_NODE_SUFFIXES = tuple(node_name_for("", op) for op in OPERATIONS)
# Directories a project's own models are never in.
_NOT_PROJECT_DIRS = frozenset({"__pycache__", "node_modules", "site-packages"})


class ModelIndex:
    """Every DataFlow model class the project defines, and the node types DataFlow
    generates for each, found by the screen (walking the project on first need).

    Also the node types DataFlow generated in this process (the server's models).
    """

    def __init__(self, base: Path, graph: ImportGraph, facts_of: FactsOf,
                 max_file_bytes: int) -> None:
        self.base = base
        self.graph = graph
        self.facts_of = facts_of
        self.max_file_bytes = max_file_bytes
        self.generated = dataflow_node_types()
        self._project: dict[str, tuple[str, str]] | None = None

    def standins(self, node_types: Sequence[str]) -> tuple[str, ...]:
        """The node types of ``node_types`` that DataFlow generates from a model."""
        if any(t.endswith(MODEL_NODE_SUFFIXES) and t not in self.generated for t in node_types):
            self._walk()
        project = self._project or {}
        return tuple(t for t in node_types if t in self.generated or t in project)

    def model_of(self, node_type: str) -> str:
        """``Customer (models.py)``: the model a node type comes from, and its file."""
        self._walk()
        found = (self._project or {}).get(node_type)
        if found is not None:
            return f"{found[0]} ({found[1]})"
        for suffix in MODEL_NODE_SUFFIXES:
            if node_type.endswith(suffix):
                return node_type[: -len(suffix)]
        return node_type

    def _walk(self) -> None:
        if self._project is not None:
            return
        self._project = {}
        base = self.base.resolve()
        for root, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and d not in _NOT_PROJECT_DIRS
                             and not os.path.exists(os.path.join(root, d, "pyvenv.cfg")))
            for name in sorted(files):
                if name.endswith(".py"):
                    self._add(Path(root, name))

    def _add(self, path: Path) -> None:
        """Learn ``path``'s model classes. Only a regular file, small enough, is read (a
        FIFO or ``/dev/zero`` under a ``.py`` name would block or never end), and only
        one whose bytes hold ``.model`` is screened: most of a project cannot define
        models, and screening a large file starts a process."""
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_file_bytes:
                return
            if b".model" not in path.read_bytes():
                return
        except OSError:
            return
        facts = self.facts_of(path)
        if not facts.model_classes or self.graph.own_model(path) is None:
            return
        rel = path.relative_to(self.base.resolve()).as_posix()
        for cls in facts.model_classes:
            for op in OPERATIONS:
                self._project.setdefault(node_name_for(cls, op), (cls, rel))  # type: ignore[union-attr]


@dataclass
class _Loaded:
    """A file's decoded workflows (attr -> Workflow) and what went wrong.

    ``needs``: attr -> the models its workflow's nodes come from; ``deferred``: those
    not rebuilt here (a scan outside the server); ``missing``: why a workflow whose
    models the app has not registered was not loaded.
    """

    workflows: dict[str, Workflow]
    problems: list[str]
    failures: list[str]
    needs: dict[str, list[str]] = field(default_factory=dict)
    deferred: dict[str, proto.WorkflowData] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _decode_result(result: proto.Result, models: ModelIndex | None = None,
                   models_loaded: bool = True) -> _Loaded:
    loaded = _Loaded({}, [], list(result.failures))
    for entry in result.workflows:
        problems = list(entry.problems)
        if entry.model_nodes and models is not None and not problems:
            needs = list(dict.fromkeys(models.model_of(t) for t in entry.model_nodes))
            loaded.needs[entry.attr] = needs
            if not models_loaded:
                loaded.deferred[entry.attr] = entry
                continue
            registered = dataflow_node_types()
            unregistered = [models.model_of(t) for t in entry.model_nodes if t not in registered]
            if unregistered:
                loaded.missing.append(r.MSG_MODEL_MISSING.format(
                    attr=entry.attr, models=", ".join(dict.fromkeys(unregistered))))
                continue
        if not problems and entry.data is not None:
            try:
                loaded.workflows[entry.attr] = decode(entry.data, entry.node_modules)
                continue
            except Exception as exc:  # noqa: BLE001 - any rebuild failure is reported
                problems = [f"{type(exc).__name__}: {exc}"]
        loaded.problems.append(f"{entry.attr}: " + "; ".join(problems or ["no data"]))
    return loaded


def _crash_reason(outcome: Outcome) -> str:
    how = outcome.detail
    last = outcome.stderr_tail.splitlines()[-1:] if outcome.stderr_tail else []
    if last:
        how += f"; last stderr line: {last[0][:200]}"
    return r.MSG_CRASHED.format(how=how)


class SmartDiscovery:
    """Discover workflows the way Nexus does, without running any file in this process.

    ``timeout`` is per file (import plus factory calls); ``workers`` the most
    parallel worker processes (default: the number of cores; one per 50 files
    to import is started). ``models_loaded``: this process holds the app's models
    (a server), so workflows built from their nodes are rebuilt with them; False
    (the CLI) reports them as a server with the models loaded would, unbuilt.
    """

    def __init__(
        self,
        base_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        workers: int | None = None,
        exclude: Sequence[str] = (),
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        memory_limit_mb: int | None = 4096,
        cpu_limit_s: int | None = 60,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        pool: WorkerPool | None = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        max_result_nodes: int = DEFAULT_MAX_RESULT_NODES,
        models_loaded: bool = True,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        self.base = resolve_base(base_path)
        self.timeout = float(timeout)
        self.workers = workers or os.cpu_count() or 1
        self.exclude = tuple(exclude)
        self.max_file_bytes = max_file_bytes
        self.limits = Limits(
            timeout_s=self.timeout,
            memory_bytes=memory_limit_mb * 1024 * 1024 if memory_limit_mb else None,
            cpu_seconds=cpu_limit_s,
            max_result_bytes=max_result_bytes,
            max_result_nodes=max_result_nodes,
        )
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.pool = pool
        self.models_loaded = models_loaded
        self.models: ModelIndex | None = None  # the last screen's

    def screen(self) -> list[r.FileResult]:
        """The static stages alone: entries for files decided without importing anything
        (skipped_model, skipped_dependent, error). No worker is started."""
        found = self._find()
        entries, _ = self._static(found)
        return [entries[c.rel] for c in found.candidates if c.rel in entries]

    def _static(self, found: Found) -> tuple[dict[str, r.FileResult], ScreenCache]:
        """Screen every candidate; the cache it filled is returned for further questions."""
        entries: dict[str, r.FileResult] = {}
        cache = self._cache()
        try:
            with paused_gc():
                for _ in self._screen(found.candidates, entries, cache):
                    pass
        finally:
            cache.save()  # ends the screen's processes, however the screen ended
        return entries, cache

    def run(self, *, only: Collection[str] | None = None) -> r.DiscoveryReport:
        """Every stage: the report holds the workflows to register and one entry per file.

        ``only`` (relative POSIX paths of candidates) keeps just those candidates
        after finding as usual; names among them resolve in native order.
        """
        with paused_gc():
            return self._run(only)

    def _run(self, only: Collection[str] | None = None) -> r.DiscoveryReport:
        started = time.monotonic()
        found = self._find()
        if only is not None:
            keep = set(only)
            found = Found(found.base, tuple(c for c in found.candidates if c.rel in keep),
                          tuple(rel for rel in found.order if rel in keep))
        entries: dict[str, r.FileResult] = {}
        loaded: dict[str, _Loaded] = {}
        cache = self._cache()
        tasks: dict[int, tuple[Candidate, Facts]] = {}
        pool = self.pool
        try:
            jobs = self._jobs(self._screen(found.candidates, entries, cache), tasks, cache)
            first = next(jobs, None)
            if first is not None:
                if pool is None:
                    # The first file to import: start workers now, so that their warm-up
                    # overlaps the rest of the screen.
                    pool = self.make_pool().start(files=len(found.candidates))
                self._isolate(itertools.chain([first], jobs), len(found.candidates),
                              tasks, entries, loaded, cache, pool)
        finally:
            if pool is not None and pool is not self.pool:
                pool.close()
            cache.save()
        report = r.DiscoveryReport(base_path=str(self.base))
        report.files = [entries[c.rel] for c in found.candidates]
        self._name(found.order, loaded, entries, report)
        report.duration_s = time.monotonic() - started
        return report

    def explain(self, path: Path) -> dict[str, Any]:
        """Why the static screen treats ``path`` as it does, from the engine's own answers.

        The status and reason are ``SmartDiscovery.screen()``'s; the model lines,
        imports (literal dynamic ones included), the directories it puts on
        ``sys.path``, the files it runs by path and the chain come from
        ``screen.analyze`` (via the screen cache) and ``imports.ImportGraph``. A file
        that passes the screen is only imported by a full scan, so its outcome after
        import (the runtime guard's included) is not part of the explanation.
        """
        base = self.base
        rel = path.relative_to(base).as_posix()
        found = self._find()
        found_here = next((c for c in found.candidates if c.rel == rel), None)
        candidate = found_here is not None
        entries, cache = self._static(found)
        entry = entries.get(rel)
        if entry is not None:
            status, reason = entry.status, entry.reason
        elif candidate:
            status = "passes_screen"
            reason = ("Neither defines nor imports DataFlow models: a scan imports it in an "
                      "isolated worker (run `nexus-dataflow scan` for the outcome).")
        else:
            status = "not_a_candidate"
            reason = (f"Discovery does not look at this file: it matches none of the patterns "
                      f"{', '.join(WORKFLOW_PATTERNS)}, or it is excluded.")
        result: dict[str, Any] = {"path": rel, "candidate": candidate, "status": status,
                                  "reason": reason}
        real = path.resolve()
        refused = found_here is not None and found_here.refusal is not None
        outside = not real.is_relative_to(base.resolve())
        if refused or outside or real.stat().st_size > self.max_file_bytes:
            return result  # what discovery refuses to read, explaining does not read either
        graph = ImportGraph(self._roots(), cache.facts)
        facts = cache.facts(real)

        def project_files(ref: Any) -> list[dict[str, Any]]:
            return [{"path": self._rel(f), "models": graph.own_model(f)}
                    for f in graph.resolve(real, ref)]

        taint = graph.taint(real) if not facts.error else None
        result.update({
            "parse_error": facts.error,
            "models": graph.own_model(real) if not facts.error else None,
            "model_uses": [
                {"line": u.line, "class": u.cls, "target": f"{u.name}.model",
                 "imported_at_line": u.source.line, "from": project_files(u.source)}
                for u in facts.external_model_uses
            ],
            "imports": [
                {"line": ref.line, "module": "." * ref.level + ref.module, "names": list(ref.names),
                 "project_files": project_files(ref)}
                for ref in facts.imports
            ],
            "sys_path_entries": [{"line": e.line, "path": self._rel(graph.place(real, e))}
                                 for e in facts.path_entries],
            "runs_paths": [{"line": e.line, "path": self._rel(graph.place(real, e))}
                           for e in facts.run_paths],
            "chain": [self._rel(p) for p in taint.chain] if taint else [],
            "chain_detail": taint.detail if taint else None,
            "chain_unscreenable": bool(taint and taint.unscreenable),
            "factories": list(facts.factories),
        })
        return result

    # -- stages ----------------------------------------------------------------

    def _screen(
        self,
        candidates: Sequence[Candidate],
        entries: dict[str, r.FileResult],
        cache: ScreenCache,
    ) -> Iterator[tuple[Candidate, Facts, tuple[str, ...]]]:
        """Static screen and import graph: decide which files may be imported at all.

        Yields each file that may be, as soon as it is known, with the DataFlow node
        types it names (its process gets stand-ins for them); the others get entries.
        """
        graph = ImportGraph(self._roots(), cache.facts)
        self.models = models = ModelIndex(self.base, graph, cache.facts, self.max_file_bytes)
        cache.prefetch((c.real, c.info) for c in candidates if c.real is not None and not c.refusal)
        for candidate in candidates:
            began = time.monotonic()
            if candidate.refusal or candidate.real is None:
                reason = candidate.refusal or r.MSG_UNREADABLE.format(what="not found")
                entries[candidate.rel] = r.FileResult(candidate.rel, r.ERROR, reason)
                continue
            real = candidate.real
            facts = cache.facts(real)
            entry = None
            if facts.stalled:
                entry = r.FileResult(candidate.rel, r.TIMEOUT, str(facts.error))
            elif facts.error:
                entry = r.FileResult(candidate.rel, r.ERROR, facts.error)
            elif (detail := graph.own_model(real)) is not None:
                entry = r.FileResult(
                    candidate.rel, r.SKIPPED_MODEL, r.MSG_SKIPPED_MODEL.format(detail=detail)
                )
            elif (taint := graph.taint(real)) is not None:
                chain = " -> ".join(self._rel(p) for p in taint.chain)
                message = r.MSG_SKIPPED_UNSCREENABLE if taint.unscreenable else (
                    r.MSG_SKIPPED_DEPENDENT)
                entry = r.FileResult(
                    candidate.rel,
                    r.SKIPPED_DEPENDENT,
                    message.format(chain=f"{chain}: {taint.detail}", path=candidate.rel),
                )
            if entry is not None:
                entry.duration_s = time.monotonic() - began
                entries[candidate.rel] = entry
            else:
                yield candidate, facts, models.standins(facts.node_types)

    @staticmethod
    def _jobs(
        screened: Iterator[tuple[Candidate, Facts, tuple[str, ...]]],
        tasks: dict[int, tuple[Candidate, Facts]],
        cache: ScreenCache,
    ) -> Iterator[Task]:
        """A worker task for each file the screen lets through, as it lets it through."""
        for candidate, facts, standins in screened:
            tid = len(tasks)
            tasks[tid] = (candidate, facts)
            yield Task(tid, str(candidate.path), Path(candidate.rel).stem, facts.factories,
                       facts.node_types, last_duration_s=cache.duration(candidate.real),
                       may_block=facts.may_block, digest=cache.digest(candidate.real),
                       standins=standins)

    def _isolate(
        self,
        jobs: Iterator[Task],
        candidates: int,
        tasks: dict[int, tuple[Candidate, Facts]],
        entries: dict[str, r.FileResult],
        loaded: dict[str, _Loaded],
        cache: ScreenCache,
        pool: WorkerPool,
        *,
        again: bool = True,
    ) -> None:
        """Import the files the screen lets through in workers; outcomes become entries.

        When an earlier scan timed the files, the screen finishes first and the
        slowest files go first, so they do not finish last. Otherwise (a cold
        cache) files go to the workers as the screen finds them. A file whose
        bytes changed after the screen judged them is screened again and, if it
        still passes, imported once more (``again``), its new bytes this time.
        """
        ordered: Iterable[Task] = jobs
        expected: int | None = candidates
        if cache.timed():
            ordered = sorted(jobs, key=lambda t: -(t.last_duration_s or 0.0))
            expected = None
        changed: list[Candidate] = []
        with quiet_rebuilds:
            for outcome in pool.run(ordered, expected):
                candidate = tasks[outcome.task.id][0]
                if again and outcome.result is not None and outcome.result.changed:
                    changed.append(candidate)
                    continue
                entry, files_loaded = self._entry(candidate, outcome)
                entry.duration_s = outcome.duration_s
                entries[candidate.rel] = entry
                cache.record_duration(candidate.real, outcome.duration_s)
                if files_loaded is not None:
                    loaded[candidate.rel] = files_loaded
        if changed:
            for candidate in changed:
                cache.forget(candidate.real)  # type: ignore[arg-type] # screened: real is set
            rescreened = self._jobs(self._screen(changed, entries, cache), tasks, cache)
            self._isolate(rescreened, len(changed), tasks, entries, loaded, cache, pool,
                          again=False)

    def make_pool(self) -> WorkerPool:
        """A worker pool for this scan's settings; ``start()`` it early to hide its warm-up."""
        return WorkerPool(
            self.base,
            workers=self.workers,
            limits=self.limits,
            node_modules=library_node_modules(self.base),
        )

    def _entry(self, candidate: Candidate, outcome: Outcome) -> tuple[r.FileResult, _Loaded | None]:
        rel = candidate.rel
        if outcome.kind == OUTCOME_TIMEOUT:
            return r.FileResult(rel, r.TIMEOUT, r.MSG_TIMEOUT.format(timeout=self.timeout)), None
        if outcome.kind == OUTCOME_CRASHED:
            return r.FileResult(rel, r.CRASHED, _crash_reason(outcome)), None
        if outcome.kind == OUTCOME_INVALID:
            return r.FileResult(rel, r.ERROR,
                                r.MSG_INVALID_RESULT.format(problem=outcome.detail)), None
        result = outcome.result or proto.Result()
        if result.timeout is not None:
            reason = r.MSG_TIMEOUT_STOPPED.format(
                elapsed=outcome.duration_s, timeout=self.timeout, where=result.timeout
            )
            return r.FileResult(rel, r.TIMEOUT, reason), None
        if result.guarded is not None:
            return self._guarded(rel, result.guarded), None
        if result.error is not None:
            return r.FileResult(rel, r.ERROR, result.error), None
        if result.changed:
            return r.FileResult(rel, r.ERROR, r.MSG_CHANGED), None
        files_loaded = _decode_result(result, self.models, self.models_loaded)
        notes = files_loaded.failures + files_loaded.problems + files_loaded.missing
        found = len(files_loaded.workflows) + len(files_loaded.deferred)
        if found:
            reason = r.MSG_REGISTERED.format(count=found)
            for attr in [*files_loaded.workflows, *files_loaded.deferred]:
                if attr in files_loaded.needs:
                    models = ", ".join(files_loaded.needs[attr])
                    reason += " " + r.MSG_NEEDS_MODELS.format(name=workflow_name(rel, attr),
                                                              models=models)
            if notes:
                reason += " Not loaded: " + "; ".join(notes)
            return r.FileResult(rel, r.REGISTERED, reason), files_loaded
        if files_loaded.missing:
            return r.FileResult(rel, r.ERROR, " ".join(notes)), None
        if files_loaded.problems:
            reason = r.MSG_NOT_TRANSFERABLE.format(problems="; ".join(notes))
            return r.FileResult(rel, r.NOT_TRANSFERABLE, reason), None
        if files_loaded.failures:
            reason = "No workflow loaded: " + "; ".join(files_loaded.failures)
            return r.FileResult(rel, r.ERROR, reason), None
        return r.FileResult(rel, r.NO_WORKFLOWS, r.MSG_NO_WORKFLOWS), None

    def _guarded(self, rel: str, stop: proto.Guarded) -> r.FileResult:
        """The runtime guard stopped the file: what it tried, and the chain it saw."""
        steps = [f"{self._rel(Path(step.file))}:{step.line} ({step.module})"
                 for step in stop.chain]
        status = r.SKIPPED_MODEL if stop.status == r.SKIPPED_MODEL else r.SKIPPED_DEPENDENT
        reason = r.MSG_GUARD_STOPPED.format(action=stop.detail,
                                            chain=" -> ".join(steps) or "no project frame",
                                            path=rel)
        return r.FileResult(rel, status, reason)

    def _name(
        self,
        order: Sequence[str],
        loaded: dict[str, _Loaded],
        entries: dict[str, r.FileResult],
        report: r.DiscoveryReport,
    ) -> None:
        """Apply native naming, in native order: a later file wins a shared name."""
        owner: dict[str, str] = {}
        for rel in order:
            for attr, workflow in loaded.get(rel, _Loaded({}, [], [])).workflows.items():
                name = workflow_name(rel, attr)
                report.workflows[name] = workflow
                owner[name] = rel
        for rel, files_loaded in loaded.items():
            entry = entries[rel]
            names = [workflow_name(rel, attr) for attr in files_loaded.workflows]
            entry.workflows = [n for n in names if owner.get(n) == rel]
            # Not rebuilt outside the server; listed as the server would register them.
            deferred = {workflow_name(rel, attr): {"data": data.data,
                                                   "node_modules": data.node_modules}
                        for attr, data in files_loaded.deferred.items()}
            entry.workflows += list(deferred)
            report.deferred.update(deferred)
            for name in names:
                if owner.get(name) != rel:
                    entry.reason += r.MSG_NAME_TAKEN.format(name=name, owner=owner[name])

    # -- helpers -----------------------------------------------------------------

    def prestart(self) -> WorkerPool:
        """A pool with the workers this project's candidate files warrant, already starting."""
        return self.make_pool().start(files=len(self._find().candidates))

    def _find(self) -> Found:
        return find_candidates(self.base, exclude=self.exclude, max_file_bytes=self.max_file_bytes)

    def _cache(self) -> ScreenCache:
        return ScreenCache(self.base, self.cache_dir, persist=self.cache, timeout=self.timeout)

    def _roots(self) -> list[Path]:
        """Where imports resolve in the worker: the base path, then this process's sys.path
        (the worker inherits it), without the standard library and installed distributions."""
        roots = [self.base]
        for entry in sys.path:
            if entry and os.path.isdir(entry) and not is_environment(entry):
                roots.append(Path(entry))
        return roots

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.base.resolve()).as_posix()
        except ValueError:
            return str(path)


def discover_workflows(base_path: str | None = None) -> dict[str, Workflow]:
    """Drop-in for ``nexus.discovery.discover_workflows``: same names, safe execution."""
    report = SmartDiscovery(base_path).run()
    for entry in report.files:
        if entry.status in r.PROBLEM_STATUSES:
            logger.warning("%s: %s: %s", entry.path, entry.status, entry.reason)
        elif entry.status in (r.SKIPPED_MODEL, r.SKIPPED_DEPENDENT):
            logger.info("%s: %s: %s", entry.path, entry.status, entry.reason)
    return report.workflows
