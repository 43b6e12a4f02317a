"""Stage 3a, files read as data (``declarative.py``): a file that only declares
workflows gives, without a process, exactly what running it in a worker gives;
anything else still runs in a process of its own, which reports it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import scan
from kailash.nodes.base import Node, NodeRegistry

from nexus_dataflow_plugin import declarative
from nexus_dataflow_plugin import report as r
from nexus_dataflow_plugin.isolation import WorkerPool
from nexus_dataflow_plugin.screen import parse

FIXTURES = Path(__file__).parent / "fixtures" / "declarative"
DECLARATIVE = sorted((FIXTURES / "reads_as_data").glob("*.py"))
READ = r.MSG_READ.split(";")[0]
IMPORTED = r.MSG_REGISTERED.split(";")[0]


def _tree(base: Path, files: list[Path], *, suffix: str = "") -> Path:
    (base / "workflows").mkdir(parents=True)
    for source in files:
        (base / "workflows" / source.name).write_text(source.read_text() + suffix)
    return base


def _shape(workflow) -> tuple:
    """What a workflow is, without its random id: its nodes' types and configs, its
    connections, its metadata."""
    data = workflow.to_dict()
    nodes = {n: (v["node_type"], v["config"]) for n, v in data["nodes"].items()}
    connections = sorted(tuple(sorted(c.items())) for c in data["connections"])
    return data["name"][:9], data.get("description"), nodes, connections


def _comprehensions(levels: int) -> str:
    """A list comprehension whose item is one, ``levels`` deep."""
    text = "0"
    for level in range(levels):
        text = f"[{text} for i{level} in range(1)]"
    return text


def test_a_declarative_file_gives_what_its_worker_gives_without_a_process(tmp_path, monkeypatch):
    """Each shape the reader replays, against the same file with ``import os`` appended
    (no longer declarative: it runs in a worker): the same names, the same workflows."""
    imported = scan(_tree(tmp_path / "run", DECLARATIVE, suffix="\nimport os\n"))
    monkeypatch.setattr(WorkerPool, "start", lambda *a, **k: pytest.fail("a worker started"))
    read = scan(_tree(tmp_path / "read", DECLARATIVE))

    assert all(f.status == r.REGISTERED and f.reason.startswith(READ) for f in read.files)
    assert all(f.reason.startswith(IMPORTED) for f in imported.files)
    assert sorted(read.workflows) == sorted(imported.workflows) == [
        "comprehensions_dicts_and_slices.etl", "comprehensions_dicts_and_slices.make_labelled",
        "factories_aliases_and_a_guard.also_report",
        "factories_aliases_and_a_guard.extend_pipeline",
        "factories_aliases_and_a_guard.make_report",
        "factories_aliases_and_a_guard.pipeline",
        "module_builder_then_built", "steps_built_in_loops_with_helpers.build_reverse",
        "steps_built_in_loops_with_helpers.built", "steps_built_in_loops_with_helpers.pipeline",
        "two_connections_between_one_pair", "unbuilt_builder",
    ]
    for name, workflow in read.workflows.items():
        assert _shape(workflow) == _shape(imported.workflows[name]), name
    # Native order and semantics: `workflow` (built before the last node) wins the stem;
    # the factory that extends the module-level builder ran after `pipeline` was built.
    assert list(read.workflows["module_builder_then_built"].nodes) == ["first"]
    assert "late" not in read.workflows["factories_aliases_and_a_guard.pipeline"].nodes
    assert "late" in read.workflows["factories_aliases_and_a_guard.extend_pipeline"].nodes
    assert read.workflows["factories_aliases_and_a_guard.make_report"].name == "report"


@pytest.mark.parametrize("fixture, status, says", [
    ("calls_print_at_import.py", r.REGISTERED, IMPORTED),
    ("uses_a_node_type_that_may_act_when_built.py", r.REGISTERED, IMPORTED),
    ("adds_a_node_id_twice.py", r.ERROR, "Raised WorkflowValidationError while importing (line 5)"),
    ("multiplies_one_string_into_megabytes.py", r.REGISTERED, IMPORTED),
])
def test_a_file_the_reader_does_not_replay_runs_in_its_own_process(tmp_path, fixture, status,
                                                                   says):
    """A call, a node type that may act when built, a replay that raises (its process
    reports where), builder calls past the budget: the worker's outcome, as before."""
    entry = scan(_tree(tmp_path, [FIXTURES / fixture])).files[0]
    assert (entry.status, entry.reason.startswith(says)) == (status, True), entry.reason


def test_code_the_compiler_crashes_on_is_compiled_only_in_the_files_process(tmp_path):
    """CPython 3.12.1 and 3.13.0 crash compiling list comprehensions nested 25 deep,
    here under a ``__main__`` guard the reader would compile to check: the scan goes
    on, and the file ends as its own process's compile makes it end on this Python."""
    import subprocess
    import sys

    fixture = FIXTURES / "crashes_the_compiler_with_nested_comprehensions.py"
    compiled = subprocess.run([sys.executable, "-c", "import sys; compile(open(sys.argv[1])"
                               ".read(), 'f', 'exec')", str(fixture)], timeout=60)
    report = scan(_tree(tmp_path, [fixture, DECLARATIVE[0]]))
    entry = {f.path: f for f in report.files}[f"workflows/{fixture.name}"]
    if compiled.returncode == 0:
        assert (entry.status, entry.reason.startswith(IMPORTED)) == (r.REGISTERED, True)
    else:
        assert entry.status == r.CRASHED, entry.reason
    assert any(f.reason.startswith(READ) for f in report.files), "the other file"


