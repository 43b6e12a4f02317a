"""Wires smart discovery into a Nexus instance.

Works with both of Nexus's plugin systems: the name-based registry
(``app.use_plugin("dataflow_compatible")`` calls ``apply``) and the instance
protocol (``app.add_plugin(DataFlowCompatiblePlugin(...))`` calls ``install``
and the lifecycle hooks). Either way the app's ``_auto_discover_workflows``
is replaced, so discovery, when ``start()`` runs it, imports nothing into the
server process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import types
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kailash.workflow import Workflow
from nexus.plugins import NexusPlugin

from . import report as r
from ._probe import probe, workflow_name
from .config import Settings, check_arguments, load_settings
from .discovery import SmartDiscovery
from .isolation import WorkerPool
from .screen import analyze

logger = logging.getLogger(__name__)

PLUGIN_NAME = "dataflow_compatible"
REPORT_ATTR = "_dataflow_discovery_report"
PLUGIN_ATTR = "_dataflow_compatible_plugin"
REQUIRED_INTERNALS = ("_auto_discover_workflows", "_workflows", "register")

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


def log_report(report: r.DiscoveryReport) -> None:
    """One INFO summary, then each file that needs a look at WARNING, skips at INFO."""
    logger.info("dataflow_compatible discovery: %s", report.summary())
    for entry in report.files:
        if entry.status in r.PROBLEM_STATUSES:
            logger.warning("  %s [%s] %s", entry.path, entry.status, entry.reason)
        elif entry.status in (r.SKIPPED_MODEL, r.SKIPPED_DEPENDENT):
            logger.info("  %s [%s] %s", entry.path, entry.status, entry.reason)
        else:
            logger.debug("  %s [%s] %s", entry.path, entry.status, entry.reason)


def _not_registered(entry: r.FileResult | None, name: str, message: str, status: str) -> None:
    """Say in the file's entry why ``name`` was not registered; with none left, re-status it."""
    if entry is None:
        return
    entry.workflows.remove(name)
    entry.reason += " " + message
    if not entry.workflows and entry.status == r.REGISTERED:
        entry.status = status


def register_discovered(app: Any, report: r.DiscoveryReport) -> list[str]:
    """Register the report's workflows as Nexus does: explicit names win, bad names skip."""
    registered: list[str] = []
    owners = {name: entry for entry in report.files for name in entry.workflows}
    for name, workflow in report.workflows.items():
        if name in app._workflows:
            message = MSG_EXPLICIT_WINS.format(name=name)
            logger.info(message)
            _not_registered(owners.get(name), name, message, r.NO_WORKFLOWS)
            continue
        try:
            app.register(name, workflow)
        except ValueError as exc:
            message = MSG_REJECTED.format(name=name, error=exc)
            logger.warning(message)
            _not_registered(owners.get(name), name, message, r.ERROR)
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
        report = SmartDiscovery(os.getcwd(), pool=pool, **settings.discovery_options()).run()
    register_discovered(app, report)
    log_report(report)
    setattr(app, REPORT_ATTR, report)
    return report


