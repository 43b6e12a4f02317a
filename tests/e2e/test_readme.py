"""The README, followed by a new user on a fresh machine, and the docs checked against the code.

A fresh virtualenv is made in a temporary directory, next to a copy of the
repository's tracked files (what a clone holds). The README's first command
(``pip install .``: a wheel, not editable, no test extra; then serve the example
shop on SQLite) runs there exactly as written, with only the port changed to a
free one; the example's own README requests are then sent, and the server is
stopped with Ctrl+C. In that same venv, serving on PostgreSQL first fails in one
line naming the extra, then the README's PostgreSQL command (install the
``postgres`` extra, serve) runs with a real database. The README's other
``nexus-dataflow`` commands run there too. The test command is not run
recursively: it must be the command ``.ci/run`` runs.

The docs checks: every ``docs/*.md`` link in the README exists, and the
configuration reference's table is the one generated from ``config.OPTIONS``,
the ``Settings`` defaults and the constructors' signatures. ``config_table()``
prints it; from the repository root:
``PYTHONPATH=tests python -c "from e2e.test_readme import config_table as t; print(t())"``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .test_serve import ServeProcess, free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"
EXAMPLE_README = REPO / "docs" / "examples" / "shop" / "README.md"
INSTALL_TIMEOUT_S = 480.0  # a cold `pip install -e .` on a busy 2-core machine
COMMAND_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Block:
    lang: str
    text: str

    def commands(self) -> list[str]:
        """Non-empty, non-comment lines (a trailing ``\\`` joins lines)."""
        joined = self.text.replace("\\\n", " ")
        return [line.strip() for line in joined.splitlines()
                if line.strip() and not line.strip().startswith("#")]


def fenced_blocks(path: Path) -> list[Block]:
    return [Block(lang, text) for lang, text in
            re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), re.S | re.M)]


def bash_blocks() -> list[Block]:
    return [b for b in fenced_blocks(README) if b.lang == "bash"]


def readme_command(*needles: str, without: str = "\0") -> str:
    """The one README command containing every needle (and not ``without``)."""
    (found,) = [c for b in bash_blocks() for c in b.commands()
                if all(n in c for n in needles) and without not in c]
    return found


# --- a fresh venv and a clean copy of the repository -----------------------------------------


def copy_checkout(target: Path) -> Path:
    """What a clone of this work tree would hold once committed: tracked and new files that
    are not ignored, as they are now; tests left out (a user does not need them)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:  # not a git checkout: copy the tree minus local state
        shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(
            ".git", ".venv", "*.egg-info", "__pycache__", ".*_cache", "tests", "build"))
        return target
    for rel in listed.stdout.decode().split("\0"):
        if not rel or rel.startswith("tests/"):
            continue
        source = REPO / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)
    return target


def venv_env(venv: Path) -> dict[str, str]:
    """A shell with the venv activated and nothing of ours configured."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("NEXUS_DATAFLOW_", "PYTEST_", "NDP_"))
        and k not in {"PYTHONPATH", "PYTHONHOME", "DATABASE_URL", "VIRTUAL_ENV", "NO_COLOR"}
    }
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return env


@dataclass
class Served:
    """What happened when the README's first command ran."""

    checkout: Path
    env: dict[str, str]
    command: str
    port: int
    responses: dict[str, Any]
    output: str
    exit_code: int
    stop_seconds: float
    leftovers: list[str]


def example_requests() -> list[tuple[str, dict[str, Any]]]:
    """(workflow, body) of each ``curl`` in the example's README, as documented."""
    requests = []
    for block in fenced_blocks(EXAMPLE_README):
        for command in block.commands():
            if not command.startswith("curl"):
                continue
            words = shlex.split(command)
            url = next(w for w in words if "/workflows/" in w)
            body = words[words.index("-d") + 1]
            requests.append((url.split("/workflows/")[1].split("/")[0], json.loads(body)))
    return requests