@pytest.mark.parametrize("source", [
    "import os\n",
    "b.nodes\n",
    "b.add_node('PythonCodeNode', 'n', {'code': 'x', 'pair': (1, 2)})\n",
    "b.add_node('PythonCodeNode', 'n', {'code': 'x', **{}})\n",
    "b.add_node('PythonCodeNode', 'n', {'code': 'x', 'more': cfg})\n",  # a dict in a literal
    "b.add_node('PythonCodeNode', 'n', code='x')\n",
    "b.add_node('PythonCodeNode', 'n', {'code': 'x', 'b': b'bytes'})\n",
    "b.add_node('PythonCodeNode', 'n', {'code': 'x', 1: 'int key'})\n",
    "b.add_node(WorkflowBuilder, 'n', {})\n",
    "b.set_workflow_parameters(x=1)\n",
    "x = undefined_name\n",
    "@staticmethod\ndef f():\n    return b\n",
    "if True:\n    pass\n",
    "class Pipeline:\n    pass\n",
    "make = lambda: b\n",
    "b.build(name=['not', 'a', 'scalar'])\n",
    "x = " + "[" * 40 + "]" * 40 + "\n",
    # loops, comprehensions and functions outside the forms read replays,
    "for i in range(3):\n    break\n",
    "for i in range(3):\n    pass\nelse:\n    pass\n",
    "for i in range(3):\n    if i:\n        pass\n",
    "x = [i for i in range(3) if i]\n",
    "x = [i for i in range(3) for j in range(2)]\n",
    "x = range(3)\n",  # an iterator outside a loop
    "e = enumerate([1])\nfor i in e:\n    pass\n",
    "for i in range(2.0):\n    pass\n",
    "for a, b2 in [(1, 2, 3)]:\n    pass\n",
    "for a, *rest in [(1, 2, 3)]:\n    pass\n",
    "def f(k=1):\n    return b\n",
    "def f(*args):\n    return b\n",
    "def f(k, k):\n    return k\n",
    "def f(k: Undefined):\n    return k\n",  # a NameError as the def runs
    "def f(k: b):\n    return k\nx = f(1)\n",  # a builder is no type
    "def f(k: List[int]):\n    return k\n",  # typing's List, not imported
    "def f(k: len[int]):\n    return k\n",
    "from typing import Dict\ndef f(k: Dict[int]):\n    return k\n",  # too few: TypeError
    "def f(k):\n    return k\nx = f(k=1)\n",
    "def f():\n    return b\nx = f(1)\n",
    "def f():\n    for i in range(2):\n        return b\n",
    "def f(k):\n    x = y\n    y = 1\n    return x\nz = f(1)\n",  # UnboundLocalError
    "x = 1\ndef f(k):\n    x = x + 1\n    return x\nz = f(1)\n",
    "x = [i for i in range(2)]\ny = i\n",  # a comprehension's variable stays in it
    "x = True + 1\n",
    "x = 0x" + "f" * 16 + "\n",  # an int past 64 bits
    "x = 9223372036854775807 + 1\n",
    "x = 'a' * 3\n",
    "x = 2 ** 8\n",
    "x = 'a' + 1\n",
    "x = f'{[1]}'\n",
    "x = f'{1:{5}}'\n",
    "x = [1, 2][True]\n",
    "x = {'a': 1}[0]\n",
    "x = 'abc'[::0]\n",
    "x = len(3)\n",
    "x = str([1])\n",
    "x = str(1, 2)\n",
    "for k in {'a': 1}.get('a'):\n    pass\n",
    # a tuple in a node's config (a list once it is data, as the worker sends it),
    "b.add_node('PythonCodeNode', 'n', {'code': ('a', 1), 'max_code_lines': 0})\n",
    # code that never runs but changes what a function is (found by the attack run):
    "def make():\n    c = WorkflowBuilder()\n    for i in []:\n        yield\n    return c\n"
    "w = make()\n",
    "x = 'g'\ndef make():\n    c = WorkflowBuilder()\n    c.add_node('PythonCodeNode', x, cfg)\n"
    "    for i in []:\n        x, y = 1, 2\n    return c\nw = make()\n",
    "x = 'g'\ndef make():\n    c = WorkflowBuilder()\n    c.add_node('PythonCodeNode', x, cfg)\n"
    "    for i in []:\n        print(x := 1)\n    return c\nw = make()\n",
    "def make():\n    for i in []:\n        global b\n    b = WorkflowBuilder()\n    return b\n"
    "w = make()\n",
    "def make():\n    f = lambda: 1\n    return b\nw = make()\n",
    "T = 'n'\ndef make[T]():\n    return T\nx = make()\n",  # 3.12's type parameters
    # a loop target unpacking deeper than the reader goes (its stack would decide),
    "l = 'a'\nfor i in range(20):\n    l = [l]\nfor " + "[" * 20 + "x" + "]" * 20 + " in [l]:\n"
    "    pass\n",
    # comprehensions nested past what CPython 3.12.1 and 3.13.0 compile without crashing,
    # in code only compiled (a __main__ guard),
    "if __name__ == '__main__':\n    x = " + _comprehensions(21) + "\n",
    # code only compiled that costs the compiler more than its size (a second attack run:
    # a match of 9,000 captures took 23 to 30 s and 5 to 10 GB), or is large,
    "if __name__ == '__main__':\n    match x:\n        case [a1, a2]:\n            pass\n",
    "if __name__ == '__main__':\n    x = [" + "1, " * 4000 + "]\n",
    # a build or an encoding costing more than a node's worth: code of 30,000 lines
    # built 380 times, a config of 3,700 dicts under 200 names,
    "b.add_node('PythonCodeNode', 'n', {'code': '" + "a\\n" * 30000 + "'})\n"
    + "for i in range(380):\n    w = b.build()\n",
    "b.add_node('PythonCodeNode', 'n', {'code': {" + ", ".join(f"'k{i}': {{}}" for i in range(3700))
    + "}, 'max_code_lines': 0})\n" + " = ".join(f"a{i}" for i in range(200)) + " = b\n",
    # an annotation nested deeper than the reader goes (typing recurses over it too),
    "from typing import List\ndef f(k: " + "List[" * 40 + "int" + "]" * 40 + "):\n    return k\n",
    # and work past the budget or nesting past the bounds, whatever the code does.
    "for i in range(100000):\n    pass\n",
    "for i in range(300):\n    for j in range(300):\n        pass\n",
    "s = 'x'\nfor i in range(40):\n    s = s + s\n",
    "s = [0]\nfor i in range(40):\n    s = s + s\n",
    "def f(k):\n    return f(k)\nx = f(1)\n",
    "def f(k):\n    return g(k)\ndef g(k):\n    return f(k)\nx = f(1)\n",
    "x = f'{1:>99999}'\n",
    "x = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[i for i in range(2)]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
    "".join("    " * i + f"for i{i} in range(1):\n" for i in range(40)) + "    " * 40 + "pass\n",
    # Found by an attack run: what only the compiler refuses (the worker's SyntaxError),
    "w = b.build(name='x', name='y')\n",
    "w = b.build(__debug__=1)\n",
    "from __future__ import annotations\n",  # not the first statement
    "__debug__ = 1\n",
    # a rebound __name__ running the guard, text the protocol cannot carry,
    "__name__ = '__main__'\nif __name__ == '__main__':\n    pass\n",
    "b.add_node('PythonCodeNode', 'n', {'code': 'x = \"\\ud800\"'})\n",
    # a build repeated, or a builder under many names (each built by the probe),
    "b.add_node('PythonCodeNode', 'n', cfg)\n" + "w = b.build()\n" * 600,
    "".join(f"b.add_node('PythonCodeNode', 'n{i}', cfg)\n" for i in range(20))
    + "".join(f"alias{i} = b\n" for i in range(40)),

    # config keys a node turns into loggers or warnings at every build, long names,
    "b.add_node('PythonCodeNode', 'n', {'code': 'x', '_node_id': 'leak'})\n",
    "b.add_node('PythonCodeNode', 'n', {'code': 'x', 'sandbox_mode': 'trusted'})\n",
    "b.add_node('PythonCodeNode', '" + "n" * 300 + "', cfg)\n",
    # code the replay skips must compile too (a guard, a function never called),
    "if __name__ == '__main__':\n    return 5\n",
    "if __name__ == '__main__':\n    nonlocal x\n",
    "def helper():\n    x = await b\n",
    "def helper():\n    __debug__ = 1\n",
    # a built workflow under thousands of names (each encoded and registered),
    "b.add_node('PythonCodeNode', 'n', cfg)\nw = b.build()\n"
    + " = ".join(f"a{i}" for i in range(3000)) + " = w\n",
    # connections checked pairwise at each build,
    "b.add_node('PythonCodeNode', 'a', cfg)\nb.add_node('PythonCodeNode', 'z', cfg)\n"
    "b.connect('a', 'z', {" + ", ".join(f"'o{i}': 'x'" for i in range(900)) + "})\n"
    + "w = b.build()\n" * 3,
    # and a mapping whose connections are each checked against all before them.
    "b.add_node('PythonCodeNode', 'a', cfg)\nb.add_node('PythonCodeNode', 'z', cfg)\n"
    "b.connect('a', 'z', mapping={" + ", ".join(f"'o{i}': 'i{i}'" for i in range(1001)) + "})\n",
])
def test_the_reader_declines_anything_outside_its_language(source):
    """Each of these either needs its process to say what it does, or is past a bound."""
    head = ("from kailash.workflow.builder import WorkflowBuilder\n"
            "b = WorkflowBuilder()\ncfg = {'code': 'result = {}'}\n")
    assert declarative.read(parse((head + source).encode()), "/p/workflows/f.py", "f", ("f",),
                            max_nodes=2000, max_bytes=16 << 20, project_root="/p") is None
    assert declarative.read(parse(head.encode()), "/p/workflows/f.py", "f", (), max_nodes=2000,
                            max_bytes=16 << 20, project_root="/p") is not None


