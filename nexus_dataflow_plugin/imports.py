"""Stage 3: the import graph. Does a file reach a DataFlow model module?

Imports resolve as the worker's interpreter would resolve them: against the
project root and every ``sys.path`` entry the worker has (``PYTHONPATH``
included), plus the directories a file puts on ``sys.path`` itself (they hold
for the modules it imports, too). Every
module found is screened, wherever it lives and through symlinks, except the
standard library and installed distributions: those are not the project's
models. Importing ``pkg.mod`` also runs ``pkg/__init__.py``, so packages on
the way count; a package whose ``__init__`` is clean does not taint its
siblings. A compiled module without source, or one whose screen ran out of
time, cannot be screened, so reaching one taints like a model module does,
flagged ``unscreenable``.

Nothing a file contains raises out of here: an unresolvable name (too long,
NUL bytes, a symlink loop) is simply not a project module.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from .paths import is_environment
from .report import MSG_SOURCELESS, MSG_STALLED_MODULE
from .screen import ANCHOR_ABSOLUTE, ANCHOR_FILE, Facts, ImportRef, PathRef

FactsOf = Callable[[Path], Facts]

# The import system's order for one directory: extension modules, source, bytecode.
_SUFFIXES = (*EXTENSION_SUFFIXES, ".py", ".pyc")
_PATH_ERRORS = (OSError, ValueError, RuntimeError)  # RuntimeError: a symlink loop (3.11)


@dataclass(frozen=True)
class Taint:
    """Why a module reaches DataFlow models: the chain of files and the model detail.

    ``unscreenable``: the chain ends in a module the screen cannot read (compiled
    without source, or its screen ran out of time).
    """

    chain: tuple[Path, ...]
    detail: str
    unscreenable: bool = False


def _sourceless(path: Path) -> bool:
    return path.suffix != ".py"


class ImportGraph:
    """Resolves a file's imports and finds a chain to a DataFlow module.

    ``roots`` are the worker's import path in order, the project root first.
    ``facts_of`` screens a file (usually through the cache); results are
    memoised per graph, so a shared model module is screened once per scan.
    """

    def __init__(self, roots: Iterable[Path], facts_of: FactsOf) -> None:
        self.roots = tuple(dict.fromkeys(self._real(r) or r for r in roots))
        self.facts_of = facts_of
        self._taint: dict[Path, Taint | None] = {}
        self._own: dict[Path, str | None] = {}
        self._edges: dict[tuple[Path, tuple[Path, ...]], list[Path]] = {}
        self._modules: dict[tuple[Path, str], list[Path]] = {}
        self._listings: dict[Path, dict[str, bool]] = {}
        self._unscreenable: set[Path] = set()

    @staticmethod
    def _real(path: Path) -> Path | None:
        try:
            return path.resolve()
        except _PATH_ERRORS:
            return None

    def _listing(self, directory: Path) -> dict[str, bool]:
        """Entry name -> is a directory, memoised: one ``scandir`` answers every lookup."""
        if directory not in self._listings:
            try:
                with os.scandir(directory) as entries:
                    self._listings[directory] = {e.name: e.is_dir() for e in entries}
            except _PATH_ERRORS:
                self._listings[directory] = {}
        return self._listings[directory]

    def _module_files(self, root: Path, dotted: str) -> list[Path]:
        """Files that run when ``dotted`` is imported from ``root``: package inits, then
        the module. A regular package wins over a module, a module over a namespace package."""
        files: list[Path] = []
        here = root
        for part in (p for p in dotted.split(".") if p):
            listing = self._listing(here)
            inner = self._listing(here / part) if listing.get(part) else {}
            init = next((f"__init__{s}" for s in _SUFFIXES if inner.get(f"__init__{s}") is False),
                        None)
            module = next((part + s for s in _SUFFIXES if listing.get(part + s) is False), None)
            if init:
                files.append(here / part / init)
            elif module:
                files.append(here / module)
                return files
            elif not listing.get(part):
                return files
            here = here / part
        return files

    def place(self, importer: Path, ref: PathRef) -> Path:
        """The path a ``PathRef`` names, for a file at ``importer``."""
        if ref.anchor == ANCHOR_FILE:
            start = importer
        elif ref.anchor == ANCHOR_ABSOLUTE:
            start = Path("/")
        else:
            start = self.roots[0]  # the worker runs in the project root
        for _ in range(min(ref.ups, len(start.parts))):  # past the root: the root
            start = start.parent
        return start / ref.tail if ref.tail else start

    def added(self, path: Path, inherited: tuple[Path, ...] = ()) -> tuple[Path, ...]:
        """The directories on ``sys.path`` while ``path`` runs that the worker did not
        start with: those added by the files that imported it, then its own."""
        if _sourceless(path):
            return inherited
        own = (self.place(path, p) for p in self.facts_of(path).path_entries)
        return tuple(dict.fromkeys((*inherited, *own)))

    def resolve(self, importer: Path, ref: ImportRef,
                inherited: tuple[Path, ...] = ()) -> list[Path]:
        """Screened files that run when ``importer`` executes ``ref`` (``inherited``: the
        directories the files that imported it put on ``sys.path``)."""
        if ref.level:
            base = importer.parent
            for _ in range(min(ref.level - 1, len(base.parts))):  # past the root: the root
                base = base.parent
            bases = [base]
            own: tuple[Path, ...] = ()
        else:
            bases = list(self.roots)
            own = self.added(importer, inherited)
        found: list[Path] = []
        # The first root that has the module is the one imported; a directory the file
        # put on sys.path may come before or after: its module counts as well.
        for base in bases:
            files = self._resolve_in(base, ref)
            if files:
                found = files
                break
        for base in own:
            found += [f for f in self._resolve_in(base, ref) if f not in found]
        return found

    def _resolve_in(self, base: Path, ref: ImportRef) -> list[Path]:
        files = self._files(base, ref.module) if ref.module else []
        for name in ref.names:
            if name == "*":
                names = self._exports(base, ref.module, files)
            else:
                names = [name]
            for sub in names:
                dotted = f"{ref.module}.{sub}" if ref.module else sub
                files += [f for f in self._files(base, dotted) if f not in files]
        return files

    def _exports(self, base: Path, module: str, files: list[Path]) -> list[str]:
        """``__all__`` of the package ``from <module> import *`` imports from: the names
        in it that are submodules are imported too."""
        init = files[-1] if files and files[-1].stem == "__init__" else None
        if not module:
            found = [f for f in self._files(base, "__init__") if f.stem == "__init__"]
            init = found[0] if found else None
        if init is None or _sourceless(init):
            return []
        return list(self.facts_of(init).exports)

    def _files(self, base: Path, dotted: str) -> list[Path]:
        """Resolved screened files for one module name, memoised: most files share imports."""
        key = (base, dotted)
        if key not in self._modules:
            resolved = (self._real(f) for f in self._module_files(base, dotted))
            self._modules[key] = [f for f in resolved if f is not None and not is_environment(f)]
        return list(self._modules[key])

    def edges(self, path: Path, inherited: tuple[Path, ...] = ()) -> list[Path]:
        """Screened files ``path`` imports or runs, directly (memoised per ``inherited``)."""
        key = (path, inherited)
        if key not in self._edges:
            facts = self.facts_of(path) if not _sourceless(path) else Facts()
            targets: dict[Path, None] = {}
            for ref in facts.imports:
                targets.update(dict.fromkeys(self.resolve(path, ref, inherited)))
            for run in facts.run_paths:
                target = self.run_target(self.place(path, run))
                if target is not None:
                    targets[target] = None
            self._edges[key] = [t for t in targets if t != path]
        return self._edges[key]

    def run_target(self, place: Path) -> Path | None:
        """The screened file ``runpy.run_path(place)`` runs (a directory runs its
        ``__main__.py``), if any."""
        target = self._real(place)
        try:
            if target is not None and target.is_dir():
                target = target / "__main__.py"
            if target is not None and target.is_file() and not is_environment(target):
                return target
        except _PATH_ERRORS:
            pass
        return None

    def taint(self, path: Path) -> Taint | None:
        """The shortest chain from ``path`` (resolved) to a module that defines DataFlow
        models or cannot be screened."""
        if path in self._taint:
            return self._taint[path]
        self._taint[path] = None  # guards recursion through own_model
        parents: dict[Path, Path | None] = {path: None}
        # sys.path entries a file adds stay for everything imported after it.
        queue: deque[tuple[Path, tuple[Path, ...]]] = deque([(path, ())])
        result: Taint | None = None
        while queue:
            node, inherited = queue.popleft()
            detail = self.own_model(node)
            if detail is not None:
                chain = [node]
                while parents[chain[-1]] is not None:
                    chain.append(parents[chain[-1]])
                result = Taint(tuple(reversed(chain)), detail, node in self._unscreenable)
                break
            for target in self.edges(node, inherited):
                if target not in parents:
                    parents[target] = node
                    queue.append((target, self.added(node, inherited)))
        self._taint[path] = result
        return result

    def own_model(self, path: Path) -> str | None:
        """Why this file itself defines models: in-file evidence, or ``@x.model``
        where ``x`` is imported from a module that reaches DataFlow (or why it
        cannot be screened: compiled without source, or its screen ran out of time)."""
        if path in self._own:
            return self._own[path]
        if _sourceless(path):
            kind = "bytecode" if path.suffix == ".pyc" else "extension module"
            self._own[path] = MSG_SOURCELESS.format(path=path.name, kind=kind)
            self._unscreenable.add(path)
            return self._own[path]
        self._own[path] = None  # an import cycle back here finds no model
        facts = self.facts_of(path)
        if facts.stalled:
            self._own[path] = MSG_STALLED_MODULE.format(path=path.name)
            self._unscreenable.add(path)
            return self._own[path]
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
