"""Project trees for the benchmarks, generated deterministically.

Each generator writes files under ``root`` and returns a ``Tree``: where it
is, and the workflow names native discovery should find there (computed from
what was written, so the benchmark can check both implementations against it).

- ``seed_tree``: the seed document's app: ``workflows/dataflow_models.py`` (a
  SQLite ``DataFlow`` with ``User`` and ``Session`` models), a handful of plain
  workflow files beside it, and ``app.py`` (not a discovered file) that builds
  the Nexus app, imports the models and registers two CRUD workflows by hand.
- ``mixed_tree``: ``n`` files in ``workflows/``: half DataFlow model files
  (``DataFlow("sqlite:///<dbs>/mN.db")`` and one or two ``@db.model`` classes),
  half plain workflow files of 2 to 5 ``PythonCodeNode`` nodes with connections.
- ``workflows_tree``: ``n`` plain workflow files, no models.
- ``builders_tree``: ``n`` workflow files that build with a loop over their steps and
  a helper function for each node's code, as people write them: no declaration the
  server can read as data, so each runs in a process of its own.
- ``add_hostile``: files that hang at import (sleep, busy loop, a busy loop
  that ignores SIGALRM).
- ``screen_tree``: ``n`` files for the static screen alone (the mixed kinds).
- ``add_app``: ``app.py`` building a plain Nexus app (stock, the plugin, or the
  plugin starting from a manifest), for timing ``start()`` on any tree.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

WORKFLOWS_DIR = "workflows"


@dataclass
class Tree:
    root: Path
    expected: set[str] = field(default_factory=set)
    files: int = 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _nodes(rng: random.Random, var: str, indent: str) -> list[str]:
    """Lines adding 2 to 5 connected PythonCodeNodes to builder ``var``."""
    count = rng.randint(2, 5)
    lines = [
        f'{indent}{var}.add_node("PythonCodeNode", "step0", '
        f'{{"code": "result = {{\\"value\\": {rng.randint(1, 99)}}}"}})'
    ]
    for i in range(1, count):
        lines.append(
            f'{indent}{var}.add_node("PythonCodeNode", "step{i}", '
            f'{{"code": "result = {{\\"value\\": data[\\"value\\"] + {i}}}"}})'
        )
        lines.append(f'{indent}{var}.add_connection("step{i - 1}", "result", "step{i}", "data")')
    return lines


def workflow_source(rng: random.Random, stem: str) -> tuple[str, set[str]]:
    """A plain workflow file in one of four common styles, and the names it yields."""
    style = rng.randrange(4)
    head = [f'"""Workflow file {stem} (generated)."""', "",
            "from kailash.workflow.builder import WorkflowBuilder", ""]
    if style == 0:  # a built workflow at module level
        body = ["builder = WorkflowBuilder()", *_nodes(rng, "builder", ""),
                "workflow = builder.build()"]
        # `builder` is a generic name too: both map to the stem.
        names = {stem}
    elif style == 1:  # a factory function
        body = ["", "def build_pipeline():", "    b = WorkflowBuilder()",
                *_nodes(rng, "b", "    "), "    return b.build()"]
        names = {f"{stem}.build_pipeline"}
    elif style == 2:  # an unbuilt builder at module level
        body = ["wf = WorkflowBuilder()", *_nodes(rng, "wf", "")]
        names = {stem}
    else:  # two workflows: a module-level one and a factory
        body = ["", "def make_report():", "    b = WorkflowBuilder()",
                *_nodes(rng, "b", "    "), "    return b.build()", "",
                "ingest = WorkflowBuilder()", *_nodes(rng, "ingest", ""),
                "ingest_workflow = ingest.build()"]
        names = {f"{stem}.make_report", f"{stem}.ingest", f"{stem}.ingest_workflow"}
    return "\n".join(head + body) + "\n", names


FIELDS = [("name", "str"), ("email", "str"), ("total", "float"), ("active", "bool"),
          ("count", "int"), ("note", "str"), ("created_at", "str")]


def model_source(rng: random.Random, index: int, db_dir: Path) -> str:
    """A DataFlow model file: one SQLite instance, one or two ``@db.model`` classes."""
    lines = [f'"""DataFlow models, shard {index} (generated)."""', "",
             "from typing import Optional", "", "from dataflow import DataFlow", "",
             f'db = DataFlow("sqlite:///{db_dir}/m{index}.db")']
    for kind in ("Customer", "Invoice")[: rng.randint(1, 2)]:
        lines += ["", "", "@db.model", f"class {kind}{index:05d}:", "    id: int"]
        for name, typ in rng.sample(FIELDS, rng.randint(2, 5)):
            lines.append(f"    {name}: {typ}")
        lines.append("    label: Optional[str] = None")
    return "\n".join(lines) + "\n"


def mixed_tree(root: Path, n: int, db_dir: Path, seed: int = 1) -> Tree:
    """``n`` files in workflows/: half DataFlow model files, half plain workflows."""
    rng = random.Random(seed)
    tree = Tree(root)
    db_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i % 2 == 0:
            _write(root / WORKFLOWS_DIR / f"models_{i:05d}.py", model_source(rng, i, db_dir))
        else:
            stem = f"flow_{i:05d}"
            text, names = workflow_source(rng, stem)
            _write(root / WORKFLOWS_DIR / f"{stem}.py", text)
            tree.expected |= names
        tree.files += 1
    return tree


def _workflow_files(root: Path, n: int, seed: int, prefix: str,
                    source: Callable[[random.Random, str], tuple[str, set[str]]]) -> Tree:
    """``n`` files ``source`` writes in workflows/, named ``<prefix>_00000.py`` on."""
    rng = random.Random(seed)
    tree = Tree(root)
    for i in range(n):
        stem = f"{prefix}_{i:05d}"
        text, names = source(rng, stem)
        _write(root / WORKFLOWS_DIR / f"{stem}.py", text)
        tree.expected |= names
        tree.files += 1
    return tree


def workflows_tree(root: Path, n: int, seed: int = 2) -> Tree:
    """``n`` plain workflow files in workflows/, no models."""
    return _workflow_files(root, n, seed, "flow", workflow_source)


def builder_source(rng: random.Random, stem: str) -> tuple[str, set[str]]:
    """A workflow file that computes its nodes (a loop, a helper, an f-string), in a
    factory or at module level, and the names it yields."""
    steps = rng.randint(2, 6)
    head = [f'"""Workflow file {stem} (generated): steps built in a loop."""', "",
            "from kailash.workflow.builder import WorkflowBuilder", "",
            f'STEPS = [f"step{{k}}" for k in range({steps})]', "", "",
            "def _code(k: int) -> str:",
            f'    return f"result = {{{{\'value\': {{k}} + {rng.randint(1, 99)}}}}}"', "", ""]
    loop = ["for k, step in enumerate(STEPS):",
            '    BUILDER.add_node("PythonCodeNode", step, {"code": _code(k)})',
            "for a, b in zip(STEPS, STEPS[1:]):",
            '    BUILDER.add_connection(a, "result", b, "data")']
    if rng.randrange(2):
        body = ["def build_pipeline():", "    BUILDER = WorkflowBuilder()",
                *("    " + line for line in loop), "    return BUILDER.build()"]
        names = {f"{stem}.build_pipeline"}
    else:
        body = ["BUILDER = WorkflowBuilder()", *loop, "workflow = BUILDER.build()"]
        names = {stem}
    return "\n".join(head + body) + "\n", names


def builders_tree(root: Path, n: int, seed: int = 3) -> Tree:
    """``n`` workflow files that compute their nodes, in workflows/, no models."""
    return _workflow_files(root, n, seed, "built", builder_source)


HOSTILE = {
    "hang_sleep.py": "import time\n\ntime.sleep(10**6)\n",
    "hang_loop.py": "while True:\n    pass\n",
    "hang_deaf.py": (
        "import signal\n\n"
        "# ignores the worker's inner alarm: only the parent's kill ends it\n"
        "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "while True:\n    pass\n"
    ),
}


def add_hostile(tree: Tree) -> Tree:
    """Three files that hang at import; they yield no workflow names."""
    for name, text in HOSTILE.items():
        _write(tree.root / WORKFLOWS_DIR / name, text)
        tree.files += 1
    return tree


SEED_MODELS = '''"""The seed document's models: User and Session (SQLite here)."""