_HEAD = "from kailash.workflow.builder import WorkflowBuilder\n"


def _read_and_run(source: str) -> tuple[dict, dict]:
    """The shapes of a source's workflows read as data, and run for real (compiled and
    executed here, then probed as its worker probes it)."""
    from nexus_dataflow_plugin.probe import probe
    from nexus_dataflow_plugin.screen import analyze_tree

    data = (_HEAD + source).encode()
    tree = parse(data)
    factories = analyze_tree(data, tree).factories
    read = declarative.read(tree, "/p/workflows/f.py", "f", factories, max_nodes=2000,
                            max_bytes=16 << 20, project_root="/p")
    assert read is not None, "not read as data"
    namespace = {"__name__": "f"}
    exec(compile(data, "/p/workflows/f.py", "exec"), namespace)
    ran = probe(namespace, "/p/workflows/f.py", factories)
    assert not ran.failures
    return ({k: _shape(w) for k, w in read.workflows.items()},
            {k: _shape(w) for k, w in ran.workflows.items()})


@pytest.mark.parametrize("source", [
    # loops over each kind, their variables left in the module as Python leaves them
    "b = WorkflowBuilder()\nfor i in range(3):\n    b.add_node('PythonCodeNode', f'n{i}', "
    "{'code': 'result = {}'})\nlast = i\n",
    "b = WorkflowBuilder()\nfor k, v in {'x': 'a = 1', 'y': 'a = 2'}.items():\n"
    "    b.add_node('PythonCodeNode', k + '_' + str(len(v)), {'code': v})\n",
    "b = WorkflowBuilder()\nfor c in 'ab':\n    b.add_node('PythonCodeNode', c, {'code': c})\n"
    "for k in {'p': 1, 'q': 2}:\n    b.add_node('PythonCodeNode', k, {'code': k})\n",
    "b = WorkflowBuilder()\nfor (i, (x, y)) in enumerate(zip('ab', range(10, 12)), -1):\n"
    "    b.add_node('PythonCodeNode', f'{x}{i}{y}', {'code': f'{i!r}{x!r}{y:>4}'})\n",
    "b = WorkflowBuilder()\nfor i in range(2):\n    for j in range(i, 3):\n"
    "        b.add_node('PythonCodeNode', f'{i}-{j}', {'code': str(i - j)})\n",
    # a loop variable holding a builder is a builder the probe finds, as in Python
    "B = WorkflowBuilder()\nC = WorkflowBuilder()\nfor b in (B, C):\n"
    "    b.add_node('PythonCodeNode', 'n', {'code': 'x'})\n",
    # functions: parameters, locals, globals read late, a builder passed and returned
    "N = 2\ndef code(k):\n    text = f'result = {k + N}'\n    return text\nN = 5\n"
    "b = WorkflowBuilder()\nb.add_node('PythonCodeNode', 'n', {'code': code(1)})\n",
    "def fill(builder, names):\n    for n in names:\n        builder.add_node('PythonCodeNode', "
    "n, {'code': n})\n    return builder\ndef make():\n    return fill(WorkflowBuilder(), "
    "['a', 'b']).build()\nalso = fill(WorkflowBuilder(), ['c'])\n",
    "def name(i: int) -> str:\n    return 'n' + str(i)\ndef make():\n    b = WorkflowBuilder()\n"
    "    for i in range(2):\n        b.add_node('PythonCodeNode', name(i), {'code': name(-i)})\n"
    "    b.add_connection(name(0), 'result', name(1), 'data')\n    return b.build()\n",
    # comprehensions see the enclosing function's names; their own stay inside
    "def make():\n    pre = 'p'\n    names = [pre + str(i) for i in range(3)]\n"
    "    b = WorkflowBuilder()\n    for n in names[::-1]:\n        b.add_node('PythonCodeNode', "
    "n, {'code': n})\n    return b.build()\n",
    "i = 'outer'\nx = [i + 'x' for i in ['a']]\nb = WorkflowBuilder()\n"
    "b.add_node('PythonCodeNode', i, {'code': x[0]})\n",
    # f-strings, numbers, slices, indexes
    "b = WorkflowBuilder()\nb.add_node('PythonCodeNode', f'{1.5!s}|{True}|{None}|{-2:+05d}', "
    "{'code': f'{2.25:.1f} {7:x} {0.5:%} {\"q\"!r} {\"é\"!a} {3=}'})\n",
    "L = ['a', 'b', 'c', 'd']\nb = WorkflowBuilder()\nfor n in L[1:3] + L[:1] + L[3::5]:\n"
    "    b.add_node('PythonCodeNode', n + L[-1], {'code': str((1, 2)[-1]) + 'abc'[1:]})\n",
    "b = WorkflowBuilder()\nb.add_node('PythonCodeNode', 'n', {'code': str(0.1 + 0.2 - 1)})\n",
    "b = WorkflowBuilder()\nb.add_node('PythonCodeNode', 'n', {'code': 'x', 'description': "
    "str(len({'a': 1, 'b': 2}))})\n",
    # annotations evaluated as the def runs, over builtin, typing and Kailash types
    "from typing import Any, Dict, Optional\nfrom kailash.workflow import Workflow\n"
    "def name(k: Dict[str, Any], n: int | None, s: 'later', t: list[tuple[int, ...]]) "
    "-> Optional[Workflow]:\n    return 'n' + str(n)\nb = WorkflowBuilder()\n"
    "b.add_node('PythonCodeNode', name({}, 1, 2, 3), {'code': 'x'})\n",
    # builtins a file redefines are its own
    "def len(x):\n    return 'mine'\nb = WorkflowBuilder()\nb.add_node('PythonCodeNode', "
    "len([]), {'code': 'x'})\n",
])
def test_code_that_computes_builder_calls_reads_as_running_it_would_give(source):
    read, ran = _read_and_run(source)
    assert read == ran


