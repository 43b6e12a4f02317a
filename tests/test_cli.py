"""``nexus-dataflow``, run as a user runs it: the console script, in subprocesses.

The project is a copy of the example shop (docs/examples/shop): one registered
workflow, one ``skipped_model``, one ``skipped_dependent`` and one ``error``.
Scans that take seconds are started together (``Run``) and awaited in the
tests, so the module costs about as much as its slowest scan. Terminal
behaviour (colour, the progress line) is checked on a real pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from procs import processes_with_env

from nexus_dataflow_plugin.screen import analyze

CLI = str(Path(sys.executable).with_name("nexus-dataflow"))
REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "shop"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
FILE_KEYS = {"path", "status", "reason", "workflows", "duration_s"}
SHOP_STATUSES = {
    "workflows/exits_at_import.py": "error",
    "workflows/order_intake.py": "skipped_dependent",
    "workflows/price_quote.py": "registered",
    "workflows/supplier_models.py": "skipped_model",
}
RUN_TIMEOUT_S = 120

SLOW_WORKFLOW = """\
import os
import time

from kailash.workflow.builder import WorkflowBuilder

if os.environ.get("NDP_CLI_MARK"):
    open(os.environ["NDP_CLI_MARK"], "w").close()
time.sleep(float(os.environ.get("NDP_CLI_SLEEP", "1.6")))

workflow = WorkflowBuilder()
workflow.add_node("PythonCodeNode", "answer", {"code": "result = {'value': 42}"})
"""


class Run:
    """A started ``nexus-dataflow`` process; ``tty`` puts stdout or stderr on a pty."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, tty: str | None = None
    ) -> None:
        self.args = args
        streams: dict[str, int] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        self._master: int | None = None
        self._tty_data = b""
        if tty is not None:
            self._master, slave = pty.openpty()
            streams[tty] = slave
        self.tty = tty
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [CLI, *args], stdin=subprocess.DEVNULL, env=env or base_env(), **streams
        )
        if self._master is not None:
            os.close(streams[tty])
            self._reader = threading.Thread(target=self._read_tty, daemon=True)
            self._reader.start()
        self._result: tuple[int, str, str] | None = None

    def _read_tty(self) -> None:
        assert self._master is not None
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            self._tty_data += chunk
        os.close(self._master)

    def result(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr); a pty's text has its line endings normalised."""
        if self._result is None:
            out, err = self.process.communicate(timeout=RUN_TIMEOUT_S)
            if self._master is not None:
                self._reader.join(10)
            texts = {"stdout": out or b"", "stderr": err or b""}
            if self.tty is not None:
                texts[self.tty] = self._tty_data.replace(b"\r\n", b"\n")
            self._result = (
                self.process.returncode,
                texts["stdout"].decode("utf-8", "replace"),
                texts["stderr"].decode("utf-8", "replace"),
            )
        return self._result


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_DATAFLOW_")}
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


def copy_example(target: Path) -> Path:
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("app.db*", "migrations", "__pycache__")
    )
    return target


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_example(tmp_path_factory.mktemp("cli") / "shop")


