"""Stage 2: the static screen. Reads a file's bytes, never imports or runs it.

It answers four questions from the AST alone:
- does this file define DataFlow models (or create a DataFlow instance)?
- which modules does it import when it is imported (for the import graph in
  ``imports.py``)? Literal dynamic imports (``importlib.import_module("x")``,
  ``__import__``, ``runpy``) count; imports that never run on import (under
  ``if TYPE_CHECKING:``, under the main guard, in a function that takes
  arguments and is never referenced) do not;
- which of its own functions could be workflow factories (for the worker)?
- does it loop or make a blocking call at import (a hint for scheduling)?

It never raises: whatever bytes it is given, the answer is a ``Facts`` value,
with ``error`` set when the bytes are not valid Python. It is also all that the
screen's own processes import (``screen_listed``; see ``cache.py``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import threading
import warnings
from collections.abc import Callable
from typing import IO, Any, NamedTuple, TypeVar

from .report import MSG_DECODE, MSG_NUL, MSG_SYNTAX

_T = TypeVar("_T")
_ENCODING_WORDS = re.compile(r"utf-8|encoding|decode|unicode error", re.IGNORECASE)

DATAFLOW_PACKAGE = "dataflow"
DATAFLOW_CLASS = "DataFlow"


# Named tuples, not frozen dataclasses: a warm scan rebuilds these for every file
# from the cache, and a tuple is built several times faster.


class ImportRef(NamedTuple):
    """One import statement's target, as written (resolved later by ``imports.py``).

    ``module`` is the ``from`` part (or the imported module), ``names`` the names
    imported from it (empty for ``import x``), ``level`` the number of leading dots.
    """

    module: str
    names: tuple[str, ...]
    level: int
    line: int


# ``PathRef.anchor``: where a path the file computes starts.
ANCHOR_FILE = "file"  # the file's own path (``__file__``): ``ups`` 1 is its directory
ANCHOR_CWD = "cwd"  # the working directory (the worker runs in the project root)
ANCHOR_ABSOLUTE = "abs"


class PathRef(NamedTuple):
    """A path the file computes from literals and ``__file__``: ``ups`` levels up from
    the anchor, then down ``tail`` (a ``/``-joined relative path)."""

    anchor: str
    ups: int
    tail: str
    line: int


class ModelUse(NamedTuple):
    """A ``<target>.model`` decoration or call whose target is a name from another module.

    Whether it defines a DataFlow model depends on where ``name`` comes from,
    which the import graph decides.
    """

    name: str
    cls: str
    line: int
    source: ImportRef


class Facts(NamedTuple):
    """What the screen learned about one file."""

    error: str | None = None
    model: str | None = None
    imports: tuple[ImportRef, ...] = ()
    external_model_uses: tuple[ModelUse, ...] = ()
    factories: tuple[str, ...] = ()
    node_types: tuple[str, ...] = ()
    may_block: bool = False
    # Directories it puts on ``sys.path`` and files it runs by path (``runpy.run_path``,
    # ``spec_from_file_location``), for the import graph.
    path_entries: tuple[PathRef, ...] = ()
    run_paths: tuple[PathRef, ...] = ()
    # A literal ``__all__``: what ``from <this package> import *`` imports.
    exports: tuple[str, ...] = ()
    # The screen did not finish within the file's timeout (``error`` says so).
    stalled: bool = False
    # Classes this file hands to ``<target>.model``: DataFlow's node names derive from
    # them, when the import graph confirms the file defines models.
    model_classes: tuple[str, ...] = ()


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


_NESTED_SCOPES = frozenset({ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda})


def _walk(roots: list[ast.AST], prune: frozenset[type] = frozenset()) -> list[ast.AST]:
    """Every node under ``roots`` the screen looks at, in ``ast.walk``'s order: without
    what ``_FIELDS`` leaves out (the ``Load``/``Store`` markers, operators, ``import``
    aliases), about a third of ``ast.walk``'s cost. Nodes of a ``prune`` class are
    listed but not entered."""
    out = list(roots)
    fields_of = _FIELDS
    i = 0
    while i < len(out):
        node = out[i]
        i += 1
        kind = node.__class__
        fields = fields_of.get(kind)
        if fields is None:
            fields = _child_fields(kind)
        if not fields or kind in prune:
            continue
        for name in fields:
            value = getattr(node, name, None)
            if value.__class__ is list:
                out += [v for v in value if v is not None] if kind in _HOLES else value
            elif value is not None:
                out.append(value)
    return out


def is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round): false where a file is imported."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return bool(names and consts)


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:``: false when the code runs."""
    return _dotted(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING", "t.TYPE_CHECKING")


def _never_runs(stmt: ast.stmt) -> bool:
    """An ``if`` whose body never runs on import (its ``else`` does)."""
    return stmt.__class__ is ast.If and (
        is_main_guard(stmt.test) or _is_type_checking(stmt.test)  # type: ignore[attr-defined]
    )


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _live_nodes(body: list[ast.stmt], factories: frozenset[str], keep: frozenset[type]
                ) -> list[ast.AST]:
    """The nodes of the ``keep`` classes, in order, in the code that runs when the module
    is imported or its factories called.

    A function's body counts when it is one of the ``factories`` the worker calls
    or when its name is used in code that counts (a function that takes
    arguments and is never referenced is never called); the body of
    ``if __name__ == "__main__":`` and of ``if TYPE_CHECKING:`` never counts.
    Class bodies run at import.

    The hottest loop of the screen (every node of most files passes here once): a node's
    children are found through ``_FIELDS``, and leaves cost one lookup.
    """
    out: list[ast.AST] = []
    deferred: dict[str, list[ast.AST]] = {}
    used: set[str] = set()
    stack: list[ast.AST] = list(reversed(body))
    fields_of = _FIELDS
    name_kind, if_kind = ast.Name, ast.If
    while stack:
        node = stack.pop()
        kind = node.__class__
        if kind in keep:
            out.append(node)
        if kind is name_kind:
            name = node.id  # type: ignore[attr-defined]
            used.add(name)
            if name in deferred:
                stack.extend(reversed(deferred.pop(name)))
            continue
        fields = fields_of.get(kind)
        if fields is None:
            fields = _child_fields(kind)
        if not fields:
            continue
        children: list[ast.AST]
        if kind in _FUNCTIONS:
            args = node.args  # type: ignore[attr-defined]
            children = [*node.decorator_list, *args.defaults,  # type: ignore[attr-defined]
                        *(d for d in args.kw_defaults if d is not None)]
            if node.name in used or node.name in factories:  # type: ignore[attr-defined]
                children += node.body  # type: ignore[attr-defined]
            else:
                deferred.setdefault(node.name, []).extend(node.body)  # type: ignore[attr-defined]
        elif kind is if_kind and _never_runs(node):  # type: ignore[arg-type]
            children = [node.test, *node.orelse]  # type: ignore[attr-defined]
        else:
            children = []
            for field in fields:
                value = getattr(node, field, None)
                if value.__class__ is list:
                    children += value
                elif value is not None:
                    children.append(value)
            if kind in _HOLES and None in children:
                children = [child for child in children if child is not None]
        stack.extend(reversed(children))
    return out


# Fields that never hold a node the screen looks at: names and numbers, the Load/Store
# markers, operators, and ``import`` aliases (read from the statement itself).
_SCALAR_FIELDS = frozenset({
    "ctx", "op", "ops", "id", "attr", "arg", "name", "names", "asname", "module", "level",
    "simple", "type_comment", "type_ignores", "kind", "conversion", "is_async", "kwd_attrs",
    "rest", "tag", "lineno",
})
_FIELDS: dict[type, tuple[str, ...]] = {}
# Node classes with a list field that may hold None (``{**x}``'s key, a keyword-only
# parameter without a default).
_HOLES = frozenset({ast.Dict, ast.arguments})


def _child_fields(kind: type) -> tuple[str, ...] | list[str]:
    """The fields of a node class that hold nodes, looked up once per class: half the
    cost of visiting every field of every node."""
    if kind not in _FIELDS:
        scalar = kind in (ast.Constant, ast.MatchSingleton)  # their ``value`` is data
        _FIELDS[kind] = () if scalar else tuple(
            f for f in kind._fields if f not in _SCALAR_FIELDS)  # type: ignore[attr-defined]
    return _FIELDS[kind]


def _callable_without_arguments(func: ast.FunctionDef | ast.Lambda) -> bool:
    """Every parameter has a default: ``func()`` is a valid call."""
    args = func.args
    positional = len(args.posonlyargs) + len(args.args)
    return positional <= len(args.defaults) and all(d is not None for d in args.kw_defaults)


def _returns_value(func: ast.FunctionDef) -> bool:
    """True when the function's own body has ``return <value>`` and no ``yield``.

    A function with no such return always returns None, so it cannot be a
    workflow factory; a generator returns a generator. Nested scopes are not
    the function's own returns.
    """
    nodes = _walk(list(func.body), prune=_NESTED_SCOPES)
    if any(node.__class__ in (ast.Yield, ast.YieldFrom) for node in nodes):
        return False
    return any(
        node.__class__ is ast.Return
        and node.value is not None  # type: ignore[attr-defined]
        and not (isinstance(node.value, ast.Constant) and node.value.value is None)  # type: ignore[attr-defined]
        for node in nodes
    )


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run at import, descending into if/try/with blocks.

    The body of ``if __name__ == "__main__":`` (or ``if TYPE_CHECKING:``) never runs on import.
    """
    out: list[ast.stmt] = []
    stack = list(reversed(body))
    while stack:
        stmt = stack.pop()
        out.append(stmt)
        blocks: list[list[ast.stmt]] = []
        if isinstance(stmt, ast.If):
            if _never_runs(stmt):
                blocks = [stmt.orelse]
            else:
                blocks = [stmt.body, stmt.orelse]
        elif isinstance(stmt, ast.Try):
            blocks = [stmt.body, *(h.body for h in stmt.handlers), stmt.orelse, stmt.finalbody]
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            blocks = [stmt.body]
        for block in reversed(blocks):
            stack.extend(reversed(block))
    return out


def _main_guard_calls(body: list[ast.stmt]) -> set[str]:
    """Names the file itself calls under ``if __name__ == "__main__":``."""
    called: set[str] = set()
    for stmt in body:
        if isinstance(stmt, ast.If) and is_main_guard(stmt.test):
            for node in _walk([stmt]):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    called.add(node.func.id)
    return called


# Calls that, made at module level, typically wait: on time, input, a server or a peer.
BLOCKING_CALLS = frozenset({
    "sleep", "input", "serve_forever", "run_forever", "run_until_complete", "run",
    "join", "wait", "accept", "recv",
})


def _may_block(statements: list[ast.stmt]) -> bool:
    """A ``while`` loop or a blocking call among the statements that run at import.

    Only a hint: such files go to a worker first and alone, so if one hangs,
    its timeout runs alongside the rest of the scan instead of after it.
    """
    for stmt in statements:
        if stmt.__class__ is ast.While:
            return True
        value = getattr(stmt, "value", None)  # `f()` and `x = f()`
        if value.__class__ is ast.Call:
            func = value.func  # type: ignore[union-attr]
            name = getattr(func, "attr", None) or getattr(func, "id", None)
            if name in BLOCKING_CALLS:
                return True
    return False


def _factories(tree: ast.Module, statements: list[ast.stmt]) -> tuple[str, ...]:
    excluded = _main_guard_calls(tree.body)
    names: list[str] = []
    for stmt in statements:
        if (
            isinstance(stmt, ast.FunctionDef)
            and _callable_without_arguments(stmt)
            and _returns_value(stmt)
        ):
            names.append(stmt.name)
        elif (
            isinstance(stmt, ast.Assign)
            and isinstance(stmt.value, ast.Lambda)
            and _callable_without_arguments(stmt.value)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
        ):
            names.append(stmt.targets[0].id)
    return tuple(dict.fromkeys(n for n in names if n not in excluded and not n.startswith("_")))


# Calls that import a module named by their first argument (or this keyword).
_IMPORT_CALLS = {"import_module": "name", "__import__": "name", "run_module": "mod_name"}
# Calls that run a file named by a path: the argument's index and keyword.
_PATH_CALLS = {"run_path": (0, "path_name"), "spec_from_file_location": (1, "location"),
               "SourceFileLoader": (1, "path")}
# Calls that put a directory on ``sys.path``: the argument's index.
_SYS_PATH_CALLS = {"sys.path.insert": 1, "sys.path.append": 0, "site.addsitedir": 0}
# Path functions and methods that keep the place a path names.
_SAME_PLACE = frozenset({"abspath", "realpath", "normpath", "fspath", "str", "Path", "PurePath",
                         "PosixPath", "resolve", "absolute", "expanduser"})

_Place = tuple[str, int, tuple[str, ...]]  # anchor, levels up, then down these parts


def _join(place: _Place, part: str) -> _Place:
    anchor, ups, tail = place
    if part.startswith("/"):
        anchor, ups, tail = ANCHOR_ABSOLUTE, 0, ()
    for piece in part.split("/"):
        if piece == "..":
            if tail:
                tail = tail[:-1]
            else:
                ups += 1
        elif piece and piece != ".":
            tail = (*tail, piece)
    return anchor, ups, tail


def _up(place: _Place) -> _Place:
    return _join(place, "..")


def _strings(node: ast.expr) -> list[str] | None:
    """A literal list or tuple of strings, else None."""
    if isinstance(node, (ast.List, ast.Tuple)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return [e.value for e in node.elts]  # type: ignore[attr-defined]
    return None


def _literal(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _argument(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


# What ``_Scanner.scan`` looks at in the code that runs.
_LIVE_KINDS = frozenset({ast.Call, ast.ImportFrom, ast.Import, ast.Assign, ast.AugAssign,
                         ast.For})

# What it looks at anywhere in a file that may define models.
_MODEL_KINDS = frozenset({ast.ImportFrom, ast.Import, ast.Assign, ast.AnnAssign, ast.ClassDef,
                          ast.Call})


class _Scanner:
    """Passes over the tree collecting imports, DataFlow bindings and ``.model`` uses."""

    def __init__(self) -> None:
        self.imports: list[ImportRef] = []
        self.dataflow_import: int | None = None  # first import of dataflow that runs
        self.imports_dataflow = False  # anywhere in the file, run or not
        # local name -> dotted path inside the dataflow package ("dataflow", "dataflow.DataFlow")
        self.dataflow_names: dict[str, str] = {}
        # local name -> the import that bound it (`from x import name`)
        self.imported_from: dict[str, ImportRef] = {}
        self.instances: dict[str, int] = {}
        self.model_uses: list[tuple[str, str, int]] = []
        self.node_types: dict[str, None] = {}
        self.places: dict[str, _Place] = {}  # names bound to a path the screen can follow
        self.names: dict[str, list[str]] = {}  # names bound to literal strings (or lists)
        self.path_entries: list[PathRef] = []
        self.run_paths: list[PathRef] = []
        self.exports: list[str] = []

    def scan(self, tree: ast.Module, factories: tuple[str, ...], models_possible: bool) -> None:
        """Collect what runs on import; look for DataFlow bindings only where the bytes
        allow any (everywhere in the file: a model defined anywhere makes a model file)."""
        for node in _live_nodes(tree.body, frozenset(factories), _LIVE_KINDS):
            kind = node.__class__  # ast.parse builds exact classes: cheaper than isinstance
            if kind is ast.Call:
                self._call(node)  # type: ignore[arg-type]
            elif kind is ast.ImportFrom:
                self._import_from(node, live=True)  # type: ignore[arg-type]
            elif kind is ast.Import:
                self._import(node, live=True)  # type: ignore[arg-type]
            elif kind in (ast.Assign, ast.AugAssign):
                self._live_assign(node)  # type: ignore[arg-type]
            elif kind is ast.For:
                self._for(node)  # type: ignore[arg-type]
        if not models_possible:
            return
        nodes = [node for node in _walk([tree]) if node.__class__ in _MODEL_KINDS]
        for node in nodes:  # bindings first: they must be known before calls are classified
            if node.__class__ is ast.ImportFrom:
                self._import_from(node, live=False)  # type: ignore[arg-type]
            elif node.__class__ is ast.Import:
                self._import(node, live=False)  # type: ignore[arg-type]
        for node in nodes:
            kind = node.__class__
            if kind is ast.Assign or kind is ast.AnnAssign:
                self._assign(node)  # type: ignore[arg-type]
            elif kind is ast.ClassDef:
                for deco in node.decorator_list:  # type: ignore[attr-defined]
                    self._model_target(deco, node.name, deco.lineno)  # type: ignore[attr-defined]
            elif kind is ast.Call:
                func = node.func  # type: ignore[attr-defined]
                if isinstance(func, ast.Attribute) and func.attr == "model" and node.args:
                    arg = node.args[0]
                    cls = arg.id if isinstance(arg, ast.Name) else "<expr>"
                    target = _dotted(func.value)
                    if target:
                        self.model_uses.append((target, cls, node.lineno))

    def _call(self, node: ast.Call) -> None:
        """Node types, literal dynamic imports, files run by path, ``sys.path`` entries."""
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "add_node":
            # ``add_node("CSVReaderNode", ...)`` or ``add_node(node_type="CSVReaderNode")``
            node_type = _literal(_argument(node, 0, "node_type"))
            if node_type:
                self.node_types[node_type] = None
        elif name in _IMPORT_CALLS:
            fromlist = tuple(_strings(_argument(node, 3, "fromlist") or ast.List(elts=[])) or ())
            for module in self._texts(_argument(node, 0, _IMPORT_CALLS[name])):
                stripped = module.lstrip(".")
                self._add_import(ImportRef(stripped, fromlist, len(module) - len(stripped),
                                           node.lineno))
        elif name in _PATH_CALLS:
            index, keyword = _PATH_CALLS[name]
            self._add_place(self.run_paths, _argument(node, index, keyword), node.lineno)
        else:
            dotted = _dotted(func)
            if dotted in _SYS_PATH_CALLS:
                self._add_place(self.path_entries, _argument(node, _SYS_PATH_CALLS[dotted], ""),
                                node.lineno)
            elif dotted == "sys.path.extend" and node.args:
                self._add_places(node.args[0], node.lineno)
            elif dotted in ("__all__.extend", "__all__.append") and node.args:
                arg = node.args[0]
                self.exports += _strings(arg) or [v for v in [_literal(arg)] if v]

    def _texts(self, node: ast.expr | None) -> list[str]:
        """The literal strings an expression is: a string, or a name bound to strings
        (``NAME = "models"``, ``for name in ["a", "b"]:``)."""
        text = _literal(node)
        if text:
            return [text]
        return list(self.names.get(node.id, [])) if isinstance(node, ast.Name) else []

    def _for(self, node: ast.For) -> None:
        """``for name in ["plugins.a", "plugins.b"]:`` binds ``name`` to each string."""
        if isinstance(node.target, ast.Name):
            values = _strings(node.iter)
            if values is None and isinstance(node.iter, ast.Name):
                values = self.names.get(node.iter.id)
            if values:
                self.names[node.target.id] = list(values)

    def _live_assign(self, node: ast.Assign | ast.AugAssign) -> None:
        """``here = Path(__file__).parent``, ``sys.path[:0] = [...]``, ``__all__ = [...]``."""
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            dotted = _dotted(target.value if isinstance(target, ast.Subscript) else target)
            if dotted == "sys.path":
                self._add_places(node.value, node.lineno)
            elif dotted == "__all__":
                self.exports += _strings(node.value) or []
            elif isinstance(target, ast.Name):
                place = self._place(node.value)
                if place is not None:
                    self.places[target.id] = place
                values = _strings(node.value) or [v for v in [_literal(node.value)] if v]
                if values and isinstance(node, ast.Assign):
                    self.names[target.id] = values

    def _place(self, node: ast.expr | None, depth: int = 0) -> _Place | None:
        """Where a path expression points, from literals, ``__file__`` and names bound to
        such paths; None when the screen cannot tell."""
        if node is None or depth > 20:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            anchor = ANCHOR_ABSOLUTE if node.value.startswith("/") else ANCHOR_CWD
            return _join((anchor, 0, ()), node.value)
        if isinstance(node, ast.Name):
            return (ANCHOR_FILE, 0, ()) if node.id == "__file__" else self.places.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            inner = self._place(node.value, depth + 1)
            return _up(inner) if inner else None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            left, right = self._place(node.left, depth + 1), _literal(node.right)
            return _join(left, right) if left and right is not None else None
        if not isinstance(node, ast.Call):
            return None
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        receiver = func.value if isinstance(func, ast.Attribute) else None
        if name == "getcwd" or (name in ("Path", "PurePath") and not node.args):
            return ANCHOR_CWD, 0, ()
        if name in ("join", "joinpath"):
            # os.path.join(a, "b") or path.joinpath("b")
            parts = node.args if name == "join" else [receiver, *node.args]
            place = self._place(parts[0], depth + 1) if parts else None
            for part in parts[1:]:
                text = _literal(part)
                if place is None or text is None:
                    return None
                place = _join(place, text)
            return place
        if name == "dirname" and node.args:
            inner = self._place(node.args[0], depth + 1)
            return _up(inner) if inner else None
        if name in _SAME_PLACE:
            target = node.args[0] if node.args else receiver
            return self._place(target, depth + 1) if target is not None else None
        return None

    def _add_place(self, into: list[PathRef], node: ast.expr | None, line: int) -> None:
        place = self._place(node)
        if place is not None:
            into.append(PathRef(place[0], place[1], "/".join(place[2]), line))

    def _add_places(self, node: ast.expr, line: int) -> None:
        """Every element of the lists in ``node`` (``[a] + sys.path``, ``[a, b]``)."""
        for element in _walk([node]):
            if isinstance(element, (ast.List, ast.Tuple)):
                for item in element.elts:
                    self._add_place(self.path_entries, item, line)

    def _add_import(self, ref: ImportRef) -> None:
        self.imports.append(ref)
        if ref.level == 0 and ref.module.split(".")[0] == DATAFLOW_PACKAGE:
            self.dataflow_import = self.dataflow_import or ref.line

    def _import(self, node: ast.Import, live: bool) -> None:
        for alias in node.names:
            if live:
                self._add_import(ImportRef(alias.name, (), 0, node.lineno))
            top = alias.name.split(".")[0]
            if top == DATAFLOW_PACKAGE:
                self.imports_dataflow = True
                if alias.asname:
                    self.dataflow_names[alias.asname] = alias.name
                else:
                    self.dataflow_names[top] = top

    def _import_from(self, node: ast.ImportFrom, live: bool) -> None:
        module = node.module or ""
        names = tuple(alias.name for alias in node.names)
        ref = ImportRef(module, names, node.level, node.lineno)
        if live:
            self._add_import(ref)
        from_dataflow = node.level == 0 and module.split(".")[0] == DATAFLOW_PACKAGE
        self.imports_dataflow = self.imports_dataflow or from_dataflow
        for alias in node.names:
            local = alias.asname or alias.name
            if from_dataflow:
                self.dataflow_names[local] = f"{module}.{alias.name}"
            elif alias.name != "*":
                self.imported_from[local] = ref

    def _is_dataflow_class(self, func: ast.expr) -> bool:
        dotted = _dotted(func)
        if not dotted:
            return False
        head, _, rest = dotted.partition(".")
        if head not in self.dataflow_names:
            return False
        full = self.dataflow_names[head] + ("." + rest if rest else "")
        return full.split(".")[-1] == DATAFLOW_CLASS

    def _assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        value = node.value
        if not (isinstance(value, ast.Call) and self._is_dataflow_class(value.func)):
            return
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            dotted = _dotted(target)
            if dotted:
                self.instances.setdefault(dotted, node.lineno)
        self.instances.setdefault("<DataFlow(...)>", node.lineno)

    def _model_target(self, deco: ast.expr, cls: str, line: int) -> None:
        if isinstance(deco, ast.Call):
            deco = deco.func
        if isinstance(deco, ast.Attribute) and deco.attr == "model":
            target = _dotted(deco.value)
            if target:
                self.model_uses.append((target, cls, line))

    def verdict(self) -> tuple[str | None, tuple[ModelUse, ...]]:
        """The in-file reason this is a DataFlow file, plus uses to resolve across files."""
        external: list[ModelUse] = []
        for target, cls, line in self.model_uses:
            head = target.split(".")[0]
            is_dataflow = (
                target in self.instances
                or head in self.dataflow_names
                or self.imports_dataflow
            )
            if is_dataflow:
                return f"{cls} at line {line} via {target}.model", ()
            if head in self.imported_from:
                external.append(ModelUse(head, cls, line, self.imported_from[head]))
        if self.instances:
            line = min(self.instances.values())
            return f"creates a DataFlow instance at line {line}", ()
        if self.dataflow_import is not None:
            return f"imports dataflow at line {self.dataflow_import}", ()
        return None, tuple(external)


_QUIET = threading.Lock()


def _ast_parse(data: bytes) -> ast.Module:
    """``ast.parse``, independent of the caller's warning filters.

    Under ``-W error`` a compile-time warning (an invalid escape sequence) is
    raised as a SyntaxError; a valid file must not become an error for that, so
    a SyntaxError is retried once with warnings silenced.
    """
    try:
        return ast.parse(data)
    except SyntaxError:
        return quietly(ast.parse, data)


def quietly(call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)`` with warnings silenced: whatever the caller's filters, no
    compile-time warning of a file's is an error here, or a line on the server's stderr."""
    with _QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args)