_DOUBLED = "s = 'é'\nfor i in range(16):\n    s = s + s\n"  # 64 K characters, charged once


@pytest.mark.parametrize("source", [
    # found by the attack run: each took the server 0.5 to 11 s and 0.2 to 2.5 GB
    _DOUBLED + "cfg2 = {'code': (" + "s, " * 2000 + "), 'max_code_lines': 0}\n"
    + "".join(f"b.add_node('PythonCodeNode', 'n{i}', cfg2)\n" for i in range(40)),
    _DOUBLED + "for c in zip(" + "s, " * 1000 + "):\n    pass\n",
    "for c in zip(" + "range(16000), " * 500 + "):\n    pass\n",
    _DOUBLED + "t = f'" + "{s}" * 3000 + "'\n",
    _DOUBLED + "for c in enumerate(s + s + s):\n    pass\n",
    _DOUBLED + "x = [c for c in s][::1]\n",
    # found by a third run: ints the budget counted as one value each (a hex literal of
    # 15 KB, copied by a range), and the text of an f-string made anew at every turn
    "X = 0x" + "f" * 30000 + "\nfor i in range(X, X + 250000):\n    pass\n",
    "x = [f'" + "x" * 30000 + "{i}' for i in range(6000)]\n",
])
def test_work_past_the_budget_is_refused_before_it_is_done(source):
    """Values a file makes are charged before they are made: the server never holds more
    than the budget's worth of them."""
    import tracemalloc

    head = ("from kailash.workflow.builder import WorkflowBuilder\n"
            "b = WorkflowBuilder()\ncfg = {'code': 'result = {}'}\n")
    tree = parse((head + source).encode())
    tracemalloc.start()
    try:
        read = declarative.read(tree, "/p/workflows/f.py", "f", (), max_nodes=2000,
                                max_bytes=16 << 20, project_root="/p")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read is None
    assert peak < 16 << 20, f"{peak / 1e6:.0f} MB"