def example_responses(server: ServeProcess) -> dict[str, tuple[int, Any]]:
    """Once ``server`` serves: workflow -> (status, body) for each of the example's requests."""
    server.wait_ready(INSTALL_TIMEOUT_S)
    server.wait_output("Serving on")
    responses = {}
    for name, body in example_requests():
        response = httpx.post(f"{server.url}/workflows/{name}/execute", json=body, timeout=60)
        responses[name] = (response.status_code, response.json())
    return responses


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("readme")
    checkout = copy_checkout(root / "checkout")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = venv_env(venv)

    first = bash_blocks()[0].commands()
    assert len(first) == 1, first
    assert first[0] == readme_command("pip install", "serve", without="--database-url")
    port = free_port()
    command, substitutions = re.subn(r"--port \d+", f"--port {port}", first[0])
    assert substitutions == 1, first[0]
    server = ServeProcess(["bash", "-c", command], cwd=checkout, env=env, port=port,
                          log=root / "first-command.err")
    try:
        responses = example_responses(server)
        output = server.output()
        code, seconds = server.interrupt()
        leftovers = server.leftovers()
        yield Served(checkout, env, command, port, responses, output, code, seconds, leftovers)
    finally:
        server.kill()


# --- the README's commands --------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_first_command_installs_and_serves_the_example(served: Served) -> None:
    assert served.command.startswith("pip install . && nexus-dataflow serve docs/examples/shop")
    assert f"Serving on http://127.0.0.1:{served.port}" in served.output
    assert re.search(r"^registered\s+workflows/price_quote\.py\s+price_quote", served.output,
                     re.M), served.output
    assert set(served.responses) >= {"price_quote", "product_create", "product_list"}

    status, quote = served.responses["price_quote"]
    assert status == 200 and quote["outputs"]["quote"]["result"]["total"] == 36.0

    # The example's README creates a product and lists it: on SQLite, with no server,
    # exactly as the README promises.
    status, created = served.responses["product_create"]
    assert status == 200, created
    node = created["outputs"]["product_create"]
    assert node.get("success", True) is not False and node.get("name") == "pen", node
    status, listed = served.responses["product_list"]
    assert status == 200, listed
    assert [r["name"] for r in listed["outputs"]["product_list"]["records"]] == ["pen"], listed
    assert (served.checkout / "docs" / "examples" / "shop" / "app.db").is_file()


@pytest.mark.timeout(900)
def test_first_command_installs_the_wheel_not_editable_and_no_test_extra(served: Served) -> None:
    python = Path(served.env["VIRTUAL_ENV"]) / "bin" / "python"
    probe = (
        "import importlib.util, json, sysconfig, nexus_dataflow_plugin as p; "
        "site = sysconfig.get_paths()['purelib']; "
        "print(json.dumps({'package': p.__file__, 'site': site, "
        "'pytest': importlib.util.find_spec('pytest') is not None}))"
    )
    found = json.loads(subprocess.run(
        [str(python), "-c", probe], cwd="/", env=served.env, capture_output=True, text=True,
        check=True, timeout=COMMAND_TIMEOUT_S,
    ).stdout)
    site = Path(found["site"])
    assert Path(found["package"]).is_relative_to(site), found  # a copy, not the checkout
    assert not list(site.glob("__editable__*nexus_dataflow_plugin*")), "an editable install"
    assert found["pytest"] is False  # the test extra was not installed
    for start_up in ("nexus_dataflow_plugin.pth", "nexus_dataflow_plugin.start"):
        assert (site / start_up).is_file(), start_up


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_postgresql_needs_the_extra_then_serves_the_example(
    served: Served, fresh_pg_database: str, tmp_path: Path
) -> None:
    command = readme_command("pip install", "--database-url")
    assert command.startswith('pip install ".[postgres]" && nexus-dataflow serve docs/examples/')
    serve_words = shlex.split(command.split("&&", 1)[1])
    port = free_port()
    serve_words[serve_words.index("--port") + 1] = str(port)
    serve_words[serve_words.index("--database-url") + 1] = fresh_pg_database

    # Before the extra: one line that says what to install, and no server.
    before = subprocess.run(serve_words, cwd=served.checkout, env=served.env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S)
    assert before.returncode == 2, (before.stdout, before.stderr[-3000:])
    assert before.stderr.splitlines() == [
        "nexus-dataflow: error: PostgreSQL needs DataFlow's driver, which is not installed: "
        'pip install "nexus-dataflow-plugin[postgres]"'
    ], before.stderr[-3000:]

    # The README's command, as written, with the free port and the test's database.
    line = f"{command.split('&&', 1)[0].strip()} && {shlex.join(serve_words)}"
    server = ServeProcess(["bash", "-c", line], cwd=served.checkout, env=served.env,
                          port=port, log=tmp_path / "postgres-command.err")
    try:
        responses = example_responses(server)
        assert f"database  {fresh_pg_database} (shop.models.db)" in server.output()
        status, listed = responses["product_list"]
        assert status == 200, listed
        assert [r["name"] for r in listed["outputs"]["product_list"]["records"]] == ["pen"]
        code, seconds = server.interrupt()
        assert code in (0, 130) and seconds < 20
        assert server.leftovers() == []
    finally:
        server.kill()