from typing import Optional

from dataflow import DataFlow

db = DataFlow("sqlite:///{db}")


@db.model
class User:
    id: str
    email: str
    full_name: Optional[str] = None
    created_at: str
    active: bool = True


@db.model
class Session:
    id: str
    user_id: str
    token: str
    created_at: str
    expires_at: str
'''

SEED_APP = '''"""The seed document's app, with discovery options from the environment.

BENCH_AUTO_DISCOVERY=1 turns auto_discovery on; BENCH_PLUGIN=1 installs the
DataFlowCompatiblePlugin. ``build()`` returns the app, ready for ``start()``.
"""

import os

from kailash.workflow.builder import WorkflowBuilder
from nexus import Nexus


def build():
    auto = os.environ.get("BENCH_AUTO_DISCOVERY") == "1"
    app = Nexus(api_port=8002, mcp_port=3001, auto_discovery=auto, enable_durability=False)
    if os.environ.get("BENCH_PLUGIN") == "1":
        from nexus_dataflow_plugin import DataFlowCompatiblePlugin

        app.add_plugin(DataFlowCompatiblePlugin())

    # The models, imported after Nexus as the seed document recommends.
    from workflows.dataflow_models import db  # noqa: F401

    user_create = WorkflowBuilder()
    user_create.add_node("UserCreateNode", "create",
                         {{"email": "{{{{email}}}}", "full_name": "{{{{full_name}}}}"}})
    app.register("create_user", user_create.build())
    session_create = WorkflowBuilder()
    session_create.add_node("SessionCreateNode", "create",
                            {{"user_id": "{{{{user_id}}}}", "token": "{{{{token}}}}"}})
    app.register("create_session", session_create.build())
    return app