def _read_from_depth(source: str, frames: int):
    """``declarative.read`` of ``source`` called ``frames`` Python frames deep."""
    def down(n: int):
        if n:
            return down(n - 1)
        return declarative.read(parse(source.encode()), "/p/workflows/f.py", "f", (),
                                max_nodes=2000, max_bytes=16 << 20, project_root="/p")
    return down(frames)


@pytest.mark.parametrize("source, read", [
    # a chain of add_connection calls (each returns the builder): 30 links read, 40 do not
    ("b.add_node('PythonCodeNode', 'a', cfg)\nb.add_node('PythonCodeNode', 'z', cfg)\nb"
     + "".join(f".add_connection('a', 'o{i}', 'z', 'i{i}')" for i in range(30)) + "\n", True),
    ("b.add_node('PythonCodeNode', 'a', cfg)\nb.add_node('PythonCodeNode', 'z', cfg)\nb"
     + "".join(f".add_connection('a', 'o{i}', 'z', 'i{i}')" for i in range(40)) + "\n", False),
    # code nested 300 deep under a __main__ guard (compiled, not replayed): not read
    ("if __name__ == '__main__':\n    x = " + "-" * 300 + "1\n", False),
    ("if __name__ == '__main__':\n    x = " + "-" * 100 + "1\n", True),
    # loops in loops, and functions calling functions: 10 loops or 12 calls deep read
    ("".join("    " * i + f"for i{i} in range(1):\n" for i in range(10)) + "    " * 10
     + "pass\n", True),
    ("".join("    " * i + f"for i{i} in range(1):\n" for i in range(11)) + "    " * 11
     + "pass\n", False),
    ("def f0(k):\n    return k\n" + "".join(f"def f{i}(k):\n    return f{i - 1}(k)\n"
                                          for i in range(1, 12)) + "x = f11(1)\n", True),
    ("def f0(k):\n    return k\n" + "".join(f"def f{i}(k):\n    return f{i - 1}(k)\n"
                                          for i in range(1, 20)) + "x = f19(1)\n", False),
    ("x = " + _comprehensions(8) + "\n", True),
    ("x = " + _comprehensions(9) + "\n", False),
])
def test_whether_a_file_reads_as_data_does_not_depend_on_the_readers_stack(source, read):
    """The server reads deep in a scan, a read-ahead process near the bottom of its stack:
    a chain of calls and a nested tree are bounded by the reader itself, so both decide
    alike, whatever the recursion limit leaves them."""
    head = ("from kailash.workflow.builder import WorkflowBuilder\n"
            "b = WorkflowBuilder()\ncfg = {'code': 'result = {}'}\n")
    shallow, deep = _read_from_depth(head + source, 0), _read_from_depth(head + source, 600)
    assert (shallow is not None) == read
    assert (deep is not None) == read