# Building the syntax tree's objects recurses once per level of nesting against the
# recursion limit, which counts the caller's own frames: a file nested near the limit
# would parse in a shallow process (a read-ahead) and not in the server deep in a scan.
# A parse that runs out retries with this much room above the caller, whoever it is, and
# the reader compiles with it (``with_room``).
RECURSION_ROOM = 1000
_ROOM = threading.Lock()


def _frames() -> int:
    frame, count = sys._getframe(), 0
    while frame is not None:
        frame, count = frame.f_back, count + 1
    return count


def with_room(call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)`` with at least ``RECURSION_ROOM`` frames of recursion above this
    one; the limit is only ever raised, and only while the call runs. The parser, and on
    3.11 the compiler, recurse as deep as the code nests, against a limit that counts
    the caller's own frames: given this room, what they make of a file does not depend
    on who asks (the server deep in a scan, or a read-ahead process)."""
    with _ROOM:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, _frames() + RECURSION_ROOM))
        try:
            return call(*args)
        finally:
            sys.setrecursionlimit(limit)


def parse(data: bytes) -> ast.Module | str:
    """The AST, or an error message with the line."""
    nul = data.find(b"\0")
    if nul >= 0:
        return MSG_NUL.format(line=data.count(b"\n", 0, nul) + 1, offset=nul)
    try:
        try:
            return _ast_parse(data)
        except RecursionError:
            return with_room(_ast_parse, data)
    except SyntaxError as exc:
        message = MSG_DECODE if _ENCODING_WORDS.search(exc.msg or "") else MSG_SYNTAX
        return message.format(what=exc.msg, line=exc.lineno or 1)
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return MSG_SYNTAX.format(what=f"{type(exc).__name__}: {exc}", line=1)


def analyze(data: bytes) -> Facts:
    """Screen one file's bytes. Never raises."""
    return analyze_tree(data, parse(data))


