"""Stage 3a: a file that only declares workflows is read as data, not run.

Most workflow files are declarations: import ``WorkflowBuilder``, add nodes and
connections with literal arguments, build, perhaps inside a factory function.
Running such a file can do nothing but make those workflows, so its outcome is
fixed by its text. ``read`` replays exactly its builder calls, with its literals,
on real builders in this process (Kailash's code, never the file's), and finds
the workflows with the worker's own ``probe``; no process is forked for it.

The language is small on purpose, and bounded. Besides builder calls with literal
arguments it has what files use to compute those arguments: ``for`` loops over
lists, tuples, strings, dicts and their ``items()``/``keys()``/``values()``,
``range``, ``enumerate`` and ``zip``; list comprehensions; f-strings; ``+`` of
strings, numbers, lists or tuples and ``-`` of numbers; indexing and slicing; ``len``
and ``str``; functions with positional parameters, which the file calls itself. Each
is evaluated by Python on the file's own values, in Python's order and scopes.
Bounds: a file of at most 32 KB; expressions, calls and loops nested at most 32 deep
in all; ``BUDGET`` of work over the whole file (every argument counted as often as
it is passed, every node as often as it is built, every loop turn and call by the
size of the code it runs, every string made by its length); at most
``MAX_CONNECTIONS`` per builder. Anything outside it (any other call, name,
statement or expression; a node type not in ``DATA_ONLY_NODES``, whose
construction is known to do nothing but check and store its configuration, or a
config key outside ``DATA_ONLY_KEYS``; anything the compiler would refuse; an
exception while replaying; a workflow that would not survive the trip as data or
is near the result limits) makes ``read`` return None, and the file runs in a
process of its own as before, which gives the authoritative outcome and message.

What a reading gave is also a ``record``: the workflows as the worker would send
them. ``recall`` rebuilds them from it (``Workflow.from_dict``, as for a worker's
result), so a later scan of the same bytes skips the parse, the replay and the
encoding; what each build made up (its id, its default name, its time) is made
up afresh, as a build would.
"""

from __future__ import annotations

import ast
import builtins
import json
import logging
import math
import re
import sys
import types
import typing
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, NamedTuple

from kailash.nodes.base import NodeRegistry
from kailash.workflow import Workflow
from kailash.workflow.builder import WorkflowBuilder

from .probe import probe
from .protocol import is_text
from .screen import is_main_guard, quietly, with_room
from .transfer import encode, rebuild

logger = logging.getLogger(__name__)

# Node types whose construction only checks and stores its configuration (no
# connection, thread, file or import), mapped to the module that must define them:
# a class the app registered under the same name is not one of these.
DATA_ONLY_NODES = {
    "PythonCodeNode": "kailash.nodes.code.python",
}

# What a declarative file may import: the values it binds are the modules' own
# (``typing``'s for annotations: importing it runs nothing, the server has it).
_IMPORTS = {
    module: {name: getattr(sys.modules[module], name) for name in names
             if hasattr(sys.modules[module], name)}
    for module, names in (("kailash.workflow.builder", ("WorkflowBuilder",)),
                          ("kailash.workflow", ("WorkflowBuilder", "Workflow")),
                          ("kailash", ("WorkflowBuilder", "Workflow")),
                          ("typing", tuple(typing.__all__)))
}
# The keys a data-only node's config may have: the node does nothing else with
# them than keep them (no logger named after them, no mode that logs at every build).
DATA_ONLY_KEYS = frozenset({"code", "description", "max_code_lines"})
_SCALARS = (str, int, float, bool, type(None))
# Builtins a file may name while it binds no such name itself: the first five only in
# the calls ``_Scope.iterable`` and ``_Scope.builtin`` check, the rest as annotations.
_BUILTINS = {name: getattr(builtins, name) for name in (
    "range", "enumerate", "zip", "len", "str", "int", "float", "bool", "list", "dict",
    "tuple", "object")}
# An f-string field's format spec: fill and alignment, sign, width and precision of
# at most three digits, a type. Nothing that makes a field longer than a few KB.
_FORMAT_SPEC = re.compile(r"(.?[<>=^])?[-+ ]?z?#?0?\d{0,3}[,_]?(\.\d{1,3})?[bcdeEfFgGnosxX%]?",
                          re.DOTALL)
_MAX_DEPTH = 32
_MAX_INT = 2**63
# Loops nest at most this deep (the compiler refuses more than 20 blocks), list
# comprehensions at most this deep within one another (CPython 3.12.1 and 3.13.0
# crash compiling list, set or dict comprehensions nested more than 20 deep), loop
# targets unpack at most this deep.
_MAX_LOOPS = 10
_MAX_COMPREHENSIONS = 8
_MAX_TARGET = 8
_MAX_NAME = 256  # characters in a node id, a port or a connection's end
# Compiling nests about a C call per level of the tree (on 3.11 a Python frame, too),
# against the recursion limit: with ``screen.with_room``'s frames, 200 levels compile
# from any caller, anywhere in a scan.
_MAX_COMPILE_DEPTH = 200
# Work, over all of a file's builder calls: characters of argument, counting a value
# as often as it is passed (a config dict bound once and passed to every node), and
# each node a ``build()`` constructs, as often as it is built (a builder built under
# many names is built for each). What the server does for a file stays near its size.
BUDGET = 256 * 1024
_ITEM_WEIGHT = 16  # each list item or dict entry, however small
_NODE_WEIGHT = 256  # constructing a node: about 35 us, as 256 characters of argument
MAX_CONNECTIONS = 1_000  # per builder: each new one is checked against all before it