def test_code_compiled_not_replayed_compiles_alike_from_any_depth():
    """On 3.11 compiling a tree takes a Python frame per level it nests: 190 levels
    compiled from 850 frames deep once ran out, and the file read from a shallow stack."""
    source = ("from kailash.workflow.builder import WorkflowBuilder\nb = WorkflowBuilder()\n"
              "if __name__ == '__main__':\n    x = " + "[" * 190 + "]" * 190 + "\n")
    assert _read_from_depth(source, 0) is not None
    assert _read_from_depth(source, 850) is not None


def test_code_compiled_not_replayed_warns_nothing_in_the_server(recwarn):
    """A compile-time warning of a file's (``x is 1``) is not the server's to print."""
    source = ("from kailash.workflow.builder import WorkflowBuilder\nb = WorkflowBuilder()\n"
              "if __name__ == '__main__':\n    print(b is 1)\n")
    assert _read_from_depth(source, 0) is not None
    assert not [w for w in recwarn if issubclass(w.category, SyntaxWarning)]


@pytest.mark.parametrize("nodes, aliases, read", [(60, 1, True), (300, 40, False)])
def test_each_build_is_charged_when_it_happens_whoever_builds(nodes, aliases, read):
    """A factory called first fills the builder that other names hold: the probe's builds
    of it under each name are charged as they happen (and each name's encoding); 41
    builds of 300 nodes send the file to its worker."""
    source = ("from kailash.workflow.builder import WorkflowBuilder\n"
              "def grow():\n"
              + "".join(f"    b.add_node('PythonCodeNode', 'n{i}', cfg)\n" for i in range(nodes))
              + "    return b\n"
              "b = WorkflowBuilder()\ncfg = {'code': 'result = {}'}\n"
              + "".join(f"alias{i} = b\n" for i in range(aliases)))
    probed = declarative.read(parse(source.encode()), "/p/workflows/f.py", "f", ("grow",),
                              max_nodes=100_000, max_bytes=16 << 20, project_root="/p")
    assert (probed is not None) == read


@pytest.mark.parametrize("source", [
    '"""Doc."""\nfrom __future__ import annotations\n',
    "from __future__ import annotations\n",
    "from __future__ import annotations\nfrom __future__ import annotations\n",
    '"""Doc."""\nfrom __future__ import all_feature_names\n',
    "from __future__ import braces\n",
    "from __future__ import generator_stop\n",
    "import os\nfrom __future__ import annotations\n",
    "x = b.build(name='a', name='b')\n",
    "x = b.build(__debug__=True)\n",
    "def f():\n    return b.build(name='a', name='b')\n",
    # found by an attack run on the loops and functions: a yield, := or await in an
    # annotation, deferred or not, and more than 20 loops one in another
    "from __future__ import annotations\ndef make(x: (yield)):\n    return 1\nw = make(1)\n",
    "from __future__ import annotations\ndef make(x) -> (z := 1):\n    return 1\nw = make(1)\n",
    "def make(x: [i for i in (yield)]):\n    return 1\nw = make(1)\n",
    "".join(" " * i + f"for i{i} in [1]:\n" for i in range(21)) + " " * 21 + "x = 1\n",
    "def f():\n" + "".join(" " * (i + 1) + f"for i{i} in [1]:\n" for i in range(21))
    + " " * 22 + "x = 1\n    return b\n",
])
def test_the_reader_reads_no_file_the_compiler_refuses(source):
    """The reader replays a parsed tree without compiling it (compiling costs as much as
    reading the file): in its language it refuses by itself what the compiler would."""
    from nexus_dataflow_plugin.screen import parse

    head = ("from kailash.workflow.builder import WorkflowBuilder\nb = WorkflowBuilder()\n")
    data = (source + head) if "__future__" in source else (head + source)
    tree = parse(data.encode())
    if isinstance(tree, str):
        return  # the screen's own error
    try:
        compile(tree, "f.py", "exec", dont_inherit=True)
        compiles = True
    except SyntaxError:
        compiles = False
    read = declarative.read(tree, "/p/workflows/f.py", "f", ("f",), max_nodes=2000,
                            max_bytes=16 << 20, project_root="/p")
    assert compiles or read is None


