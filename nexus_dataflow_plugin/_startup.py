"""Interpreter start-up hook, run from ``nexus_dataflow_plugin.pth``.

It must cost next to nothing: it imports only ``sys`` and installs one
meta-path finder that waits for the ``nexus`` package. When ``nexus`` has
finished importing, the finder runs ``autoload.install()`` and removes itself.
Set ``NEXUS_DISABLE_PLUGIN_AUTOLOAD=1`` to turn all of it off (checked in the
``.pth`` line, before this module is even imported).
"""

import sys

_TARGET = "nexus"


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


def install():
    if "nexus" in sys.modules:
        from nexus_dataflow_plugin.autoload import install as now

        now()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
