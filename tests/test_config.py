"""Settings: arguments > environment > pyproject ``[tool.nexus]`` > defaults.

Every option is checked at every level with real files and environments:
``load_settings(base, overrides, environ)`` reads ``base/pyproject.toml``.
Invalid values and broken pyproject files are ``ConfigError``s that name the
setting (as spelled in its source) and the source. The last test shows such an
error stops a real server's start-up before discovery runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nexus_dataflow_plugin import DataFlowCompatiblePlugin, SmartDiscovery
from nexus_dataflow_plugin.config import (
    OPTIONS,
    ConfigError,
    Settings,
    env_var,
    load_settings,
    pyproject_key,
)


@dataclass(frozen=True)
class Option:
    name: str  # keyword argument / Settings field
    env: str  # environment variable
    key: str  # [tool.nexus] key
    argument: Any
    environment: str
    toml: str  # TOML literal
    from_argument: Any
    from_environment: Any
    from_pyproject: Any
    default: Any


CASES = [
    Option(
        "enabled", "NEXUS_DATAFLOW_COMPATIBLE", "dataflow_compatible",
        True, "0", "true", True, False, True, False,
    ),
    Option(
        "timeout", "NEXUS_DATAFLOW_TIMEOUT", "dataflow_timeout",
        1.5, "2.5", "3.5", 1.5, 2.5, 3.5, 10.0,
    ),
    Option(
        "workers", "NEXUS_DATAFLOW_WORKERS", "dataflow_workers",
        2, "3", "4", 2, 3, 4, None,
    ),
    Option(
        "exclude", "NEXUS_DATAFLOW_EXCLUDE", "dataflow_exclude",
        ["a/*.py"], "b/*.py, c_workflow.py", '["d.py"]',
        ("a/*.py",), ("b/*.py", "c_workflow.py"), ("d.py",), (),
    ),
    Option(
        "max_file_bytes", "NEXUS_DATAFLOW_MAX_FILE_BYTES", "dataflow_max_file_bytes",
        1000, "2000", "3000", 1000, 2000, 3000, 5 * 1024 * 1024,
    ),
    Option(
        "memory_limit_mb", "NEXUS_DATAFLOW_MEMORY_LIMIT_MB", "dataflow_memory_limit_mb",
        100, "200", "300", 100, 200, 300, 4096,
    ),
    Option(
        "cpu_limit_s", "NEXUS_DATAFLOW_CPU_LIMIT_S", "dataflow_cpu_limit_s",
        5, "6", "7", 5, 6, 7, 60,
    ),
    Option(
        "cache", "NEXUS_DATAFLOW_CACHE", "dataflow_cache",
        False, "yes", "false", False, True, False, True,
    ),
    Option(
        "max_result_bytes", "NEXUS_DATAFLOW_MAX_RESULT_BYTES", "dataflow_max_result_bytes",
        1000, "2000", "3000", 1000, 2000, 3000, 16 * 1024 * 1024,
    ),
    Option(
        "max_result_nodes", "NEXUS_DATAFLOW_MAX_RESULT_NODES", "dataflow_max_result_nodes",
        10, "20", "30", 10, 20, 30, 2_000,
    ),
    Option(
        "load_dependents", "NEXUS_DATAFLOW_LOAD_DEPENDENTS", "dataflow_load_dependents",
        True, "0", "true", True, False, True, False,
    ),
    Option(
        "manifest", "NEXUS_DATAFLOW_MANIFEST", "dataflow_manifest",
        "a.json", "b.json", '"c.json"', "a.json", "b.json", "c.json", None,
    ),
    Option(
        "manifest_strict", "NEXUS_DATAFLOW_MANIFEST_STRICT", "dataflow_manifest_strict",
        True, "on", "true", True, True, True, False,
    ),
    Option(
        "watch", "NEXUS_DATAFLOW_WATCH", "dataflow_watch",
        True, "off", "true", True, False, True, False,
    ),
]  # fmt: skip
BY_NAME = {o.name: o for o in CASES}


def write_pyproject(base: Path, body: str) -> Path:
    path = base / "pyproject.toml"
    path.write_text('[project]\nname = "app"\nversion = "1"\n\n[tool.nexus]\n' + body)
    return path


def test_every_option_is_covered_and_named_three_ways() -> None:
    assert {o.name for o in CASES} == {
        "enabled", "timeout", "workers", "exclude",
        "max_file_bytes", "memory_limit_mb", "cpu_limit_s", "cache", "max_result_bytes",
        "max_result_nodes", "load_dependents", "manifest", "manifest_strict", "watch",
    }  # fmt: skip
    assert set(Settings.__dataclass_fields__) == set(BY_NAME)
    for option in CASES:
        assert env_var(option.name) == option.env
        assert pyproject_key(option.name) == option.key
        assert getattr(Settings(), option.name) == option.default


@pytest.mark.parametrize("option", CASES, ids=lambda o: o.name)
def test_precedence(tmp_path: Path, option: Option) -> None:
    name = option.name
    write_pyproject(tmp_path, f"{option.key} = {option.toml}\n")
    environ = {option.env: option.environment}
    everything = load_settings(tmp_path, {name: option.argument}, environ)
    assert getattr(everything, name) == option.from_argument
    assert getattr(load_settings(tmp_path, {}, environ), name) == option.from_environment
    assert getattr(load_settings(tmp_path, {}, {}), name) == option.from_pyproject
    # an argument of None means "not given": the next level decides
    assert getattr(load_settings(tmp_path, {name: None}, {}), name) == option.from_pyproject
    assert getattr(load_settings(tmp_path / "nowhere", {}, {}), name) == option.default
    # only the option itself changes
    for other in CASES:
        if other.name != name:
            assert getattr(everything, other.name) == other.default


def test_all_levels_at_once(tmp_path: Path) -> None:
    """Each option resolved from its own level in one call."""
    write_pyproject(tmp_path, "dataflow_compatible = true\ndataflow_workers = 4\n")
    settings = load_settings(
        tmp_path,
        {"timeout": 1.5},
        {"NEXUS_DATAFLOW_WORKERS": "3", "NEXUS_DATAFLOW_EXCLUDE": "x.py"},
    )
    assert settings == Settings(enabled=True, timeout=1.5, workers=3, exclude=("x.py",))


def test_a_scan_takes_settings_whole_and_its_own_options_as_keywords(tmp_path: Path) -> None:
    settings = Settings(timeout=1.5, memory_limit_mb=None, watch=True)
    discovery = SmartDiscovery(tmp_path, settings, workers=2)
    assert discovery.settings == Settings(timeout=1.5, memory_limit_mb=None, watch=True,
                                          workers=2)
    assert discovery.limits.memory_bytes is None  # "no limit" survives: nothing re-parsed
    assert discovery.limits.timeout_s == 1.5
    # What chooses how discovery starts is the plugin's, not a scan's; the switch is nobody's.
    starting = sorted(name for name, o in OPTIONS.items() if not o.scan)
    assert starting == ["enabled", "load_dependents", "manifest", "manifest_strict", "watch"]
    for name in starting:
        with pytest.raises(ConfigError, match=name):
            SmartDiscovery(tmp_path, **{name: True})
    with pytest.raises(ConfigError, match="enabled"):
        DataFlowCompatiblePlugin(enabled=True)
    with pytest.raises(ConfigError, match="timeout"):
        SmartDiscovery(tmp_path, timeout=0)


def test_process_environment_is_the_default_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pyproject(tmp_path, "dataflow_timeout = 3.5\n")
    monkeypatch.setenv("NEXUS_DATAFLOW_TIMEOUT", "2.5")
    monkeypatch.setenv("NEXUS_DATAFLOW_COMPATIBLE", "yes")
    settings = load_settings(tmp_path)
    assert settings.timeout == 2.5 and settings.enabled is True


def test_plugin_arguments_win_over_environment_and_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pyproject(tmp_path, "dataflow_timeout = 3.5\ndataflow_workers = 4\n")
    monkeypatch.setenv("NEXUS_DATAFLOW_TIMEOUT", "2.5")
    monkeypatch.setenv("NEXUS_DATAFLOW_WORKERS", "3")
    plugin = DataFlowCompatiblePlugin(timeout=1.5)
    settings = load_settings(tmp_path, plugin.options)
    assert (settings.timeout, settings.workers) == (1.5, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(t, True) for t in ("1", "true", "TRUE", "yes", "on", " On ")]
    + [(f, False) for f in ("0", "false", "no", "off", "")],
)
def test_switch_spellings(text: str, expected: bool) -> None:
    settings = load_settings(Path("/nonexistent"), {}, {"NEXUS_DATAFLOW_COMPATIBLE": text})
    assert settings.enabled is expected


@pytest.mark.parametrize("text", ["0", "none", "None", ""])
def test_zero_or_none_means_no_limit(text: str) -> None:
    environ = {"NEXUS_DATAFLOW_MEMORY_LIMIT_MB": text, "NEXUS_DATAFLOW_CPU_LIMIT_S": text}
    settings = load_settings(Path("/nonexistent"), {}, environ)
    assert settings.memory_limit_mb is None and settings.cpu_limit_s is None


INVALID = [
    ("enabled", "maybe", '"maybe"'),
    ("enabled", "2", "2"),
    ("timeout", "soon", '"soon"'),
    ("timeout", "0", "0"),
    ("timeout", "-1", "-1.0"),
    ("timeout", "inf", "inf"),
    ("timeout", "nan", "nan"),
    ("workers", "lots", '"lots"'),
    ("workers", "-2", "-2"),
    ("workers", "1.5", "true"),
    ("exclude", None, "5"),
    ("exclude", None, '["ok.py", 1]'),
    ("max_file_bytes", "0", "0"),
    ("max_file_bytes", "big", "-1"),
    ("memory_limit_mb", "-5", "-5"),
    ("cpu_limit_s", "x", '"x"'),
    ("cache", "sometimes", "1.5"),
    ("manifest", None, "5"),
    ("manifest_strict", "perhaps", '"perhaps"'),
]


@pytest.mark.parametrize(("name", "env_value", "toml"), INVALID)
def test_invalid_value_names_setting_and_source(
    tmp_path: Path, name: str, env_value: str | None, toml: str
) -> None:
    option = BY_NAME[name]
    path = write_pyproject(tmp_path, f"{option.key} = {toml}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(tmp_path, {}, {})
    message = str(raised.value)
    assert option.key in message and str(path) in message and "[tool.nexus]" in message

    if env_value is not None:
        with pytest.raises(ConfigError) as raised:
            load_settings(tmp_path / "nowhere", {}, {option.env: env_value})
        message = str(raised.value)
        assert option.env in message and "environment" in message and repr(env_value) in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("timeout", 0), ("timeout", "soon"), ("workers", 0.5), ("workers", True), ("exclude", 7)],
)
def test_invalid_argument_names_setting_and_source(name: str, value: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(Path("/nonexistent"), {name: value}, {})
    message = str(raised.value)
    assert f"{name} = {value!r}" in message and "from argument" in message


def test_settings_built_in_code_hold_what_the_loader_would_or_are_refused(
    tmp_path: Path,
) -> None:
    assert Settings(timeout=5) == Settings(timeout=5.0)
    for wrong in ({"timeout": "3"}, {"timeout": -5}, {"exclude": "workflows/a.py"},
                  {"cache": "no"}, {"memory_limit_mb": 0}):
        name = next(iter(wrong))
        with pytest.raises(ConfigError, match=f"{name} = "):
            Settings(**wrong)
    for given in ("timeout=5", {"timeout": 5}):
        with pytest.raises(ConfigError, match="Expected config.Settings"):
            SmartDiscovery(tmp_path, given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [("timeout", 1e10, "at most 1,000,000 seconds"),
     ("memory_limit_mb", 10**13, "at most 8,796,093,022,207"),
     ("cpu_limit_s", 10**30, "at most 8,796,093,022,207")],
)
def test_a_limit_the_kernel_cannot_take_is_refused_not_blamed_on_every_file(
    name: str, value: Any, expected: str
) -> None:
    # Accepted, each would overflow setitimer/setrlimit in every file's process, and
    # every file would be reported crashed.
    with pytest.raises(ConfigError, match=expected):
        load_settings(Path("/nonexistent"), {name: value}, {})
    assert getattr(load_settings(Path("/nonexistent"), {name: 1000}, {}), name) == 1000


def test_a_plugin_argument_of_the_wrong_type_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"Invalid setting exclude = 5 \(from argument\)"):
        DataFlowCompatiblePlugin(exclude=5)


def test_a_misspelt_dataflow_key_warns_once_naming_the_closest_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_pyproject(tmp_path, "dataflow_timout = 5\ndataflow_zzz = 1\nother_tool_key = 2\n")
    with caplog.at_level(logging.WARNING, logger="nexus_dataflow_plugin.config"):
        first = load_settings(tmp_path, {}, {})
        load_settings(tmp_path, {}, {})
    warnings = [r.getMessage() for r in caplog.records]
    source = f"{tmp_path / 'pyproject.toml'} [tool.nexus]"
    assert warnings[0] == (
        f"Unknown setting dataflow_timout in {source}, ignored; did you mean dataflow_timeout?"
    )
    assert warnings[1].startswith(f"Unknown setting dataflow_zzz in {source}, ignored; known: ")
    assert len(warnings) == 2, warnings  # once per file and key, not per load
    assert first.timeout == Settings().timeout


def test_unknown_argument() -> None:
    with pytest.raises(ConfigError, match="Unknown option.*timout"):
        load_settings(Path("/nonexistent"), {"timout": 3}, {})


def test_an_argument_beats_an_invalid_lower_level(tmp_path: Path) -> None:
    """Only the value actually used is validated; a lower level it overrides is not read."""
    write_pyproject(tmp_path, 'dataflow_timeout = "soon"\n')
    settings = load_settings(tmp_path, {"timeout": 2}, {"NEXUS_DATAFLOW_TIMEOUT": "later"})
    assert settings.timeout == 2.0


@pytest.mark.parametrize(
    "content",
    [
        "[tool.nexus\ndataflow_compatible = true\n",
        "[tool.nexus]\ndataflow_compatible = true\ndataflow_compatible = false\n",
        "[tool.nexus]\ndataflow_timeout = \n",
        pytest.param(
            b"\xff\xfe[\x00t\x00o\x00o\x00l\x00]\x00\n\x00",  # saved as UTF-16 by an editor
        ),
    ],
    ids=["unclosed-table", "duplicate-key", "missing-value", "not-utf8"],
)
def test_broken_pyproject_is_a_clear_error(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "pyproject.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        load_settings(tmp_path, {}, {"NEXUS_DATAFLOW_COMPATIBLE": "1"})
    assert f"Cannot read {path}" in str(raised.value)


def test_pyproject_without_nexus_table_gives_defaults(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.other]\na = 1\n')
    assert load_settings(tmp_path, {}, {}) == Settings()


def test_invalid_pyproject_value_stops_server_start_up(tmp_path: Path) -> None:
    """A real app with the pyproject flag: start() fails naming the setting, before discovery."""
    from shop_harness import harness
    project = harness.copy_project(tmp_path / "shop")
    path = write_pyproject(project, 'dataflow_compatible = true\ndataflow_timeout = "soon"\n')
    app = harness.AppProcess(
        project, tmp_path / "run", {"way": "pyproject", "serve": False}, harness.clean_env()
    )
    with app:
        with pytest.raises(AssertionError, match="app failed") as raised:
            app.wait_result(timeout=120)
    message = str(raised.value)
    assert "ConfigError" in message
    assert f"dataflow_timeout = 'soon' (from {path} [tool.nexus])" in message
    assert harness.ran(project / "workflows/greet.py") == []  # discovery never started
    assert harness.ran(project / "pricing_workflow.py") == []


def test_environment_errors_surface_at_install_not_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The entry-point loader constructs the plugin with no arguments; a bad environment
    value must not make it vanish from the registry, but fail where the user installs it."""
    from nexus import Nexus

    monkeypatch.setenv("NEXUS_DATAFLOW_WORKERS", "lots")
    plugin = DataFlowCompatiblePlugin()  # no error yet: nothing of the environment is used
    app = Nexus(enable_durability=False)  # auto_discovery off: nothing is discovered here
    try:
        with pytest.raises(
            ConfigError, match=r"NEXUS_DATAFLOW_WORKERS = 'lots' \(from environment\)"
        ):
            app.add_plugin(plugin)
    finally:
        app.close()