@pytest.mark.timeout(900)
def test_ctrl_c_stops_the_first_command_cleanly(served: Served) -> None:
    assert served.exit_code in (0, 130)
    assert served.stop_seconds < 20
    assert served.leftovers == [], "processes outlived the server"


@pytest.mark.timeout(900)
def test_the_other_nexus_dataflow_commands_run_in_the_fresh_venv(served: Served) -> None:
    commands = [c for block in bash_blocks() for c in block.commands()
                if c.startswith("nexus-dataflow ")]
    assert any(c.startswith("nexus-dataflow scan") for c in commands)
    assert any(c.startswith("nexus-dataflow plugins") for c in commands)
    running = {
        command: subprocess.Popen(
            ["bash", "-c", command], cwd=served.checkout, env=served.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        for command in commands
    }
    for command, process in running.items():
        out, err = process.communicate(timeout=COMMAND_TIMEOUT_S)
        text = out.decode()
        if "--fail-on" in command:
            # The example holds a file that exits at import: `--fail-on error` must say so.
            assert process.returncode == 1, (command, err.decode()[-2000:])
        else:
            assert process.returncode == 0, (command, err.decode()[-2000:])
        if "--json" in command:
            assert set(json.loads(text)) == {"workflows", "files"}
        elif "--explain" in command:
            path = shlex.split(command)[shlex.split(command).index("--explain") + 1]
            assert text.startswith(f"{path}: skipped_dependent"), text
            assert "shop/models.py" in text, text
        elif command.startswith("nexus-dataflow freeze"):
            words = shlex.split(command)
            written = json.loads((served.checkout / words[words.index("-o") + 1]).read_text())
            assert written["kind"] == "nexus-dataflow-manifest" and written["workflows"]
        elif command.startswith("nexus-dataflow scan"):
            assert text.splitlines()[0].split() == ["STATUS", "FILE", "WORKFLOWS", "TIME",
                                                    "REASON"]
        else:
            assert text.startswith("autoload  on: "), text
            assert re.search(r"^dataflow_compatible .*loads$", text, re.M), text


def test_the_test_command_is_what_ci_runs() -> None:
    command = readme_command("pip install", "pytest")
    install, tests = (part.strip() for part in command.split("&&"))
    script = CI_RUN.read_text()
    assert re.search(rf"^\s*{re.escape(tests)}(\s|$)", script, re.M), (
        f"the README's test command {tests!r} is not what .ci/run runs"
    )
    pip_args = shlex.split(install)
    assert pip_args[:2] == ["pip", "install"], install
    ci_installs = [shlex.split(line.strip().rstrip("\\"))
                   for line in script.splitlines() if "pip install" in line]
    assert any(args[args.index("install") + 1:][-2:] == pip_args[2:] for args in ci_installs), (
        f"the README's {install!r} is not what .ci/run installs"
    )


def test_without_postgresql_the_readme_runs_everything_else() -> None:
    """``-m "not postgres"`` leaves out every test that needs PostgreSQL, and only those."""
    command = readme_command("pytest", '-m "not postgres"')
    assert shlex.split(command)[:3] == ["python", "-m", "pytest"]
    readme = README.read_text()
    assert "NDP_POSTGRES_URL" in readme and "Debian's packages" not in readme
    files = ["tests/e2e/test_serve.py", "tests/e2e/test_dataflow_http.py",
             "tests/e2e/test_discovery_server.py"]

    def collected(*marks: str) -> list[str]:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
             *marks, *files], cwd=REPO, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
        )
        assert run.returncode == 0, run.stdout[-3000:]
        return [line for line in run.stdout.splitlines() if "::" in line]

    without = collected("-m", "not postgres")
    assert without and not [t for t in without if "postgres" in t], without
    assert [t for t in collected("-m", "postgres") if "postgres" in t]


