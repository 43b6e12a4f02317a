"""The runtime guard alone, in fresh interpreters (it patches DataFlow process-wide):
constructing DataFlow or registering a model stops before DataFlow acts, the stop
cannot be swallowed into success, the verdict names the chain it saw, and DataFlow's
library modules stay importable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# Installs the guard for the candidate file, runs it, prints what happened as JSON.
HARNESS = """
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
{before}
from nexus_dataflow_plugin import guard
calls = []
{on_stop}
guard.install(on_stop, sys.argv[1])
outcome = "finished"
try:
    exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), {{"__name__": "candidate"}})
except BaseException as exc:
    outcome = type(exc).__name__
from kailash.nodes.base import NodeRegistry
v = guard.verdict()
print(json.dumps({{
    "outcome": outcome,
    "calls": calls,
    "verdict": None if v is None else [v.status, v.detail, [list(s) for s in v.chain]],
    "generated": sorted(n for n, c in NodeRegistry._nodes.items()
                        if "generated" in getattr(c, "__module__", "")),
}}))
"""
RECORD = "def on_stop(verdict):\n    calls.append(verdict.status)\n"


def run(tmp_path: Path, candidate: str, *, before: str = "", on_stop: str = RECORD,
        files: dict[str, str] | None = None) -> tuple[int, dict]:
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    path = tmp_path / "candidate.py"
    path.write_text(textwrap.dedent(candidate))
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS.format(before=before, on_stop=on_stop))
    done = subprocess.run([sys.executable, str(harness), str(path)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120, check=False)
    lines = done.stdout.strip().splitlines()
    if not lines:
        return done.returncode, {"stderr": done.stderr}
    result = json.loads(lines[-1])
    if result["verdict"]:  # the harness's own frame stands where the worker's would
        chain = result["verdict"][2]
        result["verdict"][2] = [s for s in chain if Path(s[0]).name != "harness.py"]
    return done.returncode, result


SWALLOWS = {
    "except Exception": "except Exception:",
    "except ImportError": "except ImportError:",
    "bare except": "except:",
}


def test_constructing_dataflow_stops_before_it_touches_the_database(tmp_path):
    code, result = run(tmp_path, f"""
        from dataflow import DataFlow
        db = DataFlow("sqlite:///{tmp_path / 'app.db'}")
        """)
    assert code == 0, result
    status, detail, chain = result["verdict"]
    assert (status, detail) == ("skipped_model", "construct a DataFlow instance")
    assert chain == [[str(tmp_path / "candidate.py"), "candidate", 3]]
    assert result["calls"] == ["skipped_model"] and result["outcome"] == "GuardStop"
    assert not (tmp_path / "app.db").exists()
    assert result["generated"] == []


def test_user_code_cannot_swallow_the_stop_into_success(tmp_path):
    for label, handler in SWALLOWS.items():
        attempt = (
            "try:\n"
            "    importlib.import_module('data' + 'flow').DataFlow('sqlite:///{db}')\n"
            f"{handler}\n"
            "    pass\n"
        )
        source = "import importlib\n" + attempt.format(db=tmp_path / "x.db") + (
            attempt.format(db=tmp_path / "y.db"))
        code, result = run(tmp_path, source)
        assert code == 0, (label, result)
        # ``except Exception`` / ``except ImportError`` let GuardStop through; a bare
        # except swallows it, but the verdict stands and a second attempt stops too.
        assert result["verdict"][0] == "skipped_model", label
        assert result["calls"] == ["skipped_model"], label
        assert result["outcome"] == ("finished" if label == "bare except" else "GuardStop")
        assert not list(tmp_path.glob("*.db")), label


def test_an_on_stop_that_ends_the_process_ends_the_file_there(tmp_path):
    code, result = run(tmp_path, """
        try:
            from dataflow import DataFlow
            DataFlow("sqlite:///never.db")
        except:
            pass
        open("after.txt", "w").write("ran on")
        """, on_stop="def on_stop(verdict):\n    os._exit(17)\n")
    assert code == 17
    assert not (tmp_path / "after.txt").exists() and not (tmp_path / "never.db").exists()


def test_a_module_the_file_imports_makes_it_dependent_with_the_chain(tmp_path):
    code, result = run(tmp_path, """
        import importlib
        plugin = "store" + "_models"
        importlib.import_module(plugin)
        """, files={"store_models.py": """
        from dataflow import DataFlow

        def make():
            return DataFlow("sqlite:///store.db")

        db = make()
        """})
    status, _, chain = result["verdict"]
    assert status == "skipped_dependent"
    # The candidate's line that imports, then the line that called DataFlow (in make()).
    assert [(Path(f).name, m, line) for f, m, line in chain] == [
        ("candidate.py", "candidate", 4), ("store_models.py", "store_models", 5)]


def test_registering_a_model_on_an_existing_instance_is_stopped(tmp_path):
    before = f"from dataflow import DataFlow\nEARLY = DataFlow('sqlite:///{tmp_path / 'early.db'}')"
    code, result = run(tmp_path, """
        import __main__

        class Widget:
            name: str

        __main__.EARLY.model(Widget)
        """, before=before)
    status, detail, _ = result["verdict"]
    assert status == "skipped_model" and detail == "register the DataFlow model Widget"
    assert result["generated"] == []


def test_the_guard_works_when_dataflow_was_imported_before_it(tmp_path):
    code, result = run(tmp_path, """
        from dataflow import DataFlow
        DataFlow("sqlite:///late.db")
        """, before="import dataflow")
    assert result["verdict"][0] == "skipped_model"
    assert not (tmp_path / "late.db").exists()


def test_dataflow_library_modules_still_import_for_their_node_classes(tmp_path):
    code, result = run(tmp_path, """
        from dataflow.nodes.aggregate_operations import AggregateNode
        from dataflow.core.engine import DataFlow
        NAMES = (AggregateNode.__name__, DataFlow.__name__)
        """)
    assert code == 0 and result["outcome"] == "finished", result
    assert result["verdict"] is None and result["calls"] == []


def test_a_thread_an_earlier_file_left_running_is_stopped_without_deciding_the_next_file(
    tmp_path,
):
    (tmp_path / "first.py").write_text("# starts the thread\n")
    (tmp_path / "second.py").write_text("# innocent\n")
    script = tmp_path / "two_files.py"
    script.write_text(textwrap.dedent(f"""
        import json, threading
        from nexus_dataflow_plugin import guard
        calls, seen = [], []
        go = threading.Event()

        def late():
            go.wait()
            try:
                from dataflow import DataFlow
                DataFlow("sqlite:///{tmp_path / 'late.db'}")
            except BaseException as exc:
                seen.append(type(exc).__name__)

        guard.install(calls.append, {str(tmp_path / "first.py")!r})
        thread = threading.Thread(target=late)
        thread.start()
        guard.install(calls.append, {str(tmp_path / "second.py")!r})
        go.set()
        thread.join()
        print(json.dumps({{"calls": len(calls), "verdict": guard.verdict() is not None,
                          "seen": seen}}))
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "calls": 0, "verdict": False, "seen": ["GuardStop"]}
    assert not (tmp_path / "late.db").exists()
