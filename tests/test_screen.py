"""Stage 1, the static screen: which files are DataFlow model files, which are broken,
and which of a file's functions discovery may call as factories.

Every model fixture writes a marker with its pid the moment it runs, so "skipped"
is checked at the process level: after a real scan, no model file has a marker.
A control test runs the same fixtures on purpose to prove they are genuine
DataFlow model files and that the marker mechanism works.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import place, runs, scan
from procs import started_commands

from nexus_dataflow_plugin import SmartDiscovery
from nexus_dataflow_plugin.screen import _walk, analyze

FIXTURES = Path(__file__).parent / "fixtures" / "engine"

# fixture file -> the model class the reason must name
MODEL_FILES = {
    "models_from_dataflow_import.py": "User",
    "models_from_dataflow_core_engine.py": "Invoice",
    "models_import_dataflow_as_alias.py": "Product",
    "models_dataflow_class_aliased.py": "Customer",
    "models_registered_by_call.py": "Shipment",
    "models_in_function.py": "User",
    "models_on_self_db_in_method.py": "User",
    "models_on_db_from_local_module.py": "Order",
}
NOT_MODEL_FILES = (
    "mentions_dataflow_in_comment_and_string.py",
    "unrelated_model_decorator.py",
)
ERROR_FILES = {
    "syntax_error_at_line_4.py": "line 4",
    "latin1_without_coding_cookie.py": "line 3",
    "contains_nul_bytes.py": "line 3",
}


# --- one real scan over every spelling ----------------------------------------------------

# The project conftest's ``tree`` builds and its ``report`` scans.
LAYOUT = {
    f"workflows/{name}": name
    for name in (*MODEL_FILES, *NOT_MODEL_FILES, "latin1_with_coding_cookie.py")
}
# The module that creates the DataFlow instance the last model file decorates with.
LAYOUT["dataflow_db_module.py"] = "dataflow_db_module.py"


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_every_model_spelling_is_skipped_with_the_model_named(report, name):
    entry = report.file(f"workflows/{name}")
    assert entry is not None
    assert entry.status == "skipped_model", entry.reason
    assert MODEL_FILES[name] in entry.reason
    assert "line" in entry.reason
    assert entry.workflows == []


def test_model_files_never_run_in_any_process(report, tree):
    never_ran = [f"workflows/{name}" for name in MODEL_FILES] + ["dataflow_db_module.py"]
    executed = {rel: runs(tree / rel) for rel in never_ran if runs(tree / rel)}
    assert executed == {}
    # No DataFlow database file was created by anything the scan did.
    assert list(tree.rglob("*.db")) == []


@pytest.mark.parametrize("name", NOT_MODEL_FILES)
def test_dataflow_in_comments_strings_or_unrelated_model_decorator_is_not_skipped(
    report, tree, name
):
    entry = report.file(f"workflows/{name}")
    assert entry.status == "registered", entry.reason
    assert entry.workflows == [Path(name).stem]
    pids = runs(tree / "workflows" / name)
    assert len(pids) == 1 and pids[0] != os.getpid()


def test_unrelated_model_decorator_really_ran_its_own_registry(report):
    workflow = report.workflows["unrelated_model_decorator"]
    code = workflow.nodes["list_models"].config["code"]
    assert "['Chart', 'Report']" in code


def test_latin1_with_a_coding_cookie_is_valid_python(report):
    entry = report.file("workflows/latin1_with_coding_cookie.py")
    assert entry.status == "registered", entry.reason


# --- analyze() alone: the screen on bytes, no scan --------------------------------------


@pytest.mark.parametrize("name", sorted(set(MODEL_FILES) - {"models_on_db_from_local_module.py"}))
def test_analyze_flags_in_file_model_definitions(name):
    facts = analyze((FIXTURES / name).read_bytes())
    assert facts.error is None
    assert facts.model is not None and MODEL_FILES[name] in facts.model


def test_analyze_defers_a_db_imported_from_a_local_module_to_the_import_graph():
    facts = analyze((FIXTURES / "models_on_db_from_local_module.py").read_bytes())
    assert facts.model is None
    [use] = facts.external_model_uses
    assert (use.name, use.cls, use.source.module) == ("db", "Order", "dataflow_db_module")


@pytest.mark.parametrize("name", NOT_MODEL_FILES)
def test_analyze_does_not_flag_mentions_or_unrelated_decorators(name):
    facts = analyze((FIXTURES / name).read_bytes())
    assert facts.error is None
    assert facts.model is None
    assert facts.external_model_uses == ()


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from dataflow import DataFlow\n", "line 1"),
        ("import dataflow\n\ndb = dataflow.DataFlow('sqlite:///x.db')\n", "line 3"),
        ("from dataflow import DataFlow as DF\n\n\ndb = DF('sqlite:///x.db')\n", "line 4"),
        (
            "import dataflow as d\n\nstore = d.DataFlow('sqlite:///x.db')\n\n"
            "class A:\n    pass\n\nstore.model(A)\n",
            "A at line 8",
        ),
    ],
    ids=["bare-import", "module-attribute", "class-alias", "package-alias-call-form"],
)
def test_analyze_reports_where_dataflow_is_used(source, expected):
    facts = analyze(source.encode())
    assert facts.model is not None and expected in facts.model


# --- broken files: error with the line, nothing spawned ------------------------------------


@pytest.mark.parametrize("name", sorted(ERROR_FILES))
def test_analyze_alone_reports_broken_files_with_the_line(name):
    facts = analyze((FIXTURES / name).read_bytes())
    assert facts.error is not None
    assert ERROR_FILES[name] in facts.error


def test_nul_byte_error_says_nul():
    facts = analyze((FIXTURES / "contains_nul_bytes.py").read_bytes())
    assert "NUL" in facts.error


def test_latin1_without_cookie_error_says_it_cannot_be_decoded():
    facts = analyze((FIXTURES / "latin1_without_coding_cookie.py").read_bytes())
    assert "utf-8" in facts.error.lower() and "decode" in facts.error.lower()


def _child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_broken_files_are_errors_without_spawning_a_worker(tmp_path):
    place(tmp_path, {f"workflows/{name}": name for name in ERROR_FILES}, FIXTURES)
    cpu_before = _child_cpu_seconds()
    started = time.monotonic()
    report = scan(tmp_path, timeout=2)
    elapsed = time.monotonic() - started
    assert {e.path: e.status for e in report.files} == {
        f"workflows/{name}": "error" for name in ERROR_FILES
    }
    assert "line 4" in report.file("workflows/syntax_error_at_line_4.py").reason
    assert "line 3" in report.file("workflows/latin1_without_coding_cookie.py").reason
    assert "NUL" in report.file("workflows/contains_nul_bytes.py").reason
    # A worker has to import Kailash (well over a second); none was started and reaped.
    assert elapsed < 1.0
    assert _child_cpu_seconds() - cpu_before < 0.05
    assert report.workflows == {}


# --- factory detection ---------------------------------------------------------------------


def test_factory_shapes_fixture_has_exactly_three_factories():
    facts = analyze((FIXTURES / "factory_shapes.py").read_bytes())
    assert facts.factories == ("make_orders", "make_invoices", "make_lambda")


def _factories(source: str) -> tuple[str, ...]:
    return analyze(textwrap.dedent(source).encode()).factories


def test_factories_only_functions_that_return_a_value():
    assert _factories(
        """
        def returns_value():
            return 1

        def returns_nothing():
            print("x")

        def bare_return():
            return

        def returns_none():
            return None

        def conditional(flag=False):
            if flag:
                return 2
        """
    ) == ("returns_value", "conditional")


def test_generators_and_async_functions_are_not_factories():
    assert _factories(
        """
        def gen():
            yield 1
            return 2

        def gen_from():
            yield from range(3)

        async def coro():
            return 1
        """
    ) == ()


def test_returns_in_nested_scopes_do_not_make_a_factory():
    assert _factories(
        """
        def outer():
            def inner():
                return 1
            class Local:
                def method(self):
                    return 2
            helper = lambda: 3
            inner()
        """
    ) == ()


def test_functions_called_under_main_guard_are_excluded():
    assert _factories(
        """
        def main():
            return build()

        def build():
            return 1

        def serve():
            return 2

        if __name__ == "__main__":
            app = serve()
            main()
        """
    ) == ("build",)


def test_functions_defined_only_under_main_guard_are_not_factories():
    assert _factories(
        """
        if __name__ == "__main__":
            def script_only():
                return 1
        """
    ) == ()


def test_module_level_lambdas_and_conditionally_defined_functions_are_factories():
    assert _factories(
        """
        import sys

        make_a = lambda: 1
        make_b, other = (lambda: 2), 3

        try:
            def make_c():
                return 3
        except ImportError:
            pass

        if sys.version_info >= (3, 8):
            def make_d():
                return 4

        def _private():
            return 5

        class Builder:
            def __call__(self):
                return 6
        """
    ) == ("make_a", "make_c", "make_d")


def test_only_functions_callable_without_arguments_are_factories():
    assert _factories(
        """
        def needs_one(data):
            return data

        def keyword_only(*, region):
            return region

        def all_defaults(region="eu", *, retries=3):
            return region

        def variadic(*args, **kwargs):
            return args

        make_lambda = lambda: 1
        scale = lambda value: value * 2
        """
    ) == ("all_defaults", "variadic", "make_lambda")


def test_imported_names_are_never_factories():
    assert _factories(
        """
        from os import getpid, fork
        from sys import exit
        from kailash.runtime.local import LocalRuntime
        import os
        exit_now = exit
        """
    ) == ()


# --- control: the fixtures are real DataFlow model files ----------------------------------


_CONTROL = r"""
import json, runpy, sys
from dataflow import DataFlow
found = {}
for path in sys.argv[1:]:
    ns = runpy.run_path(path)
    if "setup_dataflow_models" in ns:
        dbs = [ns["setup_dataflow_models"]()]
    elif "DataFlowNexusApp" in ns:
        dbs = [ns["DataFlowNexusApp"]().db]
    else:
        dbs = [v for v in ns.values() if isinstance(v, DataFlow)]
    found[path] = sorted(m for db in dbs for m in db.get_models())