def test_readme_links_into_docs_exist() -> None:
    links = re.findall(r"\]\((docs/[^)#\s]+)\)", README.read_text())
    assert links, "the README links into docs/"
    missing = [link for link in links if not (REPO / link).is_file()]
    assert not missing, f"README links to missing docs: {missing}"


def test_doc_links_between_docs_exist() -> None:
    broken = []
    for doc in sorted((REPO / "docs").glob("*.md")):
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in link or link.startswith("mailto:"):
                continue
            if not (doc.parent / link).exists():
                broken.append(f"{doc.name} -> {link}")
    assert not broken, broken


# --- the configuration reference is generated from the code ----------------------------------

# What each option's parser accepts, in words, keyed to the parser it describes so a
# change of parser is caught here.
BOOLEAN = "`true`/`false` (also the strings `1`/`0`, `yes`/`no`, `on`/`off`; empty is false)"
NONE_AS = "`0`, `\"none\"` or `\"\"`"
VALID_VALUES = {
    "enabled": ("_boolean", BOOLEAN),
    "timeout": ("_positive_float", "seconds, a finite number > 0, at most 1,000,000"),
    "workers": ("_workers", f"a whole number >= 1; {NONE_AS}: one per CPU core"),
    "exclude": ("_patterns", "glob patterns matched (`fnmatch`) against the path relative to "
                             "the project: a list, or one comma-separated string"),
    "max_file_bytes": ("_positive_int", "bytes, a whole number >= 1"),
    "memory_limit_mb": ("_limit", f"MiB, a whole number from 1 to 8,796,093,022,207; "
                                   f"{NONE_AS}: no limit"),
    "cpu_limit_s": ("_limit", f"CPU seconds, a whole number from 1 to 8,796,093,022,207; "
                               f"{NONE_AS}: no limit"),
    "cache": ("_boolean", BOOLEAN),
    "max_result_bytes": ("_positive_int", "bytes, a whole number >= 1"),
    "max_result_nodes": ("_positive_int", "nodes and connections, a whole number >= 1"),
    "load_dependents": ("_boolean", BOOLEAN),
    "manifest": ("_optional_path", "a file path, relative to the project unless absolute; "
                                   "`\"none\"` or `\"\"`: no manifest"),
    "manifest_strict": ("_boolean", BOOLEAN),
    "watch": ("_boolean", BOOLEAN),
}


def _literal(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value)


def config_table() -> str:
    """The configuration reference's table, from config.OPTIONS (Settings' declarations)."""
    from nexus_dataflow_plugin.config import OPTIONS, env_var, pyproject_key

    rows = [
        "| option | keyword argument | environment variable | `[tool.nexus]` key | default "
        "| valid values |",
        "|---|---|---|---|---|---|",
    ]
    for name, option in OPTIONS.items():
        expected_parser, valid = VALID_VALUES[name]
        assert option.parse.__name__ == expected_parser, (name, option.parse.__name__)
        where = [taker for taker, takes in (("DataFlowCompatiblePlugin", option.argument),
                                            ("SmartDiscovery", option.scan)) if takes]
        keyword = f"`{name}=` ({', '.join(where)})" if where else "none: adding the plugin"
        rows.append(
            f"| {name} | {keyword} | `{env_var(name)}` | `{pyproject_key(name)}` "
            f"| `{_literal(option.default)}` | {valid} |"
        )
    return "\n".join(rows)


