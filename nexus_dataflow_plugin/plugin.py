"""Wires smart discovery into a Nexus instance.

Works with both of Nexus's plugin systems: the name-based registry
(``app.use_plugin("dataflow_compatible")`` calls ``apply``) and the instance
protocol (``app.add_plugin(DataFlowCompatiblePlugin(...))`` calls ``install``
and the lifecycle hooks). Either way the app's ``_auto_discover_workflows``
is replaced, so discovery, when ``start()`` runs it, imports nothing into the
server process.
"""

from __future__ import annotations

import logging
import os
import sys
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kailash.workflow import Workflow
from nexus.plugins import NexusPlugin

from . import report as r
from .config import Settings, check_keywords, load_settings
from .discovery import SmartDiscovery
from .isolation import WorkerPool
from .probe import import_raised, load_module, probe, workflow_name
from .screen import analyze

if TYPE_CHECKING:
    from .watch import Watcher

logger = logging.getLogger(__name__)

PLUGIN_NAME = "dataflow_compatible"
REPORT_ATTR = "_dataflow_discovery_report"
PLUGIN_ATTR = "_dataflow_compatible_plugin"
REQUIRED_INTERNALS = ("_auto_discover_workflows", "_workflows", "register")
# GET here returns the report; workflows live under /workflows/<name>, so no name reaches it.
REPORT_PATH = "/_dataflow/report"

MSG_INCOMPATIBLE = (
    "nexus-dataflow-plugin cannot install into Nexus {version}: Nexus no longer has {missing}. "
    "Pin kailash-nexus to a version this plugin supports, or upgrade the plugin."
)
MSG_REJECTED = "Nexus rejected the name {name!r} ({error}); rename the file or object."
MSG_EXPLICIT_WINS = "{name!r} was registered explicitly; the explicit workflow wins."
MSG_LOAD_MISSING = "Cannot load workflows from {path}: no such file."
MSG_LOAD_DIRECTORY = (
    "Cannot load workflows from {path}: it is a directory; name the workflow files in it"
    " (for example {example})."
)
MSG_LOAD_REFUSED = (
    "Not loaded, nothing of it executed: its imports reach {file}, which defines DataFlow "
    "models, as module {module!r}, and the app has not loaded {file} as {module!r} "
    "(sys.modules{found}). Loading it would run the models a second time. Import the models "
    "in your app as `import {module}` before loading this file."
)
MSG_LOAD_REFUSED_RUN = (
    "Not loaded, nothing of it executed: its imports run {file}, which defines DataFlow "
    "models, by its path (runpy.run_path, spec_from_file_location), which executes it "
    "again whatever the app has imported. Import the models by module name instead."
)
MSG_LOADED_DEPENDENT = "Loaded in the server by load_dependents(): {names}."
MSG_NO_DISCOVERY = "No discovery has run in this app yet: nothing to load (call after start())."

MSG_NO_SHUTDOWN_HOOK = (
    "dataflow_compatible was added after the app started: app.stop() will not stop its "
    "watcher; call plugin.on_shutdown() yourself."
)
MSG_WATCH_FAILED = "dataflow_compatible watch mode could not start; the app serves without it."


class LoadRefused(RuntimeError):
    """A file's import chain reaches a model module the app has not loaded; nothing ran."""


def _nexus_version() -> str:
    try:
        import nexus

        return str(getattr(nexus, "__version__", "unknown"))
    except ImportError:  # pragma: no cover - nexus is a dependency
        return "unknown"


def check_compatible(app: Any) -> None:
    """Fail fast, naming the Nexus version, if internals we replace are gone."""
    missing = [name for name in REQUIRED_INTERNALS if not hasattr(app, name)]
    if missing:
        raise RuntimeError(
            MSG_INCOMPATIBLE.format(version=_nexus_version(), missing=", ".join(missing))
        )


