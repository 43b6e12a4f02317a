"""The package's layout rules, checked on its source (nothing is imported or run).

A leading underscore means "used only inside the module that defines it":
no module file carries one (``__init__.py`` aside), and no module reaches for
another module's underscore name, by ``from .x import _y``,
``from nexus_dataflow_plugin.x import _y`` or ``x._y`` where ``x`` names one of
the package's modules. Dunder names (``__file__``, ``__name__``) are not private.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import nexus_dataflow_plugin

PACKAGE = Path(nexus_dataflow_plugin.__file__).resolve().parent
NAME = PACKAGE.name


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def modules() -> dict[str, Path]:
    """Module name (``__init__`` for the package) to file."""
    return {path.stem: path for path in sorted(PACKAGE.glob("*.py"))}


def imported_module(node: ast.ImportFrom) -> str | None:
    """The package's module a ``from ... import`` reads from (``__init__`` for the
    package itself), or None when it reads from elsewhere."""
    if node.level > 1:
        return None
    if node.level == 1:
        return node.module or "__init__"
    if node.module == NAME:
        return "__init__"
    prefix = NAME + "."
    if node.module and node.module.startswith(prefix):
        return node.module[len(prefix):]
    return None


def foreign_private_uses(module: str, tree: ast.AST, ours: set[str]) -> Iterator[str]:
    """``target._name`` for each of another module's private names that ``tree`` uses."""
    aliases: dict[str, str] = {}  # local name -> our module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (source := imported_module(node)) is not None:
            for alias in node.names:
                local = alias.asname or alias.name
                if source == "__init__" and alias.name in ours:
                    aliases[local] = alias.name  # from . import report as r
                elif private(alias.name) and source != module:
                    yield f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                head, _, rest = alias.name.partition(".")
                if head == NAME and rest in ours and alias.asname:
                    aliases[alias.asname] = rest  # import nexus_dataflow_plugin.x as y
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and private(node.attr)
            and isinstance(node.value, ast.Name)
            and aliases.get(node.value.id, module) != module
        ):
            yield f"{aliases[node.value.id]}.{node.attr}"
        elif (  # nexus_dataflow_plugin.x._y, spelt out
            isinstance(node, ast.Attribute)
            and private(node.attr)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == NAME
            and node.value.attr in ours
            and node.value.attr != module
        ):
            yield f"{node.value.attr}.{node.attr}"


def private_definitions(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, methods, assigned names and
    attributes (``self._x = ...``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {name for name in names if private(name)}


def foreign_member_uses(
    tree: ast.AST, own: set[str], elsewhere: dict[str, set[str]]
) -> Iterator[str]:
    """``obj._name`` where ``_name`` is defined by other modules of the package and not by
    this one: an instance of another module's class, reached into (``graph._run_target``).
    Private names of other libraries (Nexus's ``app._workflows``) are not ours to rule."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in own:
            owners = sorted(m for m, names in elsewhere.items() if node.attr in names)
            if owners:
                yield " or ".join(f"{module}.{node.attr}" for module in owners)


def violations() -> set[tuple[str, str]]:
    found = modules()
    ours = set(found) - {"__init__"}
    trees = {module: ast.parse(path.read_text(), str(path)) for module, path in found.items()}
    defined = {module: private_definitions(tree) for module, tree in trees.items()}
    uses = set()
    for module, tree in trees.items():
        uses |= {(module, use) for use in foreign_private_uses(module, tree, ours)}
        others = {m: names for m, names in defined.items() if m != module}
        uses |= {(module, use) for use in foreign_member_uses(tree, defined[module], others)}
    return uses


def test_no_module_of_the_package_uses_another_modules_underscore_names() -> None:
    unexpected = violations()
    assert not unexpected, "\n".join(
        f"{module}.py uses {use}: give it a public name in its own module"
        for module, use in sorted(unexpected)
    )


def test_no_module_file_of_the_package_starts_with_an_underscore() -> None:
    named = [name for name in modules() if name.startswith("_") and name != "__init__"]
    assert named == [], "a module name carries no underscore; private means inside a module"


def test_the_checker_sees_each_way_of_reaching_for_a_private_name() -> None:
    """The rule's own test: every spelling it promises to catch is caught, and a module's
    own names, dunders and other packages' names are not."""
    source = """
from .finder import _excluded
from nexus_dataflow_plugin.autoload import _PATCHED as patched
from . import startup
from . import report as r
import nexus_dataflow_plugin.plugin as p
import nexus_dataflow_plugin
from .cli import _own
from .cli import main
from os import _exit

startup._Finder
r._COLOURS
p._not_registered
nexus_dataflow_plugin.watch._roots
startup.__file__
_own._x
os._exit
"""
    ours = set(modules()) - {"__init__"}
    found = sorted(foreign_private_uses("cli", ast.parse(source), ours))
    assert found == sorted([
        "finder._excluded", "autoload._PATCHED", "startup._Finder", "report._COLOURS",
        "plugin._not_registered", "watch._roots",
    ])


def test_the_checker_sees_a_private_member_of_another_modules_object() -> None:
    source = """
class Local:
    def __init__(self):
        self._mine = 1

def use(graph, app, other):
    graph._run_target(None)
    other._mine
    app._workflows
"""
    tree = ast.parse(source)
    elsewhere = {"imports": {"_run_target"}, "cli": set()}
    found = list(foreign_member_uses(tree, private_definitions(tree), elsewhere))
    assert found == ["imports._run_target"]
