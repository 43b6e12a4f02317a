"""Why the static screen treats a file as it does (``nexus-dataflow scan --explain``).

Every answer comes from the engine's own stages: the status and reason are
``SmartDiscovery.static()``'s; model lines, imports (literal dynamic ones
included), the directories a file puts on ``sys.path``, the files it runs by
path and the chain come from ``screen.analyze`` (through the screen cache) and
``imports.ImportGraph``. A file that passes the screen is only imported by a
full scan, so its outcome after import (the runtime guard's included) is not
part of the explanation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from . import report as r
from .discovery import SmartDiscovery
from .finder import WORKFLOW_PATTERNS
from .screen import ImportRef


class ProjectFile(NamedTuple):
    """A project file an import reaches, and the models it defines (None: none)."""

    path: str
    models: str | None


class ModelUse(NamedTuple):
    """A ``@<name>.model`` line whose ``name`` comes from an import."""

    line: int
    cls: str
    target: str
    imported_at_line: int
    sources: tuple[ProjectFile, ...]


class Import(NamedTuple):
    line: int
    module: str
    names: tuple[str, ...]
    project_files: tuple[ProjectFile, ...]


class Place(NamedTuple):
    """A directory the file adds to ``sys.path``, or a file it runs by path."""

    line: int
    path: str


@dataclass(frozen=True)
class Screened:
    """What the screen read in a file it could read."""

    parse_error: str | None
    models: str | None
    model_uses: tuple[ModelUse, ...]
    imports: tuple[Import, ...]
    sys_path_entries: tuple[Place, ...]
    runs_paths: tuple[Place, ...]
    chain: tuple[str, ...]
    chain_detail: str | None
    chain_unscreenable: bool
    factories: tuple[str, ...]


@dataclass(frozen=True)
class Explanation:
    """One file's answer. ``screened`` is None for what discovery refuses to read (too
    large, outside the project, a refused candidate): explaining does not read it either."""

    path: str
    candidate: bool
    status: str
    reason: str
    screened: Screened | None = None

    def to_dict(self) -> dict[str, Any]:
        """``scan --json --explain``'s shape: the screen's fields beside the status."""
        data: dict[str, Any] = {"path": self.path, "candidate": self.candidate,
                                "status": self.status, "reason": self.reason}
        s = self.screened
        if s is None:
            return data

        def files(found: tuple[ProjectFile, ...]) -> list[dict[str, Any]]:
            return [f._asdict() for f in found]

        data.update({
            "parse_error": s.parse_error,
            "models": s.models,
            "model_uses": [{"line": u.line, "class": u.cls, "target": u.target,
                            "imported_at_line": u.imported_at_line, "from": files(u.sources)}
                           for u in s.model_uses],
            "imports": [{"line": i.line, "module": i.module, "names": list(i.names),
                         "project_files": files(i.project_files)} for i in s.imports],
            "sys_path_entries": [p._asdict() for p in s.sys_path_entries],
            "runs_paths": [p._asdict() for p in s.runs_paths],
            "chain": list(s.chain),
            "chain_detail": s.chain_detail,
            "chain_unscreenable": s.chain_unscreenable,
            "factories": list(s.factories),
        })
        return data


def explain(discovery: SmartDiscovery, path: Path) -> Explanation:
    """Why ``discovery``'s screen treats ``path`` (absolute, inside its base) as it does."""
    base = discovery.base
    rel = path.relative_to(base).as_posix()
    found = discovery.find()
    here = next((c for c in found.candidates if c.rel == rel), None)
    entries, cache = discovery.static(found)
    entry = entries.get(rel)
    if entry is not None:
        status, reason = entry.status, entry.reason
    elif here is not None:
        status, reason = r.PASSES_SCREEN, r.MSG_PASSES_SCREEN
    else:
        status = r.NOT_A_CANDIDATE
        reason = r.MSG_NOT_A_CANDIDATE.format(patterns=", ".join(WORKFLOW_PATTERNS))
    answer = Explanation(rel, here is not None, status, reason)
    real = path.resolve()
    if (here is not None and here.refusal is not None) or not real.is_relative_to(
            base.resolve()) or real.stat().st_size > discovery.settings.max_file_bytes:
        return answer
    graph = discovery.import_graph(cache)
    facts = cache.facts(real)

    def project_files(ref: ImportRef) -> tuple[ProjectFile, ...]:
        return tuple(ProjectFile(discovery.rel(f), graph.own_model(f))
                     for f in graph.resolve(real, ref))

    def places(refs: Any) -> tuple[Place, ...]:
        return tuple(Place(e.line, discovery.rel(graph.place(real, e))) for e in refs)

    taint = graph.taint(real) if not facts.error else None
    return Explanation(rel, answer.candidate, status, reason, Screened(
        parse_error=facts.error,
        models=graph.own_model(real) if not facts.error else None,
        model_uses=tuple(ModelUse(u.line, u.cls, f"{u.name}.model", u.source.line,
                                  project_files(u.source))
                         for u in facts.external_model_uses),
        imports=tuple(Import(ref.line, "." * ref.level + ref.module, tuple(ref.names),
                             project_files(ref)) for ref in facts.imports),
        sys_path_entries=places(facts.path_entries),
        runs_paths=places(facts.run_paths),
        chain=tuple(discovery.rel(p) for p in taint.chain) if taint else (),
        chain_detail=taint.detail if taint else None,
        chain_unscreenable=bool(taint and taint.unscreenable),
        factories=tuple(facts.factories),
    ))