def register_discovered(app: Any, report: r.DiscoveryReport) -> list[str]:
    """Register the report's workflows as Nexus does: explicit names win, bad names skip;
    each one not registered says why in its file's entry."""
    registered: list[str] = []
    owners = {name: entry.path for entry in report.files for name in entry.workflows}
    for name, workflow in report.workflows.items():
        if name in app._workflows:
            message = MSG_EXPLICIT_WINS.format(name=name)
            logger.info(message)
            report.note(owners.get(name, ""), message, drop=name, status=r.NO_WORKFLOWS)
            continue
        try:
            app.register(name, workflow)
        except ValueError as exc:
            message = MSG_REJECTED.format(name=name, error=exc)
            logger.warning(message)
            report.note(owners.get(name, ""), message, drop=name, status=r.ERROR)
            continue
        registered.append(name)
    return registered


def smart_auto_discover(
    app: Any, settings: Settings, pool: WorkerPool | None = None
) -> r.DiscoveryReport:
    """What ``Nexus._auto_discover_workflows`` does, via isolated smart discovery.

    With the ``manifest`` setting, the workflows come from the manifest instead
    (``manifest.start_from_manifest``), and only files that changed are scanned.
    """
    if settings.manifest is not None:
        from .manifest import start_from_manifest

        report = start_from_manifest(Path.cwd(), settings, pool)
    else:
        report = SmartDiscovery(os.getcwd(), settings, pool=pool).run()
    register_discovered(app, report)
    report.log(logger, "dataflow_compatible discovery")
    setattr(app, REPORT_ATTR, report)
    return report


