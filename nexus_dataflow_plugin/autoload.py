"""Entry-point plugins for Nexus, loaded when (and only when) ``nexus`` is imported.

``startup`` (run from a ``.pth`` file at interpreter start) waits for the
``nexus`` package to finish importing and then calls ``install()`` here. That
keeps interpreter start-up cost near zero in processes that never use Nexus:
no distribution scan happens until Nexus's plugin registry is first created.

``install()`` does two things:
- wraps ``nexus.plugins.get_plugin_registry`` so the registry, when Nexus
  creates it, also holds every plugin of the ``nexus.plugins`` entry-point
  group (sorted by name; a broken one is logged with its name and skipped);
- wraps ``Nexus._auto_discover_workflows`` so the configuration flag
  (``NEXUS_DATAFLOW_COMPATIBLE=1`` or ``[tool.nexus] dataflow_compatible``)
  switches every Nexus instance in the process to smart discovery.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import importlib_metadata

from .startup import disabled

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nexus.plugins"
_PATCHED = "__nexus_dataflow_patched__"

MSG_BROKEN = "Skipped Nexus plugin {name!r} ({value}) from the {group!r} entry points: {error}"


@dataclass(frozen=True)
class LoadedPlugin:
    """One entry point and what loading it gave: a plugin, or the error."""

    name: str
    value: str
    distribution: str
    plugin: Any = None
    error: str | None = None


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[LoadedPlugin]:
    """Load every entry point of ``group``, in a deterministic order, never raising."""
    loaded: list[LoadedPlugin] = []
    points = sorted(importlib_metadata.entry_points(group=group), key=lambda e: (e.name, e.value))
    for point in points:
        dist = getattr(point.dist, "name", "") if point.dist else ""
        try:
            target = point.load()
            plugin = target() if isinstance(target, type) else target
            loaded.append(LoadedPlugin(point.name, point.value, dist, plugin=plugin))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a third party's bug, not ours
            error = f"{type(exc).__name__}: {exc}"
            loaded.append(LoadedPlugin(point.name, point.value, dist, error=error))
    return loaded


def register_entry_points(registry: Any) -> list[str]:
    """Register each loadable entry-point plugin into a Nexus ``PluginRegistry``."""
    names: list[str] = []
    for item in load_entry_points():
        error = item.error
        if error is None:
            try:
                registry.register(item.plugin)
                names.append(item.plugin.name)
                continue
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - same: log and skip
                error = f"{type(exc).__name__}: {exc}"
        message = MSG_BROKEN.format(
            name=item.name, value=item.value, group=ENTRY_POINT_GROUP, error=error
        )
        logger.warning(message)
    return names


def _wrap_registry(plugins_module: Any) -> None:
    original = plugins_module.get_plugin_registry
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def get_plugin_registry() -> Any:
        fresh = plugins_module._registry is None
        registry = original()
        if fresh:
            register_entry_points(registry)
        return registry

    setattr(get_plugin_registry, _PATCHED, True)
    plugins_module.get_plugin_registry = get_plugin_registry


def _wrap_discovery(nexus_class: Any) -> None:
    original = nexus_class._auto_discover_workflows
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def _auto_discover_workflows(self: Any) -> None:
        from .config import load_settings

        settings = load_settings(Path.cwd())
        if not settings.enabled:
            return original(self)
        if settings.watch:
            from .plugin import DataFlowCompatiblePlugin

            # Watch mode lives in the plugin (its thread stops with the plugin's shutdown
            # hook), so the switch adds one; its install replaces this method.
            self.add_plugin(DataFlowCompatiblePlugin())
            return self._auto_discover_workflows()
        from .plugin import smart_auto_discover

        smart_auto_discover(self, settings)

    setattr(_auto_discover_workflows, _PATCHED, True)
    nexus_class._auto_discover_workflows = _auto_discover_workflows


def discovery_hooked(nexus_class: Any) -> bool:
    """Whether ``install()`` switched this Nexus class's discovery to the flag's (the hook
    fired in this process)."""
    return getattr(getattr(nexus_class, "_auto_discover_workflows", None), _PATCHED, False)


def install() -> None:
    """Hook entry-point plugins and the configuration flag into an imported Nexus.

    ``NEXUS_DISABLE_PLUGIN_AUTOLOAD`` is checked again here, so setting it in code
    before ``import nexus`` works too, not only before the interpreter starts.
    """
    if disabled():
        return
    import nexus.core
    import nexus.plugins

    _wrap_registry(nexus.plugins)
    _wrap_discovery(nexus.core.Nexus)
