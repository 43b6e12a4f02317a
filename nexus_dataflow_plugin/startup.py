"""Interpreter start-up hook: ``install()``, named by both start-up files.

``nexus_dataflow_plugin.start`` (PEP 829, Python 3.15+: site calls
``module:callable`` with no arguments) and, for older Pythons,
``nexus_dataflow_plugin.pth`` (an import line, which 3.15 ignores when the
``.start`` file is there and 3.18 ignores altogether) both call ``install()``.
It must cost next to nothing: it imports only ``sys`` and ``os`` (both already
loaded at start-up) and installs one meta-path finder that waits for the
``nexus`` package. When ``nexus`` has finished importing, the finder runs
``autoload.install()`` and removes itself. ``NEXUS_DISABLE_PLUGIN_AUTOLOAD=1``
turns all of it off; it is checked here, so both start-up files honour it.
"""

import os
import sys

_TARGET = "nexus"
DISABLE_ENV = "NEXUS_DISABLE_PLUGIN_AUTOLOAD"
START_FILE = "nexus_dataflow_plugin.start"
PTH_FILE = "nexus_dataflow_plugin.pth"


def disabled():
    """Whether the user switched autoload off (read at start-up and again in autoload)."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class _Loader:
    """Delegates to Nexus's own loader, then calls the autoload hook once."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            from nexus_dataflow_plugin.autoload import install

            install()
        except Exception as exc:  # never break `import nexus`
            import logging

            logging.getLogger("nexus_dataflow_plugin.autoload").warning(
                "nexus-dataflow-plugin autoload failed: %s: %s", type(exc).__name__, exc
            )


class _Finder:
    """Waits for ``import nexus``; meanwhile each import costs one string compare."""

    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def armed():
    """Whether the hook waits for ``import nexus`` in this interpreter (it is gone once
    Nexus is imported)."""
    return any(isinstance(f, _Finder) for f in sys.meta_path)


def install():
    """Arm the autoload, unless ``NEXUS_DISABLE_PLUGIN_AUTOLOAD`` is set."""
    if disabled():
        return
    if "nexus" in sys.modules:
        from nexus_dataflow_plugin.autoload import install as now

        now()
    elif not armed():
        sys.meta_path.insert(0, _Finder())
