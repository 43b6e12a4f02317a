"""Watch mode: when a project file is saved, rescan what it affects and swap it in.

``watchfiles`` (inotify on Linux, so nothing runs while nothing changes) hands
over bursts of ``.py`` changes. A burst is one rescan of the candidates it
touches: changed or added candidate files, and candidates that import a
changed helper module. They go through ``SmartDiscovery.run(only=...)``, the
same screen and isolated workers as the first scan, and their workflows are
registered, replaced or deregistered in the running app. A file that now
fails keeps its last good workflows serving. A model module is never
re-imported by discovery: its change is reported once, for a restart.

Each burst is rescanned in its own thread, so a save that hangs until its
timeout does not hold up the next save of another file; every file remembers
the latest rescan that covers it, and only that rescan's result is swapped in.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from pathlib import Path, PurePath
from typing import Any, NamedTuple

import watchfiles
from kailash.workflow import Workflow

from . import report as r
from .config import Settings
from .discovery import SmartDiscovery
from .finder import Found
from .imports import ImportGraph
from .isolation import WorkerPool
from .plugin import MSG_EXPLICIT_WINS, MSG_REJECTED

logger = logging.getLogger(__name__)

THREAD_NAME = "nexus-dataflow-watch"
RESCAN_THREAD_NAME = THREAD_NAME + "-rescan"
# A burst ends after this many quiet milliseconds, and is cut off after DEBOUNCE_MS.
STEP_MS = 100
DEBOUNCE_MS = 1000
STOP_TIMEOUT_S = 10.0
# A replaced or removed workflow's API (and its runtime) is closed this much later.
RETIRE_AFTER_S = 30.0
# Rescans at once; with all busy, further changes gather in the watcher and come as one.
MAX_RESCANS = 4

ModelsChanged = Callable[[list[str]], None]
Rescanned = Callable[[r.DiscoveryReport], None]


class _Plan(NamedTuple):
    """One rescan: its number, the candidates to import, the candidates gone."""

    generation: int
    targets: set[str]
    removed: set[str]


class Watcher:
    """Keeps a running app's discovered workflows in step with the project's files.

    ``report`` is the first scan's, after registration (its entries name what
    was registered). ``on_rescan(report)`` gets the whole
    updated report after each rescan; ``on_models_changed(paths)`` is called
    once per burst that changed model modules or ``executed_here`` (files the
    server process itself imported, e.g. by ``plugin.load_workflows``).
    """

    def __init__(
        self,
        app: Any,
        base: Path,
        settings: Settings,
        report: r.DiscoveryReport,
        *,
        on_rescan: Rescanned | None = None,
        on_models_changed: ModelsChanged | None = None,
        executed_here: Collection[Path] = (),
    ) -> None:
        self.app = app
        self.base = Path(base).absolute()
        self.settings = settings
        self.on_rescan = on_rescan
        self.on_models_changed = on_models_changed
        self.executed_here = executed_here
        self.models_changed: list[str] = []
        self._files = {entry.path: entry for entry in report.files}
        self._owned: dict[str, dict[str, Workflow]] = {}
        for entry in report.files:
            if entry.workflows:
                self._owned[entry.path] = {n: report.workflows[n] for n in entry.workflows}
        self._models: set[Path] = set()
        self._pool: WorkerPool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rescans: list[threading.Thread] = []
        self._slots = threading.BoundedSemaphore(MAX_RESCANS)
        self._lock = threading.Lock()  # the app's registrations and this state, per rescan
        self._generations = itertools.count(1)
        self._latest: dict[str, int] = {}  # file -> the newest rescan that covers it
        self._retired: deque[tuple[float, Any]] = deque()
        self.report = report

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Learn which files define models, then watch in a daemon thread."""
        if self._thread is not None:
            return
        discovery = self._discovery()
        found, graph = self._survey(discovery)
        reached = _closure(graph, [c.real for c in found.candidates if c.real])
        self._models = {path for path in reached if graph.own_model(path) is not None}
        self._pool = discovery.make_pool().start(files=1)
        self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
        self._thread.start()
        logger.info("dataflow_compatible watch mode: watching %s", self.base)

    def stop(self) -> None:
        """Stop watching, end the spare worker pool, close replaced APIs. Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        # A rescan under way ends within its per-file timeouts.
        deadline = self.settings.timeout + STOP_TIMEOUT_S
        self._join(thread, deadline)  # first: it starts no rescan after this
        for rescan in self._rescans:
            self._join(rescan, deadline)
        with self._lock:
            self._close_pool()
            self._close_retired(everything=True)

    @staticmethod
    def _join(thread: threading.Thread | None, limit: float) -> None:
        if thread is not None and thread is not threading.current_thread():
            thread.join(limit)
            if thread.is_alive():
                logger.warning("dataflow_compatible %s did not stop in %.0fs", thread.name, limit)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        try:
            for changes in watchfiles.watch(
                self.base,
                watch_filter=_ProjectFilter(),
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                stop_event=self._stop,
                raise_interrupt=False,
            ):
                while not self._slots.acquire(timeout=STEP_MS / 1000):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    break
                self._rescans = [t for t in self._rescans if t.is_alive()]
                rescan = threading.Thread(target=self._rescan_logged, name=RESCAN_THREAD_NAME,
                                          args=([Path(p) for _, p in changes],), daemon=True)
                self._rescans.append(rescan)
                rescan.start()
        except Exception:
            logger.exception("dataflow_compatible watcher stopped")

    def _rescan_logged(self, changed: list[Path]) -> None:
        try:
            self.rescan(changed)
        except Exception:  # the watcher outlives any one bad rescan
            logger.exception("dataflow_compatible rescan failed")
        finally:
            self._slots.release()

    # -- one rescan ------------------------------------------------------------------

    def rescan(self, changed: Iterable[Path]) -> r.DiscoveryReport:
        """Rescan what ``changed`` affects and swap the results into the app."""
        discovery = self._discovery()
        with self._lock:
            plan = self._plan(discovery, list(changed))
        if plan is None:
            return self.report
        fresh = (self._run(discovery, plan.targets) if plan.targets
                 else r.DiscoveryReport(str(self.base)))
        with self._lock:
            self._apply(discovery, plan, fresh)
        return self.report

    def _plan(self, discovery: SmartDiscovery, given: list[Path]) -> _Plan | None:
        """Which candidates ``given`` affects (None: nothing to do); model changes reported."""
        given += [f for d in given if d.is_dir() for f in d.rglob("*.py")]
        changed = {p.absolute() for p in given} | {p.resolve() for p in given}
        found, graph = self._survey(discovery)
        models = self._model_changes(changed, graph)
        known = {c.rel for c in found.candidates}
        by_path = {p: c.rel for c in found.candidates for p in (c.path.absolute(), c.real) if p}
        targets = {by_path[p] for p in changed if p in by_path} | (known - set(self._files))
        # A changed module reloads the candidates that import it, whether or not it is a
        # candidate itself (``workflows/common.py`` imported by ``workflows/use.py``).
        helpers = {p for p in changed if p.suffix == ".py"} - set(models)
        if helpers:
            targets |= {c.rel for c in found.candidates if c.real and c.rel not in targets
                        and _closure(graph, [c.real]) & helpers}
        if models:
            self._report_models(sorted({self._rel(p) for p in models}))
        removed = set(self._files) - known
        if not targets and not removed:
            return None
        # Files that may share a workflow name are named together, in native order.
        kin = {_name_root(rel) for rel in targets | removed}
        targets |= {rel for rel in known if _name_root(rel) in kin}
        generation = next(self._generations)
        self._latest.update(dict.fromkeys(targets | removed, generation))
        if targets and self._pool is not None and \
                self._pool.wanted(len(targets)) == self._pool.wanted(1):
            discovery.pool, self._pool = self._pool, None  # the spare pool, warm already
        return _Plan(generation, targets, removed)

    def _apply(self, discovery: SmartDiscovery, plan: _Plan, fresh: r.DiscoveryReport) -> None:
        """Swap in what this rescan found, for the files no newer rescan covers."""
        self._close_retired()
        mine = {rel for rel, generation in self._latest.items() if generation == plan.generation}
        for rel in plan.removed & mine:
            for name in self._owned.pop(rel, {}):
                self._drop(name)
            self._files.pop(rel, None)
        for entry in fresh.files:
            if entry.path in mine:
                self._files[entry.path] = self._swap(entry, fresh)
        for rel in mine:
            del self._latest[rel]
        found, _ = self._survey(discovery)
        self.report = self._whole(found, fresh.duration_s)
        logger.info("dataflow_compatible rescan of %d file(s): %s",
                    len(plan.targets) + len(plan.removed), self.report.summary())
        if self.on_rescan is not None:
            self.on_rescan(self.report)

    def _run(self, discovery: SmartDiscovery, targets: Collection[str]) -> r.DiscoveryReport:
        """Import ``targets``: in the spare pool when the plan took it (one is kept started
        so that a save does not wait for a worker to import Kailash), else in a new one."""
        try:
            return discovery.run(only=targets)
        finally:
            if discovery.pool is not None:
                discovery.pool.close()
            with self._lock:
                if self._pool is None and not self._stop.is_set():
                    self._pool = discovery.make_pool().start(files=1)

    def _discovery(self) -> SmartDiscovery:
        return SmartDiscovery(self.base, self.settings)

    def _survey(self, discovery: SmartDiscovery) -> tuple[Found, ImportGraph]:
        cache = discovery.screen_cache(persist=False)
        return discovery.find(), discovery.import_graph(cache)

    def _model_changes(self, changed: Collection[Path], graph: ImportGraph) -> set[Path]:
        """Changed files that define models now, did before, or were imported in-process."""
        hits = set()
        for path in changed:
            now = path.is_file() and graph.own_model(path) is not None
            if now or path in self._models or path in self.executed_here:
                hits.add(path)
                if now:
                    self._models.add(path)
                else:
                    self._models.discard(path)
        return hits

    def _report_models(self, paths: list[str]) -> None:
        fresh = [p for p in paths if p not in self.models_changed]
        self.models_changed.extend(fresh)
        logger.warning(r.MSG_MODELS_CHANGED.format(paths=", ".join(paths)))
        if self.on_models_changed is not None:
            self.on_models_changed(paths)

    def _swap(self, entry: r.FileResult, fresh: r.DiscoveryReport) -> r.FileResult:
        """Register, replace or deregister one rescanned file's workflows: its entry now.

        ``fresh`` named its files together, so a name another of them held before
        changes hands here.
        """
        rel = entry.path
        old = self._owned.get(rel, {})
        if entry.status in r.PROBLEM_STATUSES:
            if old:
                entry = r.noted(entry, r.MSG_KEPT_LAST_GOOD.format(names=", ".join(old)),
                                workflows=list(old))
            logger.warning("%s [%s] %s", rel, entry.status, entry.reason)
            return entry
        new = {name: fresh.workflows[name] for name in entry.workflows}
        for name in old.keys() - new.keys():
            self._drop(name)
        kept: dict[str, Workflow] = {}
        for name, workflow in new.items():
            owner = next((f for f, names in self._owned.items() if f != rel and name in names),
                         None)
            if name in self.app._workflows and name not in old and owner is None:
                message = MSG_EXPLICIT_WINS.format(name=name)
                logger.info(message)
                entry = r.noted(entry, message, drop=name, status=r.NO_WORKFLOWS)
                continue
            try:
                self._put(name, workflow, replace=name in old or owner is not None)
            except ValueError as exc:
                message = MSG_REJECTED.format(name=name, error=exc)
                logger.warning(message)
                entry = r.noted(entry, message, drop=name, status=r.ERROR)
                continue
            if owner is not None:
                self._owned[owner].pop(name)
                self._files[owner] = r.noted(self._files[owner], "", drop=name)
            kept[name] = workflow
        if kept:
            self._owned[rel] = kept
        else:
            self._owned.pop(rel, None)
        return entry

    def _put(self, name: str, workflow: Workflow, *, replace: bool) -> None:
        if replace:
            self._drop(name)
        self.app.register(name, workflow)

    def _drop(self, name: str) -> None:
        """Deregister ``name``, keeping its API open a while.

        Nexus's ``deregister`` closes the workflow's API at once, and a request the
        router had already sent there would fail ("cannot schedule new futures after
        shutdown"); taken out of the gateway's hands first, it is closed later.
        """
        gateway = getattr(getattr(self.app, "_http_transport", None), "gateway", None)
        apis = getattr(gateway, "_workflow_apis", None)
        api = apis.pop(name, None) if isinstance(apis, dict) else None
        if api is not None:
            self._retired.append((time.monotonic(), api))
        self.app.deregister(name)

    def _close_retired(self, everything: bool = False) -> None:
        now = time.monotonic()
        while self._retired and (everything or now - self._retired[0][0] > RETIRE_AFTER_S):
            api = self._retired.popleft()[1]
            try:
                api.close()
            except Exception as exc:  # teardown of a version nobody is sent to any more
                logger.debug("closing a replaced workflow API failed: %s", exc)

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _whole(self, found: Found, duration_s: float) -> r.DiscoveryReport:
        """The project's report now: every candidate's latest entry, in candidate order."""
        report = r.DiscoveryReport(base_path=str(self.base), duration_s=duration_s)
        report.files = [self._files[c.rel] for c in found.candidates if c.rel in self._files]
        for entry in report.files:
            for name in entry.workflows:
                report.workflows[name] = self._owned[entry.path][name]
        return report

    def _rel(self, path: Path) -> str:
        for base in (self.base, self.base.resolve()):
            if path.is_relative_to(base):
                return path.relative_to(base).as_posix()
        return str(path)


class _ProjectFilter(watchfiles.PythonFilter):
    """Python files, and new directories: files written into a directory before its
    watch exists (``cp -r``, ``git checkout``) send no event of their own."""

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        if change == watchfiles.Change.added and os.path.isdir(path):
            return watchfiles.DefaultFilter.__call__(self, change, path)
        return super().__call__(change, path)


def _name_root(rel: str) -> str:
    """What a file's workflow names start with (``stem`` or ``stem.attr``, from the first
    dot of the stem): files sharing it may produce the same name."""
    return PurePath(rel).stem.split(".")[0]


def _closure(graph: ImportGraph, starts: Iterable[Path]) -> set[Path]:
    """``starts`` and every project file importing them runs."""
    seen = set(starts)
    queue = deque(seen)
    while queue:
        for target in graph.edges(queue.popleft()):
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return seen