class _NotData(Exception):
    """The file does something ``read`` does not replay: it must run in its own process."""


class _Replay:
    """One file's replay: its module namespace and what its calls have cost so far."""

    def __init__(self, module: str) -> None:
        self.namespace: dict[str, Any] = {"__name__": module}
        self.spent = 0
        # Code the replay does not run (a ``__main__`` guard, a function the probe does
        # not call) must still compile, as it must for the worker's import.
        self.skipped = False
        self.future_annotations = False  # ``from __future__ import annotations``
        self.factories: list[_Function] = []
        self._sizes: dict[int, int] = {}  # id(code) -> its syntax nodes (0: run once)
        # id(workflow) -> which of its id, name and time its build made up (see ``recall``)
        self.made_up: dict[int, list[bool]] = {}

    def charge(self, value: Any) -> None:
        """Count what ``value`` (a call's arguments) costs; every string in it must be
        text the protocol carries (no lone surrogates), as a worker's result must."""
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                _text(item)
                self._spend(len(item) + 2)
            elif isinstance(item, dict):
                for key in item:
                    _text(key)
                self._spend(_ITEM_WEIGHT * len(item) + sum(map(len, item)))
                stack.extend(item.values())
            elif isinstance(item, list):
                self._spend(_ITEM_WEIGHT * len(item))
                stack.extend(item)
            elif isinstance(item, tuple):  # a list once it has been data: as the worker's
                raise _NotData("a tuple in a builder call's arguments")
            else:
                self._spend(8)

    def charge_size(self, size: int) -> None:
        """A value the file's code made (a string, list or tuple): its length."""
        self._spend(size)

    def charge_run(self, code: ast.AST | list[ast.stmt]) -> None:
        """One more turn of a loop or comprehension, or call of a function: its work is
        in proportion to the code it runs (the calls in it charge their own). Its first
        run costs what the file's straight-line code costs, bounded by the file's size;
        each later one is charged by the code's size, counted then (a factory the probe
        calls once is never counted)."""
        size = self._sizes.get(id(code))
        if size is None:
            self._sizes[id(code)] = 0  # run once
            return
        if size == 0:
            size = self._sizes[id(code)] = sum(
                1 for part in (code if isinstance(code, list) else [code])
                for _ in ast.walk(part))
        self._spend(_ITEM_WEIGHT + 4 * size)

    def charge_build(self, builder: _Builder) -> None:
        """A build constructs every node again (and ``validate_parameter_declarations``
        once more; a ``PythonCodeNode`` counts its code's lines), and checks each
        connection against those before it."""
        self._spend(_NODE_WEIGHT * 2 * len(builder.nodes) + builder.code_lines
                    + _pairs(len(builder.connections)))

    def charge_encoding(self, text: str) -> None:
        """Encoding a workflow (``to_dict``'s copy, then JSON) costs in proportion to its
        text: a unit per 3 characters for a config of many small dicts, half that for
        plain nodes (measured). A builder found under many names is built, and encoded,
        once per name."""
        self._spend(len(text) // 3)

    def charge_connections(self, builder: WorkflowBuilder, added: int) -> None:
        """Adding connections checks each new one against those before it."""
        have = len(builder.connections)
        self._spend(_pairs(have + added) - _pairs(have))

    def charge_workflow(self, workflow: Workflow) -> None:
        """A workflow found under one more name: the server encodes, holds and registers
        it once per name."""
        self._spend(_NODE_WEIGHT * (len(workflow.nodes) + workflow.graph.number_of_edges()))

    def close(self) -> None:
        """Its factories hold the replay that holds them: with the collector paused for
        the scan, every file's syntax tree and builders would live until its end."""
        self.namespace.clear()
        self.factories.clear()
        self.made_up.clear()
        self._sizes.clear()

    def _spend(self, amount: int) -> None:
        self.spent += amount
        if self.spent > BUDGET:
            raise _NotData(f"the file's builder calls cost more than {BUDGET:,}")


def _pairs(connections: int) -> int:
    """Checking each of ``connections`` against the ones before it: about 0.07 us a
    pair, half a unit of the budget."""
    return connections * connections // 4


class _Builder(WorkflowBuilder):
    """The file's ``WorkflowBuilder()``: Kailash's own, charging each build to the file
    as it happens, whoever builds it (the file, or the probe under each of its names)."""

    def __init__(self, replay: _Replay) -> None:
        super().__init__()
        self._replay = replay
        self.code_lines = 0  # of its nodes' code: each build splits them again

    def build(self, workflow_id: str | None = None, **kwargs: Any) -> Workflow:
        self._replay.charge_build(self)
        workflow = super().build(workflow_id, **kwargs)
        # ``_metadata`` stays empty: the language has no ``set_metadata``.
        self._replay.made_up[id(workflow)] = [workflow_id is None, "name" not in kwargs,
                                              "created_at" not in kwargs]
        return workflow


class _Function:
    """A function the file defines, with positional parameters or none, and a body
    ``read`` can replay; a call replays that body in a scope of its own, as the
    function would run. The probe calls those the screen found to be factories; the
    file's code calls any, with ``depth`` how deep its call already is."""

    def __init__(self, name: str, params: list[str], body: list[ast.stmt],
                 replay: _Replay) -> None:
        self.__name__ = name
        self._params = params
        self._body = body
        self._replay = replay
        self.ran = False  # its whole body replayed
        replay.factories.append(self)
        self._local_names = frozenset(params) | _bound_in(body)

    def __call__(self, *args: Any, depth: int = 0) -> Any:
        if len(args) != len(self._params):
            raise _NotData(f"{self.__name__}() called with {len(args)} arguments")
        if depth > _MAX_DEPTH:
            raise _NotData("calls nested too deep")
        self._replay.charge_run(self._body)
        scope = _Scope(self._replay, dict(zip(self._params, args, strict=True)),
                       self._local_names, depth=depth + 1)
        value = None
        for statement in self._body:
            if isinstance(statement, ast.Return):
                value = None if statement.value is None else scope.value(statement.value,
                                                                          scope.depth)
            else:
                scope.run(statement)
        self.ran = True
        return value


def _targets(target: ast.expr, depth: int = 0) -> list[str]:
    """The names a ``for`` or comprehension target binds (a name, or names unpacked)."""
    if depth > _MAX_TARGET:
        raise _NotData("a loop target nested too deep")
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for item in target.elts for name in _targets(item, depth + 1)]
    raise _NotData(f"a {type(target).__name__} as a loop target")


