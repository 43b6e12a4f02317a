"""Safe Nexus workflow auto-discovery for apps that define Kailash DataFlow models.

The public API is re-exported here lazily (PEP 562), so that importing a
submodule, as the worker process does, does not pull in Nexus.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "discover_workflows": "discovery",
    "SmartDiscovery": "discovery",
    "DiscoveryReport": "report",
    "FileResult": "report",
}

__all__ = [
    "DiscoveryReport",
    "FileResult",
    "SmartDiscovery",
    "__version__",
    "discover_workflows",
]

if TYPE_CHECKING:
    from .discovery import SmartDiscovery, discover_workflows
    from .report import DiscoveryReport, FileResult


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
