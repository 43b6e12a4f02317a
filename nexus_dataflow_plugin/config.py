"""Settings: constructor arguments > environment > pyproject.toml > defaults.

Every option has one key, spelled three ways: the keyword argument
(``timeout``), the environment variable (``NEXUS_DATAFLOW_TIMEOUT``) and the
``[tool.nexus]`` key in the discovered project's ``pyproject.toml``
(``dataflow_timeout``). The switch itself is ``NEXUS_DATAFLOW_COMPATIBLE`` /
``dataflow_compatible``. An invalid value is a ``ConfigError`` naming the
setting and where it came from, raised when the settings are loaded.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV_PREFIX = "NEXUS_"
PYPROJECT_TABLE = ("tool", "nexus")

MSG_INVALID = "Invalid setting {key} = {value!r} (from {source}): {problem}"
MSG_PYPROJECT = "Cannot read {path}: {problem}"
MSG_UNKNOWN_KEY = "Unknown setting {key} in {source}, ignored{hint}"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names it and its source."""


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true/false (1/0, yes/no, on/off)")


def _positive_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number < float("inf"):
        raise ValueError("expected a positive, finite number of seconds")
    return number


def _whole(value: Any) -> int:
    """A whole number from an int, an integral float or a string; never a bool."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected a whole number")
        return int(value)
    return int(value)


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"})


def _optional_count(value: Any, zero_means: str) -> int | None:
    """A positive whole number, or None for 0/none/empty (which means ``zero_means``)."""
    if _unset(value):
        return None
    number = _whole(value)
    if number < 0:
        raise ValueError(f"expected a positive whole number, or 0/none for {zero_means}")
    return number or None


def _limit(value: Any) -> int | None:
    """A resource limit; 0/none is no limit."""
    return _optional_count(value, "no limit")


def _workers(value: Any) -> int | None:
    """Parallel workers; 0/none is one per core."""
    return _optional_count(value, "one per core")


def _positive_int(value: Any) -> int:
    number = None if _unset(value) else _whole(value)
    if number is None or number < 1:
        raise ValueError("expected a positive whole number")
    return number


def _optional_path(value: Any) -> str | None:
    """A file path as given (relative ones are relative to the project); empty/none is unset."""
    if _unset(value):
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError("expected a file path")
    return os.fspath(value).strip()


def _patterns(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise ValueError("expected glob patterns (a list, or a comma-separated string)")


@dataclass(frozen=True)
class Settings:
    """Resolved options for smart discovery."""

    enabled: bool = False
    timeout: float = 10.0
    workers: int | None = None
    exclude: tuple[str, ...] = ()
    max_file_bytes: int = 5 * 1024 * 1024
    memory_limit_mb: int | None = 4096
    cpu_limit_s: int | None = 60
    cache: bool = True
    max_result_bytes: int = 16 * 1024 * 1024
    max_result_nodes: int = 2_000
    load_dependents: bool = False
    manifest: str | None = None
    manifest_strict: bool = False
    watch: bool = False

    def discovery_options(self) -> dict[str, Any]:
        """Keyword arguments for ``SmartDiscovery``."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in NOT_DISCOVERY_OPTIONS}


# Settings that choose how discovery starts (or keeps watching), not how a scan runs.
NOT_DISCOVERY_OPTIONS = frozenset({"enabled", "manifest", "manifest_strict",
                                   "load_dependents", "watch"})


# option name -> (key suffix, parser); the key is dataflow_<suffix> / NEXUS_DATAFLOW_<SUFFIX>
OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "enabled": ("compatible", _boolean),
    "timeout": ("timeout", _positive_float),
    "workers": ("workers", _workers),
    "exclude": ("exclude", _patterns),
    "max_file_bytes": ("max_file_bytes", _positive_int),
    "memory_limit_mb": ("memory_limit_mb", _limit),
    "cpu_limit_s": ("cpu_limit_s", _limit),
    "cache": ("cache", _boolean),
    "max_result_bytes": ("max_result_bytes", _positive_int),
    "max_result_nodes": ("max_result_nodes", _positive_int),
    "load_dependents": ("load_dependents", _boolean),
    "manifest": ("manifest", _optional_path),
    "manifest_strict": ("manifest_strict", _boolean),
    "watch": ("watch", _boolean),
}


def pyproject_key(option: str) -> str:
    return f"dataflow_{OPTIONS[option][0]}"


def env_var(option: str) -> str:
    return ENV_PREFIX + pyproject_key(option).upper()


def read_pyproject(base: Path) -> dict[str, Any]:
    """The ``[tool.nexus]`` table of ``base/pyproject.toml`` ({} when absent)."""
    path = base / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(MSG_PYPROJECT.format(path=path, problem=exc)) from exc
    table: Any = data
    for key in PYPROJECT_TABLE:
        table = table.get(key, {}) if isinstance(table, dict) else {}
    return table if isinstance(table, dict) else {}


_warned_keys: set[tuple[str, str]] = set()
# Our variables that are not settings: the marker every discovery worker carries.
NOT_SETTINGS_ENV = frozenset({"NEXUS_DATAFLOW_SCAN"})


def _warn_unknown_keys(keys: Iterable[str], prefix: str, known: list[str], source: str) -> None:
    """A key with our prefix that we do not know is a typo more often than not: say so,
    once per source and key (``dataflow_timout``, ``NEXUS_DATAFLOW_TIMOUT``)."""
    for key in keys:
        if not key.startswith(prefix) or key in known or key in NOT_SETTINGS_ENV or (
                source, key) in _warned_keys:
            continue
        _warned_keys.add((source, key))
        # Compared without the shared prefix, which would make every key look close.
        close = difflib.get_close_matches(key[len(prefix):],
                                          [k[len(prefix):] for k in known], n=1)
        hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known: {', '.join(known)}"
        logger.warning(MSG_UNKNOWN_KEY.format(key=key, source=source, hint=hint))


def _parse(option: str, raw: Any, key: str, source: str) -> Any:
    try:
        return OPTIONS[option][1](raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            MSG_INVALID.format(key=key, value=raw, source=source, problem=exc)
        ) from exc


def check_arguments(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate constructor arguments alone (None means "not given"); return them parsed."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(OPTIONS)
    if unknown:
        raise ConfigError(f"Unknown option(s): {', '.join(sorted(unknown))}")
    return {k: _parse(k, v, k, "argument") for k, v in given.items()}


def load_settings(
    base: Path,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every option by precedence; raise ``ConfigError`` on a bad value."""
    values = check_arguments(overrides or {})
    environ = os.environ if environ is None else environ
    table = read_pyproject(base)
    _warn_unknown_keys(table, "dataflow_", [pyproject_key(o) for o in OPTIONS],
                       f"{base / 'pyproject.toml'} [tool.nexus]")
    _warn_unknown_keys(environ, ENV_PREFIX + "DATAFLOW_", [env_var(o) for o in OPTIONS],
                       "the environment")
    for option in OPTIONS:
        if option in values:
            continue
        if env_var(option) in environ:
            values[option] = _parse(option, environ[env_var(option)], env_var(option),
                                    "environment")
        elif pyproject_key(option) in table:
            source = f"{base / 'pyproject.toml'} [tool.nexus]"
            values[option] = _parse(option, table[pyproject_key(option)],
                                    pyproject_key(option), source)
    return Settings(**values)