def test_the_reader_declines_a_file_named_main_whose_guard_would_run():
    source = (b"from kailash.workflow.builder import WorkflowBuilder\nb = WorkflowBuilder()\n"
              b"if __name__ == '__main__':\n    b.add_node('PythonCodeNode', 'n', {'code': 'x'})\n")
    args = {"max_nodes": 2000, "max_bytes": 16 << 20, "project_root": "/p"}
    assert declarative.read(parse(source), "/p/workflows/f.py", "f", (), **args) is not None
    main = "/p/workflows/__main__.py"
    assert declarative.read(parse(source), main, "__main__", (), **args) is None


def test_the_reader_declines_workflows_near_the_result_limits(tmp_path):
    """Past ``max_result_nodes`` (or near ``max_result_bytes``) the worker decides, and
    its refusal names the setting."""
    source = FIXTURES / "reads_as_data" / "unbuilt_builder.py"
    assert declarative.read(parse(source.read_bytes()), str(source), "unbuilt_builder", (),
                            max_nodes=2, max_bytes=16 << 20, project_root="/p") is None
    entry = scan(_tree(tmp_path, [source]), max_result_nodes=2).files[0]
    assert entry.status == r.ERROR and "max_result_nodes" in entry.reason


class AppsOwnPythonCodeNode(Node):
    def get_parameters(self):
        return {}

    def run(self, **kwargs):
        return {}


@pytest.fixture
def apps_own_python_code_node(monkeypatch):
    """Nexus app code may register a class of its own under the library's node name."""
    def install():
        monkeypatch.setitem(NodeRegistry._nodes, "PythonCodeNode", AppsOwnPythonCodeNode)
    return install


def test_a_python_code_node_the_app_replaced_is_not_built_by_the_reader(
        apps_own_python_code_node):
    """The app registered its own class under the name: the reader builds only the
    library's own, so the file runs in a worker and the server rebuilds it as before."""
    apps_own_python_code_node()
    source = FIXTURES / "reads_as_data" / "unbuilt_builder.py"
    assert declarative.read(parse(source.read_bytes()), str(source), "unbuilt_builder", (),
                            max_nodes=2000, max_bytes=16 << 20, project_root="/p") is None


def test_a_declarative_file_rewritten_after_its_screen_is_not_read_from_its_new_bytes(
        tmp_path, monkeypatch):
    """The reader takes only the bytes the screen judged: rewritten in between (same
    size, mtime set back), the file goes to its process, which refuses the new bytes
    unrun and has them screened: the model file they now are is skipped."""
    import os

    from nexus_dataflow_plugin.cache import ScreenCache

    target = _tree(tmp_path, [FIXTURES / "reads_as_data" / "unbuilt_builder.py"]) / \
        "workflows" / "unbuilt_builder.py"
    model = "from dataflow import DataFlow\ndb = DataFlow('sqlite:///:memory:')\n"
    target.write_text(model.ljust(len(target.read_text()), "#"))
    model_bytes = target.read_bytes()
    shutil.copyfile(FIXTURES / "reads_as_data" / "unbuilt_builder.py", target)
    real_digest = ScreenCache.digest

    def digest_then_rewrite(self, path):
        judged = real_digest(self, path)
        if judged is not None and path.read_bytes() != model_bytes:
            stat = path.stat()
            path.write_bytes(model_bytes)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return judged

    monkeypatch.setattr(ScreenCache, "digest", digest_then_rewrite)
    entry = scan(tmp_path).files[0]
    assert entry.status == r.SKIPPED_MODEL, entry.reason


def test_reading_leaves_no_garbage_for_the_paused_collector(tmp_path):
    """A scan pauses the collector; a reader's factories and its replay refer to each
    other, so each file's replay is taken apart when it ends, or every file's syntax
    tree and builders would stay alive until the scan does."""
    import gc

    scan(_tree(tmp_path, DECLARATIVE))  # imports and first-use caches out of the way
    gc.collect()
    gc.disable()
    try:
        scan(tmp_path)
        assert gc.collect() == 0
    finally:
        gc.enable()


def _cached_scan(base: Path, cache_dir: Path):
    from nexus_dataflow_plugin import SmartDiscovery

    return SmartDiscovery(base, timeout=5, workers=1, cache_dir=cache_dir).run()


def test_a_warm_scan_rebuilds_what_the_reading_gave_making_up_ids_afresh(tmp_path, monkeypatch):
    """Unchanged bytes: the workflows come back from the stored record (not read
    again, no worker), the same as the reading gave, with the id, default name and
    time each build makes up made up again; a name the file gave is kept."""
    base = _tree(tmp_path / "app", DECLARATIVE)
    cold = _cached_scan(base, tmp_path / "cache")
    monkeypatch.setattr(declarative, "read", lambda *a, **k: pytest.fail("read again"))
    monkeypatch.setattr(WorkerPool, "start", lambda *a, **k: pytest.fail("a worker started"))
    warm = _cached_scan(base, tmp_path / "cache")

    assert [(f.path, f.status, f.workflows) for f in warm.files] == \
        [(f.path, f.status, f.workflows) for f in cold.files]
    assert all(f.reason.startswith(READ) for f in warm.files)
    for name, workflow in warm.workflows.items():
        before = cold.workflows[name]
        assert _shape(workflow) == _shape(before), name
        assert workflow.workflow_id != before.workflow_id
        assert workflow.metadata["created_at"] > before.metadata["created_at"]
    report = warm.workflows["factories_aliases_and_a_guard.make_report"]
    assert report.name == "report"
    default = warm.workflows["unbuilt_builder"]
    assert default.name == f"Workflow-{default.workflow_id[:8]}"