class DataFlowCompatiblePlugin(NexusPlugin):
    """Smart, isolated workflow discovery that is safe next to DataFlow models.

    ``options``: any of ``config.Settings``' options but the switch (``timeout=5``,
    ``watch=True``; docs/configuration.md lists them), all optional: unset ones come
    from the environment, then ``[tool.nexus]`` in the project's pyproject.toml, then
    their defaults.

    ``on_models_changed``, when set, is called with the paths of model modules a
    watched save changed (``serve --reload`` restarts on it); the app keeps serving.
    """

    def __init__(self, **options: Any) -> None:
        # A bad argument is an error here; the environment and pyproject.toml are read
        # (and their errors raised) when the plugin installs and when discovery runs.
        parsed = check_keywords(options)
        self.options: dict[str, Any] = dict(options)
        if "exclude" in parsed:  # kept as parsed: a tuple the caller's list cannot change
            self.options["exclude"] = parsed["exclude"]
        self.report: r.DiscoveryReport | None = None
        self._last_app: weakref.ReferenceType[Any] | None = None
        self._pool: tuple[Path, Settings, WorkerPool] | None = None
        self.last_scan: str | None = None
        self.watcher: Watcher | None = None
        self.on_models_changed: Callable[[list[str]], None] | None = None
        self._loaded_here: set[Path] = set()  # executed in this process: a change needs restart

    @property
    def name(self) -> str:
        return PLUGIN_NAME

    @property
    def description(self) -> str:
        return "Isolated workflow auto-discovery that never executes DataFlow model files"

    # -- both plugin systems ---------------------------------------------------------

    def apply(self, nexus_instance: Any) -> None:
        """Name-based registry entry point (``app.use_plugin``), which wires no hooks:
        the watcher's stop is added as a shutdown handler here."""
        self.install(nexus_instance)
        try:
            nexus_instance.add_shutdown_handler(self.on_shutdown)
        except RuntimeError:  # the app already started; Nexus takes no handler then
            logger.warning(MSG_NO_SHUTDOWN_HOOK)

    def install(self, app: Any) -> None:
        """Replace the app's discovery with the isolated one.

        When the app will discover, workers start now: their Kailash import
        overlaps the app's own start-up instead of adding to ``start()``. Not
        with a manifest: starting from one needs no worker at all.
        """
        check_compatible(app)
        plugin = self
        settings = load_settings(Path.cwd(), self.options)
        if getattr(app, "_auto_discovery_enabled", False) and settings.manifest is None:
            self._prestart(Path.cwd(), settings)

        def _auto_discover_workflows(nexus_self: Any) -> None:
            settings = load_settings(Path.cwd(), plugin.options)
            pool = plugin._take_pool(Path.cwd(), settings)
            try:
                plugin._scanned(smart_auto_discover(nexus_self, settings, pool))
            finally:
                if pool is not None:
                    pool.close()
            if settings.load_dependents:
                plugin.load_dependents(nexus_self)
            if settings.watch:
                plugin._watch(nexus_self, Path.cwd(), settings)

        app._auto_discover_workflows = types.MethodType(_auto_discover_workflows, app)
        app.register_endpoint(REPORT_PATH, ["GET"], self._report_endpoint())
        setattr(app, PLUGIN_ATTR, self)
        self._last_app = weakref.ref(app)
        logger.info("dataflow_compatible discovery installed")

    def _prestart(self, base: Path, settings: Settings) -> None:
        self._close_pool()
        self._pool = (base, settings, SmartDiscovery(base, settings).prestart())

    def _take_pool(self, base: Path, settings: Settings) -> WorkerPool | None:
        """The pre-started pool, if it was made for this directory and these settings, in
        this process (a child forked after install leaves its parent's pool alone)."""
        prepared, self._pool = self._pool, None
        if prepared is None:
            return None
        if prepared[:2] == (base, settings) and prepared[2].owned():
            return prepared[2]
        prepared[2].close()
        return None

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool[2].close()
            self._pool = None

    def on_startup(self) -> None:
        """Nothing to start: workers start at install and end with the scan."""

    def on_shutdown(self) -> None:
        """End pre-started workers that a discovery never used, and the watcher."""
        self._close_pool()
        if self.watcher is not None:
            self.watcher.stop()

    # -- the report and watch mode ---------------------------------------------------

    def _scanned(self, report: r.DiscoveryReport) -> None:
        """Keep the latest report (first scan or rescan) where the app and endpoint read it."""
        self.report = report
        self.last_scan = datetime.now(UTC).isoformat(timespec="milliseconds")
        app = self._last_app() if self._last_app is not None else None
        if app is not None:
            setattr(app, REPORT_ATTR, report)

    def _watch(self, app: Any, base: Path, settings: Settings) -> None:
        from .watch import Watcher

        if self.watcher is not None:
            self.watcher.stop()
        assert self.report is not None
        self.watcher = Watcher(app, base, settings, self.report, on_rescan=self._scanned,
                               on_models_changed=self._models_changed,
                               executed_here=self._loaded_here)
        try:
            self.watcher.start()
        except Exception:  # e.g. no worker could start: the first scan's app still serves
            logger.exception(MSG_WATCH_FAILED)
            self.watcher.stop()

    def _models_changed(self, paths: list[str]) -> None:
        if self.on_models_changed is not None:
            self.on_models_changed(paths)

    def report_data(self) -> dict[str, Any]:
        """What ``GET /_dataflow/report`` returns: ``scan --json``'s JSON, the time of the last
        scan, whether the watcher runs, and model modules changed since start-up."""
        data = self.report.to_dict() if self.report is not None else {"workflows": [],
                                                                      "files": []}
        watcher = self.watcher
        data["last_scan"] = self.last_scan
        data["watching"] = watcher is not None and watcher.running
        data["restart_required"] = list(watcher.models_changed) if watcher else []
        return data

    def _report_endpoint(self) -> Callable[[], Any]:
        async def dataflow_discovery_report() -> dict[str, Any]:
            return self.report_data()

        return dataflow_discovery_report

    # -- explicit registration -------------------------------------------------------

    def _app(self, app: Any | None) -> Any:
        if app is None and self._last_app is not None:
            app = self._last_app()
        if app is None:
            raise RuntimeError("The plugin is not installed in a Nexus app yet; pass app=...")
        return app

    def load_workflows(
        self, *paths: str | os.PathLike[str], app: Any | None = None
    ) -> dict[str, Workflow]:
        """Import workflow files IN THIS PROCESS, on the user's explicit request.

        For files discovery skipped because they import your models: call this
        after your models exist, so the file reuses them instead of re-running
        them in isolation. Returns the workflows registered, by name. Raises
        ``LoadRefused``, having run none of them, when a file's imports reach a
        model module the app has not loaded under that name.
        """
        self._loaded_here.update(Path(p).resolve() for p in paths)
        return load_workflow_files(self._app(app), paths)

    def load_dependents(self, app: Any | None = None) -> Loaded:
        """Load, in this process, every file the last discovery reported
        ``skipped_dependent``, once each model module on its import chain is the app's own.

        A file whose chain reaches a model module the app has not loaded (under the name
        the chain imports it by) is refused before anything of it runs; the reason is
        added to its entry in the report. Returns what was registered and refused.
        """
        app = self._app(app)
        report = getattr(app, REPORT_ATTR, None)
        if report is None:
            raise RuntimeError(MSG_NO_DISCOVERY)
        loaded = Loaded()
        for entry in report.by_status(r.SKIPPED_DEPENDENT):
            if entry.path not in report.loaded:  # once per discovery; a refused file may retry
                _load_dependent(app, report, entry.path, loaded)
        return loaded

    def register_dataflow_workflows(self, db: Any, **kwargs: Any) -> dict[str, Workflow]:
        """Register CRUD workflows for ``db``'s models into the installed app."""
        from .dataflow_workflows import register_dataflow_workflows

        return register_dataflow_workflows(self._app(kwargs.pop("app", None)), db, **kwargs)


