"""The shop project's test harness (tests/fixtures/project_shop/harness/launch.py), loaded once.

It lives beside the fixture project it drives; the test modules that start that
project import it from here instead of each loading it by path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_NAME = "project_shop_harness"
_PATH = Path(__file__).resolve().parent / "fixtures" / "project_shop" / "harness" / "launch.py"


def _load() -> ModuleType:
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, _PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[_NAME]


harness = _load()