def test_a_file_changed_since_its_reading_is_read_again(tmp_path):
    base = _tree(tmp_path / "app", [FIXTURES / "reads_as_data" / "unbuilt_builder.py"])
    _cached_scan(base, tmp_path / "cache")
    target = base / "workflows" / "unbuilt_builder.py"
    target.write_text(target.read_text().replace("step1", "renamed"))
    warm = _cached_scan(base, tmp_path / "cache")
    assert list(warm.workflows["unbuilt_builder"].nodes) == ["step0", "renamed"]


def test_a_stored_reading_is_not_recalled_once_the_app_replaced_python_code_node(
        tmp_path, apps_own_python_code_node):
    """The record names PythonCodeNode: in a server whose registry now holds another
    class under that name, the file runs in its worker, as it would unread."""
    base = _tree(tmp_path / "app", [FIXTURES / "reads_as_data" / "unbuilt_builder.py"])
    _cached_scan(base, tmp_path / "cache")
    apps_own_python_code_node()
    entry = _cached_scan(base, tmp_path / "cache").files[0]
    assert not entry.reason.startswith(READ), entry.reason


@pytest.mark.parametrize("record", [
    "{", "[]", '{"names": [["w", 1]], "made_up": [[true, true, true]], "data": [{}]}',
    '{"names": [["w", 0]], "made_up": [], "data": [{"nodes": {}}]}',
    '{"names": [["w", 0]], "made_up": [[true, true, true]], "data": [{"nodes": {"a": {'
    '"node_type": "DataFlowBulkDeleteNode", "config": {}}}}]}',
])
def test_a_damaged_or_foreign_record_is_not_recalled(record):
    assert declarative.recall(record, **BOUNDS) is None


BOUNDS = {"max_nodes": 2000, "max_bytes": 16 << 20}


def test_a_record_past_the_bounds_read_keeps_to_is_not_recalled():
    """A record forged past ``max_result_nodes`` or ``max_result_bytes`` is not built in
    the server: the bounds hold for what the cache holds as for the file itself."""
    source = FIXTURES / "reads_as_data" / "unbuilt_builder.py"
    read = declarative.read(parse(source.read_bytes()), str(source), "unbuilt_builder", (),
                            max_nodes=2000, max_bytes=16 << 20, project_root="/p")
    assert read is not None
    assert declarative.recall(read.record, max_nodes=3, max_bytes=16 << 20) is not None
    assert declarative.recall(read.record, max_nodes=2, max_bytes=16 << 20) is None
    assert declarative.recall(read.record, max_nodes=2000, max_bytes=len(read.record) - 1) \
        is None


def _record() -> dict:
    import json

    source = FIXTURES / "reads_as_data" / "unbuilt_builder.py"
    read = declarative.read(parse(source.read_bytes()), str(source), "unbuilt_builder", (),
                            max_nodes=2000, max_bytes=16 << 20, project_root="/p")
    assert read is not None and declarative.recall(read.record, **BOUNDS) is not None
    return json.loads(read.record)


@pytest.mark.parametrize("change", [
    lambda r: r.update(names=[]),
    lambda r: r.update(names=[["wf", -1]]),
    lambda r: r.update(names=[[["wf"], 0]]),
    lambda r: r.update(made_up=[[1, 1, 1]]),
    lambda r: r["data"][0].update(workflow_id=5),
    lambda r: r["data"][0].update(name=None),
], ids=["no_names", "negative_place", "attr_not_text", "flags_not_bools", "id_not_text",
        "name_not_text"])
def test_a_record_not_shaped_as_read_writes_it_is_not_recalled(change):
    """The shapes ``read`` writes, checked: a record changed by hand is not served."""
    import json

    record = _record()
    change(record)
    assert declarative.recall(json.dumps(record), **BOUNDS) is None


def test_a_file_found_twice_through_a_symlink_is_read_once(tmp_path, monkeypatch):
    """Two candidates, one file: each keeps its own reading, so a warm scan reads
    neither again."""
    base = _tree(tmp_path / "app", [FIXTURES / "reads_as_data" / "unbuilt_builder.py"])
    (base / "workflows" / "alias.py").symlink_to(base / "workflows" / "unbuilt_builder.py")
    cold = _cached_scan(base, tmp_path / "cache")
    monkeypatch.setattr(declarative, "read", lambda *a, **k: pytest.fail("read again"))
    warm = _cached_scan(base, tmp_path / "cache")
    assert sorted(warm.workflows) == sorted(cold.workflows) == ["alias", "unbuilt_builder"]