@dataclass
class Loaded:
    """What ``load_dependents()`` did: workflows registered by name; files refused or
    failed, with why."""

    workflows: dict[str, Workflow] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def plugin_of(app: Any) -> DataFlowCompatiblePlugin | None:
    """The plugin installed in ``app`` (however it was enabled), or None.

    ``app.use_plugin("dataflow_compatible")`` and the configuration switch return no
    plugin object; this is how such an app reaches ``load_dependents()`` and the report.
    """
    plugin = getattr(app, PLUGIN_ATTR, None)
    return plugin if isinstance(plugin, DataFlowCompatiblePlugin) else None


def _loaded_file(module: str) -> str | None:
    origin = getattr(sys.modules.get(module), "__file__", None)
    return os.path.realpath(origin) if origin else None


def chain_refusal(path: Path, base: Path) -> str | None:
    """Why executing ``path`` here would run a model module again; None when it would not.

    Follows every project import reachable from ``path`` as the screen's import graph
    does (``sys.path`` entries files add, files run by path), executing nothing; each
    import that reaches a file defining models (or one that cannot be screened) must
    find that very file in ``sys.modules`` under the name it imports it by. Running
    such a file by its path re-executes it whatever is loaded: always refused.
    """
    discovery = SmartDiscovery(base, cache=False)
    graph = discovery.import_graph(discovery.screen_cache())
    start = path.resolve()
    seen = {start}
    queue: deque[tuple[Path, tuple[Path, ...]]] = deque([(start, ())])
    while queue:
        importer, inherited = queue.popleft()
        facts = graph.facts_of(importer)
        here = graph.added(importer, inherited)
        reached: list[tuple[Path, list[str] | None]] = []
        for run in facts.run_paths:
            target = graph.run_target(graph.place(importer, run))
            if target is not None:
                reached.append((target, None))
        for ref in facts.imports:
            names = [ref.module] if ref.module else []
            names += [f"{ref.module}.{n}" if ref.module else n for n in ref.names]
            reached += [(t, names) for t in graph.resolve(importer, ref, inherited)]
        for target, names in reached:
            if graph.own_model(target) is None:
                if target not in seen:
                    seen.add(target)
                    queue.append((target, here))
                continue
            if names is None:
                return MSG_LOAD_REFUSED_RUN.format(file=discovery.rel(target))
            module = _module_name(target, (*graph.roots, *here), names)
            found = _loaded_file(module)
            if found != str(target):
                return MSG_LOAD_REFUSED.format(
                    file=discovery.rel(target), module=module,
                    found=f"[{module!r}] is {found}" if found else f" has no {module!r}")
    return None


