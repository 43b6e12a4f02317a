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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

ENV_PREFIX = "NEXUS_"
PYPROJECT_TABLE = ("tool", "nexus")

MSG_INVALID = "Invalid setting {key} = {value!r} (from {source}): {problem}"
MSG_PYPROJECT = "Cannot read {path}: {problem}"
MSG_NOT_SCAN = (
    "Not an option of a scan: {options} (they choose how the plugin starts discovery; "
    "pass them to DataFlowCompatiblePlugin)"
)
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


# Bounds the kernel takes: a file's alarm (setitimer) overflows from about 1e10 s, and
# an rlimit must fit in 63 bits (memory in bytes: MiB * 2**20).
MAX_TIMEOUT_S = 1_000_000
MAX_LIMIT = 2**43 - 1


def _positive_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number < float("inf"):
        raise ValueError("expected a positive, finite number of seconds")
    if number > MAX_TIMEOUT_S:
        raise ValueError(f"expected at most {MAX_TIMEOUT_S:,} seconds")
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
    number = _optional_count(value, "no limit")
    if number is not None and number > MAX_LIMIT:
        raise ValueError(f"expected at most {MAX_LIMIT:,}, or 0/none for no limit")
    return number


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


def _option(default: Any, parse: Callable[[Any], Any], *, key: str | None = None,
            scan: bool = True, argument: bool = True) -> Any:
    """Declare one option: its default, its parser, its key suffix (``dataflow_<key>`` /
    ``NEXUS_DATAFLOW_<KEY>``; the field's name unless given), whether it shapes a scan
    (``SmartDiscovery`` takes it) or how discovery starts (the plugin alone), and
    whether it is a keyword argument at all (the switch is not: adding the plugin is)."""
    return field(default=default,
                 metadata={"parse": parse, "key": key, "scan": scan, "argument": argument})


@dataclass(frozen=True)
class Settings:
    """Every option, declared once: the keyword arguments, the environment variables, the
    ``[tool.nexus]`` keys, their defaults and the configuration reference come from here."""

    enabled: bool = _option(False, _boolean, key="compatible", scan=False, argument=False)
    timeout: float = _option(10.0, _positive_float)  # per file: import and factory calls
    workers: int | None = _option(None, _workers)
    exclude: tuple[str, ...] = _option((), _patterns)
    max_file_bytes: int = _option(5 * 1024 * 1024, _positive_int)
    memory_limit_mb: int | None = _option(4096, _limit)
    cpu_limit_s: int | None = _option(60, _limit)
    cache: bool = _option(True, _boolean)
    max_result_bytes: int = _option(16 * 1024 * 1024, _positive_int)
    # nodes + connections: Workflow.from_dict is quadratic in a node pair's connections
    max_result_nodes: int = _option(2_000, _positive_int)
    load_dependents: bool = _option(False, _boolean, scan=False)
    manifest: str | None = _option(None, _optional_path, scan=False)
    manifest_strict: bool = _option(False, _boolean, scan=False)
    watch: bool = _option(False, _boolean, scan=False)

    def __post_init__(self) -> None:
        """Hold only what the parsers give (``load_settings`` does): a ``Settings`` built
        in code with ``timeout="3"`` or ``exclude="x.py"`` is a ``ConfigError`` here, not
        a ``TypeError`` inside a scan or a setting silently ignored."""
        for name in OPTIONS:
            value = getattr(self, name)
            parsed = _parse(name, value, name, "Settings")
            # The parser's own value; a whole number given for seconds is one too.
            same_type = type(parsed) is type(value) or (
                type(value) is int and type(parsed) is float)
            if not same_type or parsed != value:
                raise ConfigError(MSG_INVALID.format(
                    key=name, value=value, source="Settings",
                    problem=f"expected {parsed!r} as the settings loader would hold it"))


class Option(NamedTuple):
    """One option as ``Settings`` declares it."""

    name: str
    key: str  # dataflow_<key> in [tool.nexus], NEXUS_DATAFLOW_<KEY> in the environment
    parse: Callable[[Any], Any]
    default: Any
    scan: bool  # SmartDiscovery takes it
    argument: bool  # DataFlowCompatiblePlugin takes it


OPTIONS: dict[str, Option] = {
    f.name: Option(f.name, f.metadata["key"] or f.name, f.metadata["parse"], f.default,
                   f.metadata["scan"], f.metadata["argument"])
    for f in fields(Settings)
}


def pyproject_key(option: str) -> str:
    return f"dataflow_{OPTIONS[option].key}"


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
        return OPTIONS[option].parse(raw)
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


def check_keywords(arguments: Mapping[str, Any], *, scan: bool = False) -> dict[str, Any]:
    """``check_arguments`` for a constructor's keywords: the switch is no keyword, and with
    ``scan`` only the options that shape a scan are."""
    parsed = check_arguments(arguments)
    if not_keywords := sorted(k for k in parsed if not OPTIONS[k].argument):
        raise ConfigError(f"Unknown option(s): {', '.join(not_keywords)}")
    if scan and (others := sorted(k for k in parsed if not OPTIONS[k].scan)):
        raise ConfigError(MSG_NOT_SCAN.format(options=", ".join(others)))
    return parsed


def with_arguments(settings: Settings | None, arguments: Mapping[str, Any]) -> Settings:
    """``settings`` (default: every default) with a scan's keyword options over it."""
    if settings is not None and not isinstance(settings, Settings):
        raise ConfigError(f"Expected config.Settings (load_settings(base) reads them), "
                          f"got {type(settings).__name__}: {settings!r}")
    return replace(settings or Settings(), **check_keywords(arguments, scan=True))


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