'''


PLAIN_APP = '''"""A Nexus app for a generated tree, with discovery options from the environment.

BENCH_AUTO_DISCOVERY=1 turns auto_discovery on; BENCH_PLUGIN=1 installs the
DataFlowCompatiblePlugin, starting from the manifest BENCH_MANIFEST when it is set.
"""

import os

from nexus import Nexus


def build():
    auto = os.environ.get("BENCH_AUTO_DISCOVERY") == "1"
    app = Nexus(api_port=8002, mcp_port=3001, auto_discovery=auto, enable_durability=False)
    if os.environ.get("BENCH_PLUGIN") == "1":
        from nexus_dataflow_plugin import DataFlowCompatiblePlugin

        app.add_plugin(DataFlowCompatiblePlugin(manifest=os.environ.get("BENCH_MANIFEST")))
    return app
'''


def add_app(tree: Tree) -> Tree:
    """``app.py`` (not a discovered file) that builds a plain Nexus app for ``tree``."""
    _write(tree.root / "app.py", PLAIN_APP)
    return tree


def seed_tree(root: Path, db_dir: Path, seed: int = 3) -> Tree:
    """The seed app: a model file in workflows/, five plain workflow files, app.py."""
    rng = random.Random(seed)
    tree = Tree(root)
    db_dir.mkdir(parents=True, exist_ok=True)
    _write(root / WORKFLOWS_DIR / "__init__.py", "")
    _write(root / WORKFLOWS_DIR / "dataflow_models.py", SEED_MODELS.format(db=db_dir / "seed.db"))
    tree.files += 1
    for stem in ("health_check", "user_report", "session_cleanup", "welcome_email",
                 "audit_export"):
        text, names = workflow_source(rng, stem)
        _write(root / WORKFLOWS_DIR / f"{stem}.py", text)
        tree.expected |= names
        tree.files += 1
    _write(root / "app.py", SEED_APP.format())
    return tree


def screen_tree(root: Path, n: int, db_dir: Path, seed: int = 4) -> Tree:
    """``n`` files of the mixed kinds, for the static screen alone."""
    return mixed_tree(root, n, db_dir, seed=seed)


def wipe_bytecode(root: Path) -> None:
    """Remove every ``__pycache__`` under ``root`` (a cold import compiles again)."""
    for cache in root.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
