"""Stage 3: the local import graph. Does a file reach a DataFlow model module?

Only modules inside the project (under the base path, or under a ``sys.path``
entry inside it) are followed; installed libraries are not the project's
models. Importing ``pkg.mod`` also runs ``pkg/__init__.py``, so packages on the
way count; a package whose ``__init__`` is clean does not taint its siblings.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ._paths import in_project
from .screen import Facts, ImportRef

FactsOf = Callable[[Path], Facts]


@dataclass(frozen=True)
class Taint:
    """Why a module reaches DataFlow models: the chain of files and the model detail."""

    chain: tuple[Path, ...]
    detail: str


def _module_files(root: Path, dotted: str) -> list[Path]:
    """Files that run when ``dotted`` is imported from ``root``: package inits, then the module."""
    parts = [p for p in dotted.split(".") if p]
    files: list[Path] = []
    here = root
    for i, part in enumerate(parts):
        here = here / part
        last = i == len(parts) - 1
        init = here / "__init__.py"
        if init.is_file():
            files.append(init)
        elif last and here.with_suffix(".py").is_file():
            files.append(here.with_suffix(".py"))
        elif not here.is_dir():
            return files if files else []
    return files


class ImportGraph:
    """Resolves a file's local imports and finds a chain to a DataFlow module.

    ``facts_of`` screens a file (usually through the cache); results are
    memoised per graph, so a shared model module is screened once per scan.
    """

    def __init__(self, roots: Iterable[Path], facts_of: FactsOf) -> None:
        self.roots = tuple(dict.fromkeys(r.resolve() for r in roots))
        self.facts_of = facts_of
        self._taint: dict[Path, Taint | None] = {}
        self._own: dict[Path, str | None] = {}
        self._edges: dict[Path, list[Path]] = {}
        self._modules: dict[tuple[Path, str], list[Path]] = {}

    def _inside(self, path: Path) -> bool:
        return any(in_project(path, root) for root in self.roots)

    def resolve(self, importer: Path, ref: ImportRef) -> list[Path]:
        """Project files that run when ``importer`` executes ``ref``."""
        if ref.level:
            base = importer.parent
            for _ in range(ref.level - 1):
                base = base.parent
            bases = [base]
        else:
            bases = list(self.roots)
        for base in bases:
            files = self._files(base, ref.module) if ref.module else []
            for name in ref.names:
                if name == "*":
                    continue
                sub = f"{ref.module}.{name}" if ref.module else name
                files += [f for f in self._files(base, sub) if f not in files]
            if files:
                return files
        return []

    def _files(self, base: Path, dotted: str) -> list[Path]:
        """Resolved project files for one module name, memoised: most files share imports."""
        key = (base, dotted)
        if key not in self._modules:
            found = [f.resolve() for f in _module_files(base, dotted)]
            self._modules[key] = [f for f in found if self._inside(f)]
        return list(self._modules[key])

    def edges(self, path: Path) -> list[Path]:
        """Project files ``path`` imports, directly (memoised)."""
        if path not in self._edges:
            facts = self.facts_of(path)
            targets: dict[Path, None] = {}
            for ref in facts.imports:
                targets.update(dict.fromkeys(self.resolve(path, ref)))
            self._edges[path] = [t for t in targets if t != path]
        return self._edges[path]

    def taint(self, path: Path) -> Taint | None:
        """The shortest chain from ``path`` (resolved) to a module that defines DataFlow models."""
        if path in self._taint:
            return self._taint[path]
        self._taint[path] = None  # guards recursion through own_model
        parents: dict[Path, Path | None] = {path: None}
        queue = deque([path])
        result: Taint | None = None
        while queue:
            node = queue.popleft()
            detail = self.own_model(node)
            if detail is not None:
                chain = [node]
                while parents[chain[-1]] is not None:
                    chain.append(parents[chain[-1]])
                result = Taint(tuple(reversed(chain)), detail)
                break
            for target in self.edges(node):
                if target not in parents:
                    parents[target] = node
                    queue.append(target)
        self._taint[path] = result
        return result

    def own_model(self, path: Path) -> str | None:
        """Why this file itself defines models: in-file evidence, or ``@x.model``
        where ``x`` is imported from a module that reaches DataFlow."""
        if path in self._own:
            return self._own[path]
        self._own[path] = None  # an import cycle back here finds no model
        facts = self.facts_of(path)
        detail = facts.model
        if detail is None:
            for use in facts.external_model_uses:
                if any(self.taint(t) for t in self.resolve(path, use.source)):
                    detail = (
                        f"{use.cls} at line {use.line} via {use.name}.model "
                        f"({use.name} is imported from a DataFlow module)"
                    )
                    break
        self._own[path] = detail
        return detail