def _bound_in(body: list[ast.stmt]) -> frozenset[str]:
    """The names a function's body assigns anywhere, its loops' included: as in Python,
    each is the function's own from its start, bound yet or not."""
    names: set[str] = set()
    pending = list(body)
    while pending:
        statement = pending.pop()
        if isinstance(statement, ast.Assign):
            names.update(t.id for t in statement.targets if isinstance(t, ast.Name))
        elif isinstance(statement, ast.For):
            names.update(_targets(statement.target))
            pending.extend(statement.body)
    return frozenset(names)


class _Scope:
    """The module's scope (``locals_`` None), a function call's, or a comprehension's
    (``enclosing``: the scope it is written in): the statements and expressions of the
    language, as Python evaluates them. ``depth``: how deep its code already runs."""

    def __init__(self, replay: _Replay, locals_: dict[str, Any] | None = None,
                 local_names: frozenset[str] = frozenset(), *, depth: int = 0,
                 enclosing: _Scope | None = None) -> None:
        self.replay = replay
        self.globals = replay.namespace
        self.locals = locals_
        self.local_names = local_names
        self.depth = depth
        self.enclosing = enclosing
        # the comprehensions this scope is the item of, one within another
        self.comprehensions = 0 if enclosing is None else enclosing.comprehensions + 1

    def bind(self, name: str, value: Any) -> None:
        if name.startswith("__"):  # __name__ decides the __main__ guard; no dunder moves
            raise _NotData(f"an assignment to {name}")
        (self.globals if self.locals is None else self.locals)[name] = value

    def lookup(self, name: str) -> Any:
        scope: _Scope | None = self
        while scope is not None and scope.locals is not None:
            if name in scope.local_names:
                if name not in scope.locals:
                    raise _NotData(f"{name} used before it is assigned")
                return scope.locals[name]
            scope = scope.enclosing  # a function's is None: it is defined in the module
        if name in self.globals:
            return self.globals[name]
        if name in _BUILTINS:
            return _BUILTINS[name]
        raise _NotData(f"{name} is not defined by the file")

    def assign(self, target: ast.expr, value: Any, depth: int = 0) -> None:
        """Bind a loop's or comprehension's target: a name, or names unpacked from a
        tuple or list of exactly as many items."""
        if depth > _MAX_TARGET:
            raise _NotData("a loop target nested too deep")
        if isinstance(target, ast.Name):
            self.bind(target.id, value)
            return
        if not isinstance(target, (ast.Tuple, ast.List)) or any(
                isinstance(item, ast.Starred) for item in target.elts):
            raise _NotData(f"a {type(target).__name__} as a loop target")
        if type(value) not in (tuple, list) or len(value) != len(target.elts):
            raise _NotData("a loop target that does not unpack its item exactly")
        for item, part in zip(target.elts, value, strict=True):
            self.assign(item, part, depth + 1)

    def run(self, statement: ast.stmt, depth: int | None = None, loops: int = 0) -> None:
        """Replay a statement (``loops``: the loops it is in, in its function or module)."""
        depth = self.depth if depth is None else depth
        if depth > _MAX_DEPTH or loops > _MAX_LOOPS:
            raise _NotData("loops nested too deep")
        if isinstance(statement, ast.Expr):
            if not isinstance(statement.value, ast.Constant):  # a docstring or a string
                self.call(statement.value, depth)
        elif isinstance(statement, ast.Assign):
            if not all(isinstance(t, ast.Name) for t in statement.targets):
                raise _NotData("assignment to something other than a name")
            value = self.value(statement.value, depth)
            for target in statement.targets:
                self.bind(target.id, value)  # type: ignore[attr-defined]
        elif isinstance(statement, ast.For):
            if statement.orelse:
                raise _NotData("a for loop with an else")
            items = self.iterable(statement.iter, depth)
            if not items:
                _dead(statement.body)
                self.replay.skipped = True  # its body must still compile
            for item in items:
                self.replay.charge_run(statement.body)
                self.assign(statement.target, item)
                for inner in statement.body:
                    self.run(inner, depth + 1, loops + 1)
        elif not isinstance(statement, ast.Pass):
            raise _NotData(type(statement).__name__)

    def value(self, node: ast.expr, depth: int = 0) -> Any:
        """A whole expression (``depth``: the expressions, calls and loops it is in)."""
        if depth > _MAX_DEPTH:
            raise _NotData("an expression nested too deep")
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.JoinedStr):
            return self.fstring(node, depth)
        if isinstance(node, ast.BinOp):
            return self.binop(node, depth)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, depth)
        if isinstance(node, ast.ListComp):
            return self.comprehension(node, depth)
        return self.literal(node, depth)

    def scalar(self, node: ast.expr, depth: int) -> Any:
        """An expression whose value must be a string, a number, a bool or None."""
        value = self.value(node, depth)
        if not isinstance(value, _SCALARS):
            raise _NotData(f"a {type(value).__name__} where a string or number belongs")
        return value

    def iterable(self, node: ast.expr, depth: int) -> list[Any]:
        """The items a ``for`` loop or comprehension goes through, in Python's order:
        of a list or tuple written there (of anything), or a list, tuple, string or
        dict (its keys) the file made; of a dict's
        ``items()``, ``keys()`` or ``values()``; of ``range`` of ints, or ``enumerate``
        or ``zip`` of any of these. (Those three only here, so none is ever gone
        through twice: they are iterators, empty once used.)"""
        if isinstance(node, ast.Call) and not node.keywords and not any(
                isinstance(a, ast.Starred) for a in node.args):
            func, args = node.func, node.args
            called = self.lookup(func.id) if isinstance(func, ast.Name) else None
            if called is range:
                bounds = [self.value(a, depth + 1) for a in args]
                if not 1 <= len(bounds) <= 3 or any(type(b) is not int for b in bounds):
                    raise _NotData("range() of something other than one to three ints")
                span = range(*bounds)
                self.replay.charge_size(len(span))  # (before the list is made)
                return list(span)
            if called is enumerate and 1 <= len(args) <= 2:
                items = self.iterable(args[0], depth + 1)
                start = self.value(args[1], depth + 1) if len(args) == 2 else 0
                if type(start) is not int:
                    raise _NotData("enumerate() from something other than an int")
                self.replay.charge_size(2 * len(items))
                return list(enumerate(items, start))
            if called is zip:
                lists = [self.iterable(a, depth + 1) for a in args]
                self.replay.charge_size(min(map(len, lists), default=0) * (len(lists) + 1))
                return list(zip(*lists, strict=False))
            if isinstance(func, ast.Attribute) and func.attr in ("items", "keys", "values") \
                    and not args:
                target = self.value(func.value, depth + 1)
                if type(target) is dict:
                    self.replay.charge_size((1 + (func.attr == "items")) * len(target))
                    return list(getattr(target, func.attr)())
        if isinstance(node, (ast.Tuple, ast.List)) and not any(
                isinstance(item, ast.Starred) for item in node.elts):
            return [self.value(item, depth + 1) for item in node.elts]  # gone through, not kept
        value = self.value(node, depth)
        if type(value) in (list, tuple, str, dict):
            self.replay.charge_size(len(value))
            return list(value)
        raise _NotData(f"a loop over a {type(value).__name__}")

    def builtin(self, func: Any, node: ast.Call, depth: int) -> Any:
        """``len(x)`` of a list, tuple, string or dict; ``str(x)`` of a scalar."""
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            raise _NotData(f"{func.__name__}() in an unusual form")
        value = self.value(node.args[0], depth + 1)
        if func is len and type(value) in (list, tuple, str, dict):
            return len(value)
        if func is str and isinstance(value, _SCALARS):
            text = str(value)
            self.replay.charge_size(len(text))
            return text
        raise _NotData(f"{func.__name__}() of a {type(value).__name__}")

    def fstring(self, node: ast.JoinedStr, depth: int) -> str:
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant) and type(part.value) is str:
                self.replay.charge_size(len(part.value))  # a new copy at every evaluation
                parts.append(part.value)
                continue
            if not isinstance(part, ast.FormattedValue):
                raise _NotData(type(part).__name__)
            value = self.scalar(part.value, depth + 1)
            if part.conversion != -1:
                value = {ord("s"): str, ord("r"): repr, ord("a"): ascii}[part.conversion](value)
            spec = ""
            if part.format_spec is not None:
                pieces = part.format_spec.values  # type: ignore[attr-defined]
                if not all(isinstance(p, ast.Constant) and type(p.value) is str for p in pieces):
                    raise _NotData("a format spec computed as the file runs")
                spec = "".join(p.value for p in pieces)
                if not _FORMAT_SPEC.fullmatch(spec):
                    raise _NotData(f"an unusual format spec {spec!r}")
            field = format(value, spec)
            self.replay.charge_size(len(field))  # each as it is made, before the join
            parts.append(field)
        text = "".join(parts)
        _text(text)
        return text

    def binop(self, node: ast.BinOp, depth: int) -> Any:
        """``+`` of two strings, numbers, lists or tuples; ``-`` of two numbers."""
        left, right = self.value(node.left, depth + 1), self.value(node.right, depth + 1)
        kinds = {type(left), type(right)}
        if isinstance(node.op, ast.Add) and len(kinds) == 1 and kinds <= {str, list, tuple}:
            self.replay.charge_size(len(left) + len(right))
        elif not (isinstance(node.op, (ast.Add, ast.Sub)) and kinds <= {int, float}):
            raise _NotData(f"a {type(node.op).__name__} of {type(left).__name__} and "
                           f"{type(right).__name__}")
        value = left + right if isinstance(node.op, ast.Add) else left - right
        if type(value) is float and not math.isfinite(value):
            raise _NotData("a number that is not finite")
        return _small(value) if type(value) is int else value

    def subscript(self, node: ast.Subscript, depth: int) -> Any:
        """An item of a list, tuple or string by an int, of a dict by a string; a slice
        of a list, tuple or string by ints."""
        container = self.value(node.value, depth + 1)
        index = node.slice
        if isinstance(index, ast.Slice):
            bounds = [None if part is None else self.value(part, depth + 1)
                      for part in (index.lower, index.upper, index.step)]
            if type(container) not in (list, tuple, str) or not all(
                    b is None or type(b) is int for b in bounds) or bounds[2] == 0:
                raise _NotData("an unusual slice")
            span = slice(*bounds)
            self.replay.charge_size(len(range(*span.indices(len(container)))))
            return container[span]
        key = self.value(index, depth + 1)
        if (type(container) in (list, tuple, str) and type(key) is int) or (
                type(container) is dict and type(key) is str):
            return container[key]  # IndexError, KeyError: the file's process reports it
        raise _NotData("an unusual subscript")

    def comprehension(self, node: ast.ListComp, depth: int) -> list[Any]:
        """``[item for target in iterable]``: the iterable evaluated here, each item in a
        scope of its own whose enclosing scope is this one, as in Python."""
        if len(node.generators) != 1 or node.generators[0].ifs or node.generators[0].is_async:
            raise _NotData("a comprehension with more than one for, or an if")
        if self.comprehensions >= _MAX_COMPREHENSIONS:
            raise _NotData("comprehensions nested too deep")
        generator = node.generators[0]
        items = self.iterable(generator.iter, depth + 1)
        if not items:
            _dead([node.elt])
            self.replay.skipped = True  # its item must still compile
        names = frozenset(_targets(generator.target))
        out = []
        for item in items:
            self.replay.charge_run(node.elt)
            scope = _Scope(self.replay, {}, names, depth=depth + 1, enclosing=self)
            scope.assign(generator.target, item)
            out.append(scope.value(node.elt, depth + 1))
        self.replay.charge_size(len(out))
        return out

    def literal(self, node: ast.expr, depth: int) -> Any:
        """A literal built in place; an expression inside one (a name, a call, an
        f-string...) must give a string or a number, so no literal shares a container
        with another."""
        if depth > _MAX_DEPTH:
            raise _NotData("a literal nested too deep")
        if isinstance(node, ast.Constant):
            return _constant(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.value(node.operand, depth + 1)
            if type(operand) in (int, float):
                return -operand if isinstance(node.op, ast.USub) else +operand
            raise _NotData("a unary operator on something other than a number")
        if isinstance(node, ast.Dict):
            keys = []
            for key in node.keys:
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    raise _NotData("a dict key that is not a string")
                keys.append(key.value)
            return dict(zip(keys, [self.literal(v, depth + 1) for v in node.values],
                            strict=True))
        if isinstance(node, ast.List):
            return [self.literal(item, depth + 1) for item in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.literal(item, depth + 1) for item in node.elts)
        if isinstance(node, ast.Name):  # (the commonest: a constant the file named)
            value = self.lookup(node.id)
            if not isinstance(value, _SCALARS):
                raise _NotData(f"{node.id} inside a literal holds a {type(value).__name__}")
            return value
        if isinstance(node, (ast.Call, ast.JoinedStr, ast.BinOp, ast.Subscript)):
            return self.scalar(node, depth + 1)
        raise _NotData(type(node).__name__)

    def call(self, node: ast.expr, depth: int = 0) -> Any:
        if not isinstance(node, ast.Call):
            raise _NotData(type(node).__name__)
        if depth > _MAX_DEPTH:  # a chain of calls: what the stack allows must not decide
            raise _NotData("calls nested too deep")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords):
            raise _NotData("* or ** in a call")
        keywords = [k.arg for k in node.keywords]
        if len(set(keywords)) != len(keywords) or "__debug__" in keywords:
            raise _NotData("a keyword the compiler refuses")  # repeated, or __debug__
        func = node.func
        if isinstance(func, ast.Name):
            called = self.lookup(func.id)
            if type(called) is _Function and not node.keywords:
                args = [self.value(a, depth + 1) for a in node.args]
                return called(*args, depth=depth + 1)
            if called is len or called is str:
                return self.builtin(called, node, depth)
            if called is not WorkflowBuilder or node.args or node.keywords:
                raise _NotData(f"a call of {func.id}")
            return _Builder(self.replay)
        if not isinstance(func, ast.Attribute):
            raise _NotData("a call of an expression")
        target = self.value(func.value, depth + 1)
        if type(target) is not _Builder:
            raise _NotData(f".{func.attr}() of something other than a WorkflowBuilder")
        args = [self.value(a, depth + 1) for a in node.args]
        kwargs = {k.arg: self.value(k.value, depth + 1) for k in node.keywords}
        added = _check(func.attr, args, kwargs, target)
        if func.attr == "add_node" and len(args) == 3 and type(args[2].get("code")) is str:
            target.code_lines += args[2]["code"].count("\n")
        self.replay.charge([args, kwargs])
        self.replay.charge_connections(target, added)
        return getattr(target, func.attr)(*args, **kwargs)


