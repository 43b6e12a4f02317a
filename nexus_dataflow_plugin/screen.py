"""Stage 2: the static screen. Reads a file's bytes, never imports or runs it.

It answers four questions from the AST alone:
- does this file define DataFlow models (or create a DataFlow instance)?
- which modules does it import (for the import graph in ``imports.py``)?
- which of its own functions could be workflow factories (for the worker)?
- does it loop or make a blocking call at import (a hint for scheduling)?

It never raises: whatever bytes it is given, the answer is a ``Facts`` value,
with ``error`` set when the bytes are not valid Python.
"""

from __future__ import annotations

import ast
import re
import threading
import warnings
from typing import NamedTuple

from .report import MSG_DECODE, MSG_NUL, MSG_SYNTAX

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
    """Every node under ``roots``, in ``ast.walk``'s order, without the ``Load``/``Store``
    context markers: about half of ``ast.walk``'s cost, which dominates the screen after
    parsing. Nodes of a ``prune`` class are listed but not entered."""
    out = list(roots)
    i = 0
    while i < len(out):
        node = out[i]
        i += 1
        if node.__class__ in prune:
            continue
        for name in node._fields:
            value = getattr(node, name, None)
            if value.__class__ is list:
                out.extend([v for v in value if isinstance(v, ast.AST)])
            elif isinstance(value, ast.AST) and name != "ctx":
                out.append(value)
    return out


def _is_main_guard(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return bool(names and consts)


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

    The body of ``if __name__ == "__main__":`` never runs on import.
    """
    out: list[ast.stmt] = []
    stack = list(reversed(body))
    while stack:
        stmt = stack.pop()
        out.append(stmt)
        blocks: list[list[ast.stmt]] = []
        if isinstance(stmt, ast.If):
            if _is_main_guard(stmt.test):
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
        if isinstance(stmt, ast.If) and _is_main_guard(stmt.test):
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


class _Scanner:
    """One pass over the tree collecting imports, DataFlow bindings and ``.model`` uses."""

    def __init__(self) -> None:
        self.imports: list[ImportRef] = []
        self.dataflow_import: int | None = None
        # local name -> dotted path inside the dataflow package ("dataflow", "dataflow.DataFlow")
        self.dataflow_names: dict[str, str] = {}
        # local name -> the import that bound it (`from x import name`)
        self.imported_from: dict[str, ImportRef] = {}
        self.instances: dict[str, int] = {}
        self.model_uses: list[tuple[str, str, int]] = []
        self.node_types: dict[str, None] = {}

    def scan(self, tree: ast.Module, models_possible: bool = True) -> None:
        """Collect imports; look for DataFlow bindings only where the bytes allow any."""
        nodes = _walk([tree])
        # Imports first: bindings must be known before calls are classified.
        for node in nodes:
            kind = node.__class__  # ast.parse builds exact classes: cheaper than isinstance
            if kind is ast.Call:
                self._add_node(node)  # type: ignore[arg-type]
            elif kind is ast.ImportFrom:
                self._import_from(node)  # type: ignore[arg-type]
            elif kind is ast.Import:
                self._import(node)  # type: ignore[arg-type]
        if not models_possible:
            return
        for node in nodes:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                self._assign(node)
            elif isinstance(node, ast.ClassDef):
                for deco in node.decorator_list:
                    self._model_target(deco, node.name, deco.lineno)
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "model" and node.args:
                    arg = node.args[0]
                    cls = arg.id if isinstance(arg, ast.Name) else "<expr>"
                    target = _dotted(func.value)
                    if target:
                        self.model_uses.append((target, cls, node.lineno))

    def _add_node(self, node: ast.Call) -> None:
        """``x.add_node("CSVReaderNode", ...)`` or ``add_node(node_type="...")``: a node
        type the worker should have loaded (or stand in for, if DataFlow generates it)."""
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "add_node"):
            return
        named = [k.value for k in node.keywords if k.arg == "node_type"]
        for first in node.args[:1] + named:
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self.node_types[first.value] = None

    def _import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.append(ImportRef(alias.name, (), 0, node.lineno))
            top = alias.name.split(".")[0]
            if top == DATAFLOW_PACKAGE:
                self.dataflow_import = self.dataflow_import or node.lineno
                if alias.asname:
                    self.dataflow_names[alias.asname] = alias.name
                else:
                    self.dataflow_names[top] = top

    def _import_from(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        names = tuple(alias.name for alias in node.names)
        ref = ImportRef(module, names, node.level, node.lineno)
        self.imports.append(ref)
        from_dataflow = node.level == 0 and module.split(".")[0] == DATAFLOW_PACKAGE
        if from_dataflow:
            self.dataflow_import = self.dataflow_import or node.lineno
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
                or self.dataflow_import is not None
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
        with _QUIET, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(data)


def _parse(data: bytes) -> ast.Module | str:
    """The AST, or an error message with the line."""
    nul = data.find(b"\0")
    if nul >= 0:
        return MSG_NUL.format(line=data.count(b"\n", 0, nul) + 1, offset=nul)
    try:
        return _ast_parse(data)
    except SyntaxError as exc:
        message = MSG_DECODE if _ENCODING_WORDS.search(exc.msg or "") else MSG_SYNTAX
        return message.format(what=exc.msg, line=exc.lineno or 1)
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return MSG_SYNTAX.format(what=f"{type(exc).__name__}: {exc}", line=1)


def analyze(data: bytes) -> Facts:
    """Screen one file's bytes. Never raises."""
    parsed = _parse(data)
    if isinstance(parsed, str):
        return Facts(error=parsed)
    try:
        scanner = _Scanner()
        # A file without these bytes can neither import dataflow nor use `.model`.
        scanner.scan(parsed, models_possible=b"dataflow" in data or b"model" in data)
        model, external = scanner.verdict()
        statements = _module_level(parsed.body)
        return Facts(
            model=model,
            imports=tuple(scanner.imports),
            external_model_uses=external,
            factories=_factories(parsed, statements),
            node_types=tuple(scanner.node_types),
            may_block=_may_block(statements),
            model_classes=tuple(dict.fromkeys(
                cls for _, cls, _ in scanner.model_uses if cls != "<expr>")),
        )
    except RecursionError:
        return Facts(error=MSG_SYNTAX.format(what="nesting too deep to analyse", line=1))