def test_configuration_reference_matches_the_code() -> None:
    table = config_table()
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert table in doc, f"docs/configuration.md must contain this table:\n\n{table}\n"


# --- the troubleshooting guide quotes the messages the code prints ----------------------------

# (module, constant) of every reason template a user can see in a report
REASON_TEMPLATES = [
    *[("report", name) for name in (
        "MSG_REGISTERED", "MSG_READ", "MSG_NO_WORKFLOWS", "MSG_SKIPPED_MODEL",
        "MSG_SKIPPED_DEPENDENT",
        "MSG_TIMEOUT", "MSG_TIMEOUT_STOPPED", "MSG_CRASHED", "MSG_SYNTAX", "MSG_DECODE",
        "MSG_NUL", "MSG_UNREADABLE",
        "MSG_NOT_TRANSFERABLE", "MSG_NEEDS_MODELS", "MSG_MODEL_MISSING", "MSG_INVALID_RESULT",
        "PROBLEM_TOO_LARGE", "PROBLEM_TOO_MANY_NODES", "MSG_CHANGED",
    )],
    ("report", "MSG_KEPT_LAST_GOOD"), ("report", "MSG_MODELS_CHANGED"),
    ("finder", "MSG_OUTSIDE"), ("finder", "MSG_TOO_LARGE"), ("finder", "MSG_BROKEN_LINK"),
    ("transfer", "NOT_JSON"), ("transfer", "SECRET"), ("transfer", "CYCLE"),
    ("transfer", "PROJECT_NODE"), ("transfer", "LOSSY"), ("transfer", "UNKNOWN_NODE"),
    ("transfer", "REFUSED_MODULE"),
    ("plugin", "MSG_REJECTED"), ("plugin", "MSG_EXPLICIT_WINS"),
    ("plugin", "MSG_LOAD_REFUSED"), ("plugin", "MSG_LOAD_REFUSED_RUN"),
    ("plugin", "MSG_LOADED_DEPENDENT"),
    ("probe", "MISSING_NODE_HINT"),
    *[("manifest", name) for name in (
        "MSG_STARTED", "MSG_PARTIAL", "MSG_STALE", "MSG_MISSING", "MSG_CORRUPT", "MSG_FOREIGN",
        "MSG_FALLBACK",
    )],
]


def quoted(template: str, text: str) -> bool:
    """``text`` quotes ``template``, whatever it names its ``{placeholders}``."""
    chunks = re.split(r"\{[^{}]*\}", template)
    pattern = r"\{[^{}`]*\}".join(re.escape(chunk) for chunk in chunks)
    return re.search(pattern, text) is not None


@pytest.mark.parametrize("module,name", REASON_TEMPLATES, ids=[n for _, n in REASON_TEMPLATES])
def test_troubleshooting_quotes_each_reason_as_the_code_prints_it(module: str, name: str) -> None:
    import importlib

    template = getattr(importlib.import_module(f"nexus_dataflow_plugin.{module}"), name, None)
    if template is None:
        pytest.skip(f"{module}.{name} no longer exists: drop it from REASON_TEMPLATES")
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    assert quoted(template, doc), (
        f"docs/troubleshooting.md does not quote {module}.{name}:\n{template}"
    )


def test_every_guarantee_in_the_readme_names_a_test_that_exists() -> None:
    """The README's guarantees each cite file::test; a renamed test must not leave a dead cite."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", section)
    assert len(cited) >= 10, section
    missing = [
        f"{path}::{name}"
        for path, name in cited
        if not re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M)
    ]
    assert not missing, missing
