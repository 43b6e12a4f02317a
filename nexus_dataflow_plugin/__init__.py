"""Safe Nexus workflow auto-discovery for apps that define Kailash DataFlow models.

The public API is re-exported lazily (PEP 562): the interpreter start-up hook
and the worker process import submodules of this package, and neither may pay
for importing Nexus (or even ``typing``) here.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "discover_workflows": "discovery",
    "SmartDiscovery": "discovery",
    "DiscoveryReport": "report",
    "FileResult": "report",
    "DataFlowCompatiblePlugin": "plugin",
    "plugin_of": "plugin",
    "LoadRefused": "plugin",
    "register_dataflow_workflows": "dataflow_workflows",
    "Settings": "config",
    "ConfigError": "config",
    "load_settings": "config",
    "ManifestError": "manifest",
    "freeze": "manifest",
}

__all__ = [
    "ConfigError",
    "DataFlowCompatiblePlugin",
    "DiscoveryReport",
    "FileResult",
    "LoadRefused",
    "ManifestError",
    "Settings",
    "SmartDiscovery",
    "__version__",
    "discover_workflows",
    "freeze",
    "load_settings",
    "plugin_of",
    "register_dataflow_workflows",
]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