class DataFlowCompatiblePlugin(NexusPlugin):
    """Smart, isolated workflow discovery that is safe next to DataFlow models.

    Options (all optional; unset ones come from the environment, then
    ``[tool.nexus]`` in the project's pyproject.toml, then defaults):
    ``timeout`` per file in seconds, ``workers``, ``exclude`` glob patterns,
    ``max_file_bytes``, ``memory_limit_mb``, ``cpu_limit_s``, ``cache``,
    ``max_result_bytes`` and ``max_result_nodes`` (what one file's result may hold),
    ``manifest`` (start from the file ``nexus-dataflow freeze`` wrote) and
    ``manifest_strict`` (refuse to start when it does not match the project).
    """

    def __init__(
        self,
        *,
        timeout: float | None = None,
        workers: int | None = None,
        exclude: Sequence[str] | None = None,
        max_file_bytes: int | None = None,
        memory_limit_mb: int | None = None,
        cpu_limit_s: int | None = None,
        cache: bool | None = None,
        max_result_bytes: int | None = None,
        max_result_nodes: int | None = None,
        manifest: str | os.PathLike[str] | None = None,
        manifest_strict: bool | None = None,
    ) -> None:
        self.options: dict[str, Any] = {
            "timeout": timeout,
            "workers": workers,
            "exclude": exclude,
            "max_file_bytes": max_file_bytes,
            "memory_limit_mb": memory_limit_mb,
            "cpu_limit_s": cpu_limit_s,
            "cache": cache,
            "max_result_bytes": max_result_bytes,
            "max_result_nodes": max_result_nodes,
            "manifest": manifest,
            "manifest_strict": manifest_strict,
        }
        # A bad argument is an error here; the environment and pyproject.toml are read
        # (and their errors raised) when the plugin installs and when discovery runs.
        parsed = check_arguments(self.options)
        if exclude is not None:  # kept as parsed: a tuple the caller's list cannot change
            self.options["exclude"] = parsed["exclude"]
        self.report: r.DiscoveryReport | None = None
        self._last_app: weakref.ReferenceType[Any] | None = None
        self._pool: tuple[Path, Settings, WorkerPool] | None = None

    @property
    def name(self) -> str:
        return PLUGIN_NAME

    @property
    def description(self) -> str:
        return "Isolated workflow auto-discovery that never executes DataFlow model files"

    # -- both plugin systems ---------------------------------------------------------

    def apply(self, nexus_instance: Any) -> None:
        """Name-based registry entry point (``app.use_plugin``)."""
        self.install(nexus_instance)

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
                plugin.report = smart_auto_discover(nexus_self, settings, pool)
            finally:
                if pool is not None:
                    pool.close()

        app._auto_discover_workflows = types.MethodType(_auto_discover_workflows, app)
        setattr(app, PLUGIN_ATTR, self)
        self._last_app = weakref.ref(app)
        logger.info("dataflow_compatible discovery installed")

    def _prestart(self, base: Path, settings: Settings) -> None:
        self._close_pool()
        discovery = SmartDiscovery(base, **settings.discovery_options())
        self._pool = (base, settings, discovery.prestart())

    def _take_pool(self, base: Path, settings: Settings) -> WorkerPool | None:
        """The pre-started pool, if it was made for this directory and these settings."""
        prepared, self._pool = self._pool, None
        if prepared is None:
            return None
        if prepared[:2] == (base, settings):
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
        """End pre-started workers that a discovery never used."""
        self._close_pool()

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
        them in isolation. Returns the workflows registered, by name.
        """
        return load_workflow_files(self._app(app), paths)

    def register_dataflow_workflows(self, db: Any, **kwargs: Any) -> dict[str, Workflow]:
        """Register CRUD workflows for ``db``'s models into the installed app."""
        from .dataflow_workflows import register_dataflow_workflows

        return register_dataflow_workflows(self._app(kwargs.pop("app", None)), db, **kwargs)


def load_workflow_files(app: Any, paths: Iterable[str | os.PathLike[str]]) -> dict[str, Workflow]:
    """Execute each file in-process (like native discovery) and register its workflows."""
    registered: dict[str, Workflow] = {}
    for raw in paths:
        path = Path(raw).absolute()
        if path.is_dir():
            example = next(iter(sorted(path.glob("*.py"))), path / "<name>.py")
            raise IsADirectoryError(MSG_LOAD_DIRECTORY.format(path=path, example=example))
        if not path.is_file():
            raise FileNotFoundError(MSG_LOAD_MISSING.format(path=path))
        facts = analyze(path.read_bytes())
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"Cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        probed = probe(vars(module), str(path), facts.factories)
        for failure in probed.failures:
            logger.warning("%s: %s", path, failure)
        for attr, workflow in probed.workflows.items():
            name = workflow_name(path.name, attr)
            app.register(name, workflow)
            registered[name] = workflow
    return registered