def analyze_tree(data: bytes, parsed: ast.Module | str) -> Facts:
    """``analyze`` of bytes already parsed (``parse(data)``)."""
    if isinstance(parsed, str):
        return Facts(error=parsed)
    try:
        statements = _module_level(parsed.body)
        factories = _factories(parsed, statements)
        scanner = _Scanner()
        # A file without these bytes can neither import dataflow nor use `.model`.
        scanner.scan(parsed, factories, models_possible=b"dataflow" in data or b"model" in data)
        model, external = scanner.verdict()
        return Facts(
            model=model,
            imports=tuple(scanner.imports),
            external_model_uses=external,
            factories=factories,
            node_types=tuple(scanner.node_types),
            may_block=_may_block(statements),
            path_entries=tuple(scanner.path_entries),
            run_paths=tuple(scanner.run_paths),
            exports=tuple(dict.fromkeys(scanner.exports)),
            model_classes=tuple(dict.fromkeys(
                cls for _, cls, _ in scanner.model_uses if cls != "<expr>")),
        )
    except RecursionError:
        return Facts(error=MSG_SYNTAX.format(what="nesting too deep to analyse", line=1))


def facts_to_json(facts: Facts) -> list[Any]:
    """``Facts`` as a JSON list in field order: without a key per field, a cache
    of 10,000 files parses in two thirds of the time."""
    return [
        facts.error,
        facts.model,
        [list(i) for i in facts.imports],
        [[u.name, u.cls, u.line, list(u.source)] for u in facts.external_model_uses],
        list(facts.factories),
        list(facts.node_types),
        facts.may_block,
        [list(p) for p in facts.path_entries],
        [list(p) for p in facts.run_paths],
        list(facts.exports),
        facts.stalled,
        list(facts.model_classes),
    ]


# A pool process's first line (see ``cache.py``): its imports are done.
READY = b"ready"


def screen_listed(paths: list[str], out: IO[bytes], limit: int) -> None:
    """In a pool process: one line per file, in order, as soon as it is screened: the
    sha256 of the bytes judged and their facts, or ``null`` for a file the server
    screens itself (unreadable here, or grown past ``limit`` bytes). The first
    line says the process is ready."""
    out.write(READY + b"\n")
    out.flush()
    for path in paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError:
            data = b""
        answer = None
        if 0 < len(data) <= limit:
            answer = [hashlib.sha256(data).hexdigest(), facts_to_json(analyze(data))]
        out.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
        out.flush()