print(json.dumps(found))
"""


def test_control_model_fixtures_are_genuine_and_markers_work(tmp_path):
    """Executed on purpose, each model fixture writes its marker and registers its models.

    Without this, "no marker after a scan" would prove nothing.
    """
    place(tmp_path, {name: name for name in MODEL_FILES}, FIXTURES)
    place(tmp_path, {"dataflow_db_module.py": "dataflow_db_module.py"}, FIXTURES)
    paths = [str(tmp_path / name) for name in sorted(MODEL_FILES)]
    proc = subprocess.run(
        [sys.executable, "-c", _CONTROL, *paths],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, cls in MODEL_FILES.items():
        path = tmp_path / name
        assert cls in found[str(path)], (name, found[str(path)])
        pids = runs(path)
        assert len(pids) == 1 and pids[0] != os.getpid()


def test_screen_alone_handles_a_thousand_files_quickly_without_workers(tmp_path):
    """The static stages on 1,000 candidates: seconds at most, no file imported, and no
    process started but the screen's own (they parse, never import)."""
    source = (FIXTURES / "names_generic_and_specific.py").read_bytes()
    (tmp_path / "workflows").mkdir()
    for i in range(1000):
        (tmp_path / "workflows" / f"flow_{i:04}.py").write_bytes(source)
    place(tmp_path, {"workflows/models.py": "models_from_dataflow_import.py"}, FIXTURES)
    started = time.monotonic()
    with started_commands() as processes:
        decided = SmartDiscovery(tmp_path, cache=False).screen()
    elapsed = time.monotonic() - started
    assert [(e.path, e.status) for e in decided] == [("workflows/models.py", "skipped_model")]
    assert elapsed < 10
    assert all("screen_listed" in command for command in processes), processes
    assert not any(tmp_path.rglob("*.ran"))