def test_invalid_environment_value_with_use_plugin_names_the_setting(tmp_path: Path) -> None:
    from shop_harness import harness
    project = harness.copy_project(tmp_path / "shop")
    app = harness.AppProcess(
        project,
        tmp_path / "run",
        {"way": "use_plugin", "serve": False},
        harness.clean_env(NEXUS_DATAFLOW_TIMEOUT="soon"),
    )
    with app:
        with pytest.raises(AssertionError, match="app failed") as raised:
            app.wait_result(timeout=120)
    assert "NEXUS_DATAFLOW_TIMEOUT = 'soon' (from environment)" in str(raised.value)


@pytest.mark.parametrize(
    "option,raw,expected",
    [
        ("workers", 0, None),  # 0 means one worker per core, as the message says
        ("workers", "none", None),
        ("workers", 3.0, 3),
        ("memory_limit_mb", 0, None),  # 0 means no limit
        ("cpu_limit_s", "0", None),
    ],
)
def test_zero_and_none_mean_the_default(tmp_path: Path, option: str, raw: object,
                                        expected: object) -> None:
    key = f"dataflow_{option}"
    value = f'"{raw}"' if isinstance(raw, str) else raw
    (tmp_path / "pyproject.toml").write_text(f"[tool.nexus]\n{key} = {value}\n")
    assert getattr(load_settings(tmp_path, environ={}), option) == expected


@pytest.mark.parametrize("raw", [1.7, -1, True])
def test_a_fractional_negative_or_boolean_worker_count_is_refused(raw: object) -> None:
    with pytest.raises(ConfigError, match="workers"):
        load_settings(Path("/nonexistent"), {"workers": raw}, environ={})


def test_a_misspelt_environment_variable_warns_once_naming_the_closest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {"NEXUS_DATAFLOW_TIMOUT": "5", "NEXUS_DATAFLOW_SCAN": "worker-marker",
               "NEXUS_OTHER": "x"}
    with caplog.at_level(logging.WARNING, logger="nexus_dataflow_plugin.config"):
        load_settings(tmp_path, {}, environ)
        load_settings(tmp_path, {}, environ)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["Unknown setting NEXUS_DATAFLOW_TIMOUT in the environment, ignored; "
                        "did you mean NEXUS_DATAFLOW_TIMEOUT?"], warnings