def _module_name(target: Path, roots: Sequence[Path], imported: Sequence[str]) -> str:
    """The dotted name ``target`` is imported by: the one of ``imported`` (or a package on
    the way to one) that it is relative to a root, else its name under the first root."""
    names = []
    for root in roots:
        if target.is_relative_to(root):
            parts = list(target.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    prefixes = {".".join(n.split(".")[:i + 1]) for n in imported for i in range(n.count(".") + 1)}
    return next((n for n in names if n in prefixes), names[0] if names else target.stem)


def _load_dependent(app: Any, report: r.DiscoveryReport, rel: str, loaded: Loaded) -> None:
    """Check one dependent file's chain, then load it; the outcome goes into its entry."""
    base = Path(report.base_path)
    path = base / rel
    problem = chain_refusal(path, base)
    if problem is None:
        try:
            workflows = _load_file(app, path, rel, keep_existing=True)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one file's failure is its own
            problem = import_raised(exc, str(path))
    if problem is not None:
        logger.warning("%s: %s", rel, problem)
        loaded.refused[rel] = problem
        report.note(rel, problem)
        return
    report.loaded.append(rel)
    loaded.workflows.update(workflows)
    report.note(rel, MSG_LOADED_DEPENDENT.format(names=", ".join(workflows) or "none"),
                workflows=list(workflows))


def _load_file(app: Any, path: Path, label: str, keep_existing: bool = False
               ) -> dict[str, Workflow]:
    """Execute one file in this process, as native discovery does, and register its
    workflows; with ``keep_existing``, a name the app has already is left to it, as
    discovery leaves explicit registrations."""
    source = path.read_bytes()
    module = load_module(str(path), path.stem, source)
    probed = probe(vars(module), str(path), analyze(source).factories)
    for failure in probed.failures:
        logger.warning("%s: %s", path, failure)
    registered: dict[str, Workflow] = {}
    for attr, workflow in probed.workflows.items():
        name = workflow_name(label, attr)
        if keep_existing and name in app._workflows:
            logger.info(MSG_EXPLICIT_WINS.format(name=name))
            continue
        app.register(name, workflow)
        registered[name] = workflow
    return registered


def load_workflow_files(app: Any, paths: Iterable[str | os.PathLike[str]]) -> dict[str, Workflow]:
    """Execute each file in-process (like native discovery) and register its workflows.

    Every file is checked first (``chain_refusal``, against the current directory's
    project); if one would run a model module again, ``LoadRefused`` is raised and
    none of them is executed.
    """
    files = [Path(raw).absolute() for raw in paths]
    for path in files:
        if path.is_dir():
            example = next(iter(sorted(path.glob("*.py"))), path / "<name>.py")
            raise IsADirectoryError(MSG_LOAD_DIRECTORY.format(path=path, example=example))
        if not path.is_file():
            raise FileNotFoundError(MSG_LOAD_MISSING.format(path=path))
        refusal = chain_refusal(path, _project_of(path))
        if refusal is not None:
            raise LoadRefused(f"{path}: {refusal}")
    registered: dict[str, Workflow] = {}
    for path in files:
        registered.update(_load_file(app, path, path.name))
    return registered


def _project_of(path: Path) -> Path:
    """The project a file belongs to: the current directory when it is inside it."""
    cwd = Path.cwd()
    return cwd if path.resolve().is_relative_to(cwd.resolve()) else path.parent