def _name(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= _MAX_NAME


def _check(method: str, args: list[Any], kwargs: dict[str, Any],
           builder: WorkflowBuilder) -> int:
    """Only the plain forms of the builder's methods, with short string names, configs
    of ``DATA_ONLY_KEYS`` and at most ``MAX_CONNECTIONS`` per builder: how many
    connections the call adds."""
    added = 0
    if method == "add_node":
        ok = (not kwargs and 2 <= len(args) <= 3 and isinstance(args[0], str)
              and _name(args[1]) and (len(args) == 2 or (
                  isinstance(args[2], dict) and set(args[2]) <= DATA_ONLY_KEYS)))
        if ok and not _data_only(args[0]):
            raise _NotData(f"node type {args[0]!r}")
    elif method == "add_connection":
        ok, added = not kwargs and len(args) == 4 and all(map(_name, args)), 1
    elif method == "connect":
        mapping = kwargs.get("mapping", args[2] if len(args) > 2 else None)
        ok = (2 <= len(args) <= 3 and _name(args[0]) and _name(args[1])
              and set(kwargs) <= {"mapping", "from_output", "to_input"}
              and (mapping is None or (isinstance(mapping, dict) and all(
                  _name(k) and _name(v) for k, v in mapping.items())))
              and all(_name(kwargs.get(k, "")) for k in ("from_output", "to_input")))
        added = len(mapping) if isinstance(mapping, dict) else 1
    elif method == "build":
        ok = not args and all(isinstance(v, _SCALARS) for v in kwargs.values())
    else:
        raise _NotData(f"WorkflowBuilder.{method}()")
    if not ok:
        raise _NotData(f"an unusual form of WorkflowBuilder.{method}()")
    if len(builder.connections) + added > MAX_CONNECTIONS:
        raise _NotData(f"more than {MAX_CONNECTIONS:,} connections in one builder")
    return added


def _text(value: str) -> None:
    if not is_text(value):  # a worker's result with it is refused
        raise _NotData("a string that is not valid Unicode (a lone surrogate)")


def _constant(value: Any) -> Any:
    if type(value) is str:
        _text(value)
        return value
    if value is None or type(value) is bool:
        return value
    if type(value) is int:
        return _small(value)
    if type(value) is float and math.isfinite(value):
        return value
    raise _NotData(f"a {type(value).__name__} literal")  # bytes, complex, ...: not JSON


def _small(number: int) -> int:
    """An int of at most 64 bits. A hex literal can be 15 KB of int (only decimal ones
    are bounded), and each copy a range or a sum makes, or JSON writes out, costs as
    much as its size, while the budget counts it as one value."""
    if not -_MAX_INT <= number < _MAX_INT:
        raise _NotData("an int past 64 bits")
    return number


def _data_only(node_type: str) -> bool:
    module = DATA_ONLY_NODES.get(node_type)
    cls = NodeRegistry._nodes.get(node_type)
    return module is not None and cls is not None and cls.__module__ == module


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
# Syntax whose compiling costs more than in proportion to its size (a match statement's
# captures: quadratic, 23 to 30 s and 5 to 10 GB for 32 KB), or is new (3.12's type
# parameters and aliases).
_COSTLY_TO_COMPILE = tuple(getattr(ast, name) for name in (
    "Match", "TypeAlias", "TypeVar", "ParamSpec", "TypeVarTuple") if hasattr(ast, name))
# A tree of at most this many nodes compiles in a few milliseconds; typical workflow
# files have a few hundred. Past it, only the file's process compiles it.
_MAX_COMPILE_NODES = 4000


def _uncompilable_here(tree: ast.AST) -> str | None:
    """Why the server must not compile this tree, if it must not; then the file goes to
    its process, whose compile is bounded by its timeout and memory limit.

    - Compiling recurses as deep as the tree nests: past ``_MAX_COMPILE_DEPTH``, whether
      it compiles would depend on who reads the file.
    - CPython 3.12.1 and 3.13.0 crash (SIGSEGV) compiling list, set or dict
      comprehensions nested more than 20 deep within one another.
    - Some syntax costs the compiler more than in proportion to its size
      (``_COSTLY_TO_COMPILE``), and a tree past ``_MAX_COMPILE_NODES`` is large enough
      for the rest (constant folding, duplicate keywords) to cost more than the budget.
    """
    stack = [(tree, 0, 0)]
    nodes = 0
    while stack:
        node, depth, comprehensions = stack.pop()
        nodes += 1
        comprehensions += isinstance(node, _COMPREHENSIONS)
        if depth > _MAX_COMPILE_DEPTH:
            return f"code nested more than {_MAX_COMPILE_DEPTH} deep"
        if comprehensions > _MAX_COMPREHENSIONS:
            return "comprehensions nested too deep"
        if isinstance(node, _COSTLY_TO_COMPILE):
            return f"a {type(node).__name__}, costly to compile"
        if nodes > _MAX_COMPILE_NODES:
            return f"more than {_MAX_COMPILE_NODES:,} syntax nodes to compile"
        stack.extend((child, depth + 1, comprehensions)
                     for child in ast.iter_child_nodes(node))
    return None


def _at_start(body: list[ast.stmt], index: int) -> bool:
    """Only a docstring and ``__future__`` imports come before ``body[index]``: where
    the compiler accepts a ``__future__`` import."""
    before = body[:index]
    if before and isinstance(before[0], ast.Expr) and isinstance(before[0].value, ast.Constant) \
            and isinstance(before[0].value.value, str):
        before = before[1:]
    return all(isinstance(s, ast.ImportFrom) and s.module == "__future__" for s in before)


def _import(statement: ast.ImportFrom, scope: _Scope) -> None:
    if statement.level:
        raise _NotData("a relative import")
    if statement.module == "__future__":
        for alias in statement.names:
            if alias.name != "annotations" or alias.asname:
                raise _NotData(f"from __future__ import {alias.name}")
            # The module's own feature object, as the import binds it (this very
            # module's first line imported ``__future__``).
            scope.bind(alias.name, sys.modules["__future__"].annotations)
            scope.replay.future_annotations = True
        return
    exports = _IMPORTS.get(statement.module or "")
    if exports is None:
        raise _NotData(f"an import of {statement.module}")
    for alias in statement.names:
        if alias.name not in exports:
            raise _NotData(f"an import of {statement.module}.{alias.name}")
        scope.bind(alias.asname or alias.name, exports[alias.name])


_ANNOTATION_NODES = (ast.Constant, ast.Name, ast.Tuple, ast.Subscript, ast.BinOp, ast.BitOr,
                     ast.Load)


def _annotation(node: ast.expr, scope: _Scope, depth: int = 0) -> Any:
    """An annotation evaluated as the ``def`` runs: a constant, a name the file or the
    builtins bind (undefined: the NameError the file's process reports), or a subscript,
    tuple or ``|`` of these, evaluated for real only over classes (Kailash's or the
    builtins': a file defines none) and ``typing``'s objects, whose ``[]`` and ``|``
    only make type objects."""
    if depth > _MAX_DEPTH:  # typing recurses over what it is given too
        raise _NotData("an annotation nested too deep")
    scope.replay.charge_size(_ITEM_WEIGHT)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return scope.lookup(node.id)
    if isinstance(node, ast.Tuple):
        return tuple(_annotation(item, scope, depth + 1) for item in node.elts)
    if isinstance(node, ast.Subscript):
        parts = [_annotation(node.value, scope, depth + 1),
                 _annotation(node.slice, scope, depth + 1)]
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        parts = [_annotation(node.left, scope, depth + 1),
                 _annotation(node.right, scope, depth + 1)]
    else:
        raise _NotData(f"a {type(node).__name__} in an annotation")
    if not all(_a_type(part) for part in parts):
        raise _NotData("an annotation over something other than types")
    return parts[0][parts[1]] if isinstance(node, ast.Subscript) else parts[0] | parts[1]


def _a_type(value: Any) -> bool:
    if type(value) is tuple:
        return all(map(_a_type, value))
    return value is None or value is Ellipsis or isinstance(
        value, (type, types.GenericAlias, types.UnionType)) or type(value).__module__ == "typing"


def _function(statement: ast.FunctionDef, scope: _Scope) -> _Function:
    """The function a ``def`` makes: plain positional parameters, no defaults and no
    decorators. Its annotations are evaluated now, as Python does, unless the
    ``__future__`` import defers them (``_annotation``)."""
    args = statement.args
    if statement.decorator_list or args.posonlyargs or args.vararg or args.kwonlyargs or \
            args.kwarg or args.defaults or getattr(statement, "type_params", None):
        raise _NotData(f"function {statement.name} has decorators, defaults, * or ** "
                       "parameters, or type parameters")
    params = [arg.arg for arg in args.args]
    if len(set(params)) != len(params) or any(p.startswith("__") for p in params):
        raise _NotData(f"function {statement.name} repeats a parameter or names a dunder")
    for annotation in [arg.annotation for arg in args.args] + [statement.returns]:
        if annotation is None:
            continue
        if not all(isinstance(part, _ANNOTATION_NODES) for part in ast.walk(annotation)):
            # (the compiler refuses yield, await or := in one, even deferred)
            raise _NotData(f"an annotation in {statement.name} other than a type's name")
        if not scope.replay.future_annotations:
            _annotation(annotation, scope)
    _plain_body(statement.body, statement.name)
    return _Function(statement.name, params, statement.body, scope.replay)


def _plain_body(body: list[ast.stmt], name: str) -> None:
    """Refuse a function whose body holds, anywhere, run or not, a statement outside the
    language: ``global x``, ``x += 1`` or ``import x``, even in a loop over nothing, make
    ``x`` global or the function's own from its first line. With only assignments to
    names, loops, calls and a last ``return``, the names it binds are those ``_bound_in``
    finds. (Expressions that do as much, ``x := 1`` or a ``yield``, are refused where
    they run, and by ``_dead`` where they never do.)"""
    *init, last = body
    pending = init + ([] if isinstance(last, ast.Return) else [last])
    while pending:
        statement = pending.pop()
        if isinstance(statement, ast.For) and not statement.orelse:
            _targets(statement.target)
            pending.extend(statement.body)
        elif not (isinstance(statement, (ast.Expr, ast.Pass)) or (
                isinstance(statement, ast.Assign)
                and all(isinstance(t, ast.Name) for t in statement.targets))):
            raise _NotData(f"a {type(statement).__name__} in {name}")


# Expressions refused in code that never runs; of statements, only these are allowed.
_NOT_IN_DEAD_CODE = (ast.Yield, ast.YieldFrom, ast.Await, ast.NamedExpr, ast.Lambda)
_IN_DEAD_CODE = (ast.Expr, ast.Assign, ast.Pass, ast.For, ast.If)


def _dead(parts: list[ast.stmt] | list[ast.expr]) -> None:
    """Code that never runs (the body of a loop over nothing, the item of a comprehension
    over nothing) still changes what its function is in Python: a ``yield`` there makes
    it a generator, ``x := 1`` or ``global x`` change which ``x`` it reads. So it must
    hold none of those (``read`` also compiles it, which proves only its syntax)."""
    for part in parts:
        for node in ast.walk(part):
            if isinstance(node, _NOT_IN_DEAD_CODE) or (
                    isinstance(node, ast.stmt) and not isinstance(node, _IN_DEAD_CODE)):
                raise _NotData(f"a {type(node).__name__} in code that never runs")


def _replay(tree: ast.Module, replay: _Replay, module: str) -> dict[str, Any]:
    """Replay the module's statements: its namespace, as running it would leave it."""
    scope = _Scope(replay)
    for index, statement in enumerate(tree.body):
        if isinstance(statement, ast.ImportFrom):
            if statement.module == "__future__" and not _at_start(tree.body, index):
                raise _NotData("a __future__ import after other statements")  # compiler
            _import(statement, scope)
        elif isinstance(statement, ast.FunctionDef):
            scope.bind(statement.name, _function(statement, scope))
        elif isinstance(statement, ast.If):
            if module == "__main__" or not is_main_guard(statement.test) or statement.orelse:
                raise _NotData("an if statement other than a __main__ guard")
            replay.skipped = True
        else:
            scope.run(statement)
    return replay.namespace


class Read(NamedTuple):
    """What reading a file gave: its workflows (attr -> Workflow, as the probe found
    them) and ``record``, the same as JSON text for ``recall``."""

    workflows: dict[str, Workflow]
    record: str


def read(tree: ast.Module | str, path: str, module: str, factories: Collection[str], *,
         max_nodes: int, max_bytes: int, project_root: str) -> Read | None:
    """The workflows a declarative file (its ``screen.parse`` tree, imported as
    ``module``) gives, found as the worker finds them; None when the file is not
    declarative, or anything about it needs its own process to say."""
    if isinstance(tree, str):
        return None
    replay: _Replay | None = None
    try:
        replay = _Replay(module)
        probed = probe(_replay(tree, replay, module), path, factories,
                       factory=lambda name, obj: isinstance(obj, _Function)
                       and obj.__name__ in factories)
        if probed.failures:
            return None
        if replay.skipped or not all(f.ran for f in replay.factories):
            refusal = _uncompilable_here(tree)
            if refusal is not None:
                raise _NotData(refusal)
            with_room(quietly, compile, tree, path, "exec", 0, True)  # SyntaxError: the worker's
        nodes = size = 0
        index: dict[int, int] = {}  # id(workflow) -> its place in texts and counts
        texts: list[str] = []
        counts: list[int] = []  # nodes and connections
        made_up: list[list[bool]] = []
        names: list[tuple[str, int]] = []
        for attr, workflow in probed.workflows.items():
            replay.charge_workflow(workflow)  # each name, as the worker encodes each
            place = index.get(id(workflow))
            if place is None:
                encoded = encode(workflow, project_root, set())
                if encoded.problems or encoded.data is None:
                    return None
                replay.charge_encoding(encoded.text)
                place = index[id(workflow)] = len(texts)
                texts.append(encoded.text)
                counts.append(len(encoded.data.get("nodes", ()))
                              + len(encoded.data.get("connections", ())))
                made_up.append(replay.made_up[id(workflow)])
            nodes += counts[place]
            size += len(texts[place])
            if nodes > max_nodes or size > max_bytes // 2:  # near a limit: the worker decides
                return None
            names.append((attr, place))
        record = (f'{{"names":{json.dumps(names)},"made_up":{json.dumps(made_up)},'
                  f'"data":[{",".join(texts)}]}}')
        return Read(probed.workflows, record)
    except Exception as exc:  # noqa: BLE001 - _NotData, SyntaxError, anything Kailash raised
        try:
            logger.debug("%s runs in its own process: %s", path, exc)
        except RecursionError:  # read at the very end of the stack: still an answer
            pass
        return None
    finally:
        if replay is not None:
            replay.close()


def recall(record: str, *, max_nodes: int, max_bytes: int) -> dict[str, Workflow] | None:
    """The workflows of a ``Read.record``, rebuilt; None when the record is damaged, is
    past the bounds ``read`` keeps to, or a node type in it is no longer
    ``DATA_ONLY_NODES``' own class in this process."""
    try:
        if len(record) > max_bytes:  # ``read`` keeps its workflows' JSON to half of it
            return None
        stored = json.loads(record)
        datas, names = stored["data"], stored["names"]
        if not names or not all(_data_only(node["node_type"]) for data in datas
                                for node in data["nodes"].values()):
            return None
        counts = [len(data["nodes"]) + len(data["connections"]) for data in datas]
        if sum(counts[place] for _, place in names) > max_nodes:
            return None
        built, strings = [], {}
        for data, made_up in zip(datas, stored["made_up"], strict=True):
            new_id, new_name, new_time = made_up
            if {type(flag) for flag in made_up} != {bool} or not (
                    type(data.get("workflow_id")) is str and type(data.get("name")) is str):
                raise ValueError("not a record read wrote")
            if new_id:
                data["workflow_id"] = str(uuid.uuid4())
            if new_name:
                data["name"] = f"Workflow-{data['workflow_id'][:8]}"
            if new_time:
                data["metadata"]["created_at"] = datetime.now(UTC).isoformat()
            built.append(rebuild(data, strings))
        found = {}
        for attr, place in names:
            if type(attr) is not str or type(place) is not int or not 0 <= place < len(built):
                raise ValueError("not a record read wrote")
            found[attr] = built[place]
        return found
    except Exception as exc:  # noqa: BLE001 - a damaged record costs a reading
        logger.debug("a stored reading is not used: %s", exc)
        return None