def test_the_screens_walk_visits_what_ast_walk_does_in_the_same_order():
    """The screen's faster walk only leaves out leaves it never looks at (Load/Store/Del
    markers, operators, ``import`` aliases); first-seen answers (the first dataflow
    import's line) depend on the order."""
    import ast

    unread = (ast.expr_context, ast.boolop, ast.operator, ast.unaryop, ast.cmpop, ast.alias,
              ast.type_ignore)
    for path in sorted((Path(__file__).parent / "fixtures").rglob("*.py")):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        expected = [n for n in ast.walk(tree) if not isinstance(n, unread)]
        assert _walk([tree]) == expected, path


@pytest.mark.parametrize(
    "source",
    [
        "while True:\n    pass\n",
        "import time\ntime.sleep(100)\n",
        "name = input()\n",
        "import uvicorn\nuvicorn.run('app:app')\n",
        "import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()\n",
        "try:\n    import time\n    time.sleep(5)\nexcept ImportError:\n    pass\n",
    ],
)
def test_a_loop_or_blocking_call_at_import_is_flagged_for_early_scheduling(source):
    assert analyze(source.encode()).may_block


@pytest.mark.parametrize(
    "source",
    [
        "import time\n\ndef later():\n    time.sleep(100)\n",
        "if __name__ == '__main__':\n    while True:\n        pass\n",
        "for i in range(3):\n    print(i)\n",
        "from kailash.workflow.builder import WorkflowBuilder\nworkflow = WorkflowBuilder()\n",
    ],
)
def test_waiting_only_in_functions_or_under_the_main_guard_is_not_flagged(source):
    assert not analyze(source.encode()).may_block


def test_code_behind_a_dict_unpacking_or_a_bare_keyword_only_parameter_is_still_screened():
    """``{**x}`` leaves a hole in the dict's keys and ``def f(*, a)`` one in the defaults;
    the walks step over the hole, not over what follows it."""
    source = textwrap.dedent("""
        import importlib

        def build(*, name, size=importlib.import_module("sized").SIZE):
            return name

        settings = {**importlib.import_module("base_settings").VALUES, "debug": True}
        from dataflow import DataFlow
        db = DataFlow()
        extra = {**{"k": 1}, "model": db.model(object)}
    """).encode()
    facts = analyze(source)
    modules = [ref.module for ref in facts.imports]
    assert "sized" in modules and "base_settings" in modules
    assert facts.model is not None


def test_a_file_nested_near_the_recursion_limit_parses_alike_from_any_depth():
    """Building the tree's objects recurses per level against a limit that counts the
    caller's frames: the server, deep in a scan, parses what a shallow read-ahead does."""
    import sys

    from nexus_dataflow_plugin.screen import parse

    source = ("x = " + "+".join(["1"] * 2500) + "\n").encode()  # parses from a shallow stack

    def down(n: int):
        return down(n - 1) if n else parse(source)

    limit = sys.getrecursionlimit()
    shallow, deep = parse(source), down(300)
    assert not isinstance(shallow, str) and not isinstance(deep, str), str(deep)[:80]
    assert sys.getrecursionlimit() == limit  # raised only while the parse ran