@pytest.fixture(scope="module")
def slow_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_slow")
    (root / "workflows").mkdir()
    (root / "workflows" / "slow_quote.py").write_text(SLOW_WORKFLOW)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The user's environment, with a private screen cache and one worker per scan
    (the scans run side by side; a worker per core each would only crowd the machine)."""
    return base_env(
        XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")), NEXUS_DATAFLOW_WORKERS="1"
    )


@pytest.fixture(scope="module")
def runs(project: Path, slow_project: Path, env: dict[str, str]) -> dict[str, Run]:
    """Every slow invocation of the module, started at once."""
    shop, slow = str(project), str(slow_project)
    return {
        "table": Run("scan", shop, env=env),
        "json_fail_on": Run("scan", shop, "--json", "--fail-on", "error,timeout,crashed", env=env),
        "fail_on_absent": Run("scan", shop, "--fail-on", "timeout,crashed", env=env),
        "explain": Run(
            "scan", shop,
            "--explain", "workflows/order_intake.py",
            "--explain", str(project / "workflows" / "supplier_models.py"),
            "--explain", "workflows/price_quote.py",
            "--explain", "shop/models.py",
            env=env,
        ),
        "explain_json": Run(
            "scan", shop, "--json", "--explain", "workflows/order_intake.py", env=env
        ),
        "progress": Run("scan", slow, "--json", env=env, tty="stderr"),
        "colour": Run("scan", slow, env=env, tty="stdout"),
        "no_colour": Run("scan", slow, env={**env, "NO_COLOR": "1"}, tty="stdout"),
    }


# --- scan: the table and the JSON -------------------------------------------------------------


def test_scan_prints_an_aligned_table_and_exits_0_whatever_the_statuses(
    runs: dict[str, Run],
) -> None:
    code, out, err = runs["table"].result()
    assert code == 0, err
    assert "Traceback" not in err
    assert not ANSI.search(out), "no colour when stdout is not a terminal"
    lines = out.rstrip("\n").splitlines()
    header = lines[0]
    assert header.split() == ["STATUS", "FILE", "WORKFLOWS", "TIME", "REASON"]
    rows = lines[1 : 1 + len(SHOP_STATUSES)]
    columns = [header.index(name) for name in ("FILE", "WORKFLOWS", "TIME", "REASON")]
    seen = {}
    for row in rows:
        status, path = row.split()[:2]
        seen[path] = status
        # aligned: every column starts where its header does
        assert [row[c - 1] == " " and row[c] != " " for c in columns] == [True] * 4, row
    assert seen == SHOP_STATUSES
    price = next(row for row in rows if "price_quote.py" in row)
    assert "price_quote" in price[columns[1] :] and re.search(r"\d+\.\d\ds", price)
    assert lines[len(SHOP_STATUSES) + 1] == ""
    assert re.fullmatch(
        r"1 workflow\(s\) from 4 file\(s\) \[1 registered, 1 skipped_model, "
        r"1 skipped_dependent, 1 error\] in \d+\.\d\ds",
        lines[-1],
    ), lines[-1]


def test_scan_json_has_the_documented_shape(runs: dict[str, Run]) -> None:
    code, out, err = runs["json_fail_on"].result()
    report = json.loads(out)  # stdout is the JSON document and nothing else
    assert set(report) == {"workflows", "files"}
    assert report["workflows"] == ["price_quote"]
    assert {entry["path"]: entry["status"] for entry in report["files"]} == SHOP_STATUSES
    for entry in report["files"]:
        assert set(entry) == FILE_KEYS
        assert isinstance(entry["reason"], str) and entry["reason"]
        assert isinstance(entry["workflows"], list)
        assert isinstance(entry["duration_s"], (int, float)) and entry["duration_s"] >= 0
    by_path = {entry["path"]: entry for entry in report["files"]}
    assert by_path["workflows/price_quote.py"]["workflows"] == ["price_quote"]
    assert "SystemExit" in by_path["workflows/exits_at_import.py"]["reason"]
    assert "shop/models.py" in by_path["workflows/order_intake.py"]["reason"]


def test_fail_on_exits_1_when_a_named_status_is_found(runs: dict[str, Run]) -> None:
    code, out, err = runs["json_fail_on"].result()
    assert code == 1, err
    assert json.loads(out)["files"]  # the report is still printed in full
    assert "Traceback" not in err


def test_fail_on_names_each_matching_file_and_its_status_on_stderr(runs: dict[str, Run]) -> None:
    code, out, err = runs["json_fail_on"].result()
    assert code == 1
    assert err.splitlines() == ["--fail-on error: workflows/exits_at_import.py"], err


def test_fail_on_exits_0_when_no_named_status_is_found(runs: dict[str, Run]) -> None:
    code, out, err = runs["fail_on_absent"].result()
    assert code == 0, err  # the shop has an `error` file, but no timeout or crashed one
    assert "exits_at_import.py" in out


# --- scan --explain ---------------------------------------------------------------------------


def _sections(text: str) -> dict[str, str]:
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    return {block.split(":", 1)[0]: block for block in blocks}


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_explain_shows_status_model_lines_and_import_chain(
    runs: dict[str, Run], project: Path
) -> None:
    code, out, err = runs["explain"].result()
    assert code == 0, err
    sections = _sections(out)
    assert list(sections) == [
        "workflows/order_intake.py",
        "workflows/supplier_models.py",
        "workflows/price_quote.py",
        "shop/models.py",
    ]
    # What the screen itself says about the model module, e.g. "Product at line 14 via db.model"
    product = analyze((project / "shop" / "models.py").read_bytes()).model
    assert product and product.startswith("Product at line ")

    dependent = sections["workflows/order_intake.py"]
    assert dependent.splitlines()[0] == "workflows/order_intake.py: skipped_dependent"
    assert "defines models: no" in dependent
    line = _line_of(project / "workflows" / "order_intake.py", "from shop.models import")
    assert f"line {line}: shop.models (Product) -> shop/__init__.py, shop/models.py [models: " \
        f"{product}]" in dependent, dependent
    builder = _line_of(project / "workflows" / "order_intake.py", "import WorkflowBuilder")
    assert f"line {builder}: kailash.workflow.builder (WorkflowBuilder) -> not a project module" \
        in dependent, dependent
    assert ("chain to a model module: workflows/order_intake.py -> shop/models.py "
            f"({product})") in dependent
    assert "factories a worker may call: restock_workflow()" in dependent

    model = sections["workflows/supplier_models.py"]
    supplier = project / "workflows" / "supplier_models.py"
    decorated, imported = _line_of(supplier, "@db.model"), _line_of(supplier, "import db")
    assert model.splitlines()[0] == "workflows/supplier_models.py: skipped_model"
    assert f"defines models: Supplier at line {decorated} via db.model" in model
    assert (f"line {decorated}: Supplier via db.model, imported at line {imported} from "
            f"shop/__init__.py (no models), shop/models.py ({product})") in model, model
    assert "it defines models itself" in model

    plain = sections["workflows/price_quote.py"]
    assert plain.splitlines()[0] == "workflows/price_quote.py: passes_screen"
    assert "chain to a model module: none" in plain

    outside = sections["shop/models.py"]
    assert outside.splitlines()[0] == "shop/models.py: not_a_candidate"
    assert f"defines models: {product}" in outside


def test_explain_json(runs: dict[str, Run], project: Path) -> None:
    code, out, err = runs["explain_json"].result()
    assert code == 0, err
    (info,) = json.loads(out)["explain"]
    product = analyze((project / "shop" / "models.py").read_bytes()).model
    assert info["path"] == "workflows/order_intake.py"
    assert info["status"] == "skipped_dependent" and info["candidate"] is True
    assert info["chain"] == ["workflows/order_intake.py", "shop/models.py"]
    assert info["chain_detail"] == product
    assert info["models"] is None
    (models_import,) = [ref for ref in info["imports"] if ref["module"] == "shop.models"]
    assert models_import["line"] == _line_of(
        project / "workflows" / "order_intake.py", "from shop.models import"
    )
    assert models_import["names"] == ["Product"]
    assert {f["path"]: f["models"] for f in models_import["project_files"]} == {
        "shop/__init__.py": None,
        "shop/models.py": product,
    }


# --- terminal behaviour -----------------------------------------------------------------------


def test_progress_goes_to_a_terminal_stderr_and_json_stdout_stays_clean(
    runs: dict[str, Run],
) -> None:
    code, out, err = runs["progress"].result()
    assert code == 0, err
    assert json.loads(out)["workflows"] == ["slow_quote"]
    assert re.search(r"[|/\\-] scanning \S+ \d+s", err), repr(err)
    assert err.endswith("\r\x1b[K"), "the progress line is erased when the scan ends"


def test_colour_only_on_a_terminal_and_never_with_no_color(runs: dict[str, Run]) -> None:
    code, out, err = runs["colour"].result()
    assert code == 0, err
    assert "\x1b[32mregistered" in out
    assert "scanning" not in err, "no progress line when stderr is not a terminal"
    code, out, err = runs["no_colour"].result()
    assert code == 0, err
    assert "registered" in out and not ANSI.search(out)


def test_ctrl_c_ends_the_scan_and_its_workers_in_one_line(
    slow_project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    mark = tmp_path / "importing"
    run = Run("scan", str(slow_project), env={**env, "NDP_CLI_MARK": str(mark),
                                             "NDP_CLI_SLEEP": "60"})
    deadline = time.monotonic() + 60
    while not mark.exists():
        assert run.process.poll() is None, run.result()
        assert time.monotonic() < deadline, "the slow file was never imported"
        time.sleep(0.05)
    run.process.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    code, out, err = run.result()
    assert time.monotonic() - stopped < 15
    assert code == 130
    assert err.strip().splitlines()[-1] == "nexus-dataflow: interrupted"
    assert "Traceback" not in err
    assert not processes_with_env("NDP_CLI_MARK", str(mark)), "a worker survived Ctrl+C"


# --- errors: one line on stderr, exit 2, no traceback -----------------------------------------

BAD_INVOCATIONS = {
    "negative timeout": (["scan", "{shop}", "--timeout", "-1"], {}, "--timeout"),
    "infinite timeout": (["scan", "{shop}", "--timeout", "inf"], {}, "--timeout"),
    "empty --fail-on": (["scan", "{shop}", "--fail-on", ""], {}, "--fail-on"),
    "serve models that do not exist": (
        ["serve", "{shop}", "--port", "{port}", "--models", "shop.nope"], {},
        "cannot load the models in shop.nope",
    ),
    "serve models that exit at import": (
        ["serve", "{shop}", "--port", "{port2}", "--models", "workflows.exits_at_import"], {},
        "cannot load the models in workflows.exits_at_import (database sqlite:///{shop}/app.db): "
        "SystemExit: this file exits at import",
    ),
    "serve on a port that is taken": (
        ["serve", "{shop}", "--port", "{taken}"], {}, "port {taken} is not available on 127.0.0.1",
    ),
    "serve on a host that is not an address": (
        ["serve", "{shop}", "--host", "no-such-host.invalid"], {}, "--host"
    ),
    "timeout not a number": (["scan", "{shop}", "--timeout", "soon"], {}, "--timeout"),
    "unknown status": (["scan", "{shop}", "--fail-on", "error,broken"], {}, "broken"),
    "missing path": (["scan", "{missing}"], {}, "not a directory"),
    "file as path": (["scan", "{shop}/shop/models.py"], {}, "not a directory"),
    "bad timeout in the environment": (
        ["scan", "{shop}"], {"NEXUS_DATAFLOW_TIMEOUT": "abc"}, "NEXUS_DATAFLOW_TIMEOUT"
    ),
    "bad workers in the environment": (
        ["scan", "{shop}"], {"NEXUS_DATAFLOW_WORKERS": "-3"}, "NEXUS_DATAFLOW_WORKERS"
    ),
    "bad pyproject value": (["scan", "{configured}"], {}, "dataflow_timeout"),
    "explain a missing file": (
        ["scan", "{shop}", "--explain", "workflows/nope.py"], {}, "no such file"
    ),
    "explain a file outside the project": (
        ["scan", "{shop}/workflows", "--explain", "{shop}/shop/models.py"], {},
        "not inside the project",
    ),
    "serve a missing path": (["serve", "{missing}"], {}, "not a directory"),
    "serve on port 0": (["serve", "{shop}", "--port", "0"], {}, "--port"),
    "no command": ([], {}, "command"),
    "unknown command": (["deploy"], {}, "deploy"),
}


@pytest.fixture(scope="module")
def bad_runs(
    project: Path, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> tuple[dict[str, Run], dict[str, str]]:
    """Every bad invocation, started at once (each fails fast; together they cost one),
    with what was filled into their arguments; a port is held taken until all ended."""
    root = tmp_path_factory.mktemp("bad")
    configured = root / "configured"
    (configured / "workflows").mkdir(parents=True)
    (configured / "pyproject.toml").write_text('[tool.nexus]\ndataflow_timeout = "later"\n')
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with socket.socket() as probe, socket.socket() as second:
        probe.bind(("127.0.0.1", 0))
        second.bind(("127.0.0.1", 0))
        free, free2 = probe.getsockname()[1], second.getsockname()[1]
    fill = {"shop": str(project), "missing": str(root / "nowhere"),
            "configured": str(configured), "taken": str(taken.getsockname()[1]),
            "port": str(free), "port2": str(free2)}
    started = {}
    for case, (argv, extra, _) in BAD_INVOCATIONS.items():
        args = [a.format(**fill) for a in argv]
        started[case] = Run(*args, env={**env, **extra})
    for run in started.values():
        run.result()
    taken.close()
    return {case: run for case, run in started.items()}, fill


@pytest.mark.parametrize("case", list(BAD_INVOCATIONS))
def test_bad_arguments_and_configuration_are_one_line_and_exit_2(
    case: str, bad_runs: tuple[dict[str, Run], dict[str, str]]
) -> None:
    runs, fill = bad_runs
    expected = BAD_INVOCATIONS[case][2].format(**fill)
    code, out, err = runs[case].result()
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nexus-dataflow") and ": error: " in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in err
    # serve reports its progress as it goes (the project line); nothing else writes stdout.
    assert out == "" or BAD_INVOCATIONS[case][0][0] == "serve" and "Traceback" not in out


def test_every_bad_timeout_is_refused_in_the_same_words(
    bad_runs: tuple[dict[str, Run], dict[str, str]]
) -> None:
    messages = {
        case: bad_runs[0][case].result()[2].strip()
        for case in ("negative timeout", "infinite timeout", "timeout not a number")
    }
    shapes = {re.sub(r"got '[^']*'", "got X", text) for text in messages.values()}
    assert len(shapes) == 1, messages
    assert "--timeout: expected a positive, finite number of seconds, got X" in shapes.pop()


def test_a_reader_that_leaves_early_ends_the_scan_quietly(project: Path, env: dict) -> None:
    """`scan --json | head -1`: the reader closes the pipe before the report is written."""
    process = subprocess.Popen(
        [CLI, "scan", str(project), "--json"], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the scan ends: its first write meets a closed pipe
    err = process.stderr.read().decode()
    assert process.wait(RUN_TIMEOUT_S) == 141  # 128 + SIGPIPE, as `yes | head` reports
    assert err == ""


def test_version_is_the_installed_distributions() -> None:
    import importlib.metadata

    code, out, err = Run("--version").result()
    assert code == 0, err
    assert out.strip() == f"nexus-dataflow {importlib.metadata.version('nexus-dataflow-plugin')}"


# --- plugins ----------------------------------------------------------------------------------


def test_plugins_help_says_what_the_command_shows() -> None:
    code, out, err = Run("plugins", "--help").result()
    assert code == 0, err
    assert "autoload" in out and "nexus.plugins" in out.split("options:")[0]


def test_plugins_says_autoload_is_on_and_what_armed_it(env: dict[str, str]) -> None:
    code, out, err = Run("plugins", env=env).result()
    assert code == 0, err
    first = out.splitlines()[0]
    armed = r"autoload  on: armed at start-up by /\S+/nexus_dataflow_plugin\.(pth|start)"
    assert re.fullmatch(armed, first), out


def test_plugins_says_autoload_is_off_and_why(env: dict[str, str]) -> None:
    code, out, err = Run("plugins", env={**env, "NEXUS_DISABLE_PLUGIN_AUTOLOAD": "1"}).result()
    assert code == 0, err
    assert out.splitlines()[0] == "autoload  off: NEXUS_DISABLE_PLUGIN_AUTOLOAD=1 is set", out
    (line,) = [line for line in out.splitlines() if line.startswith("dataflow_compatible")]
    assert not line.endswith("loads"), line
    assert "autoload is off" in line


def test_plugins_lists_dataflow_compatible_as_loading(env: dict[str, str]) -> None:
    code, out, err = Run("plugins", env=env).result()
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("dataflow_compatible")]
    assert "nexus_dataflow_plugin.plugin:DataFlowCompatiblePlugin" in line
    assert line.rstrip().endswith("loads")

