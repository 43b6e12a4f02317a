"""The project's DataFlow models as the screen sees them, and the server's.

Workflows may be built from the nodes DataFlow generates for a model
(``CustomerCreateNode``); a file naming them runs with stand-ins in its own
process, and the server rebuilds it with the app's own nodes. This module
answers which node types are such, and which model (and file) each comes from,
without running any project file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from .dataflow_workflows import OPERATIONS, node_name_for
from .imports import FactsOf, ImportGraph
from .isolation import GENERATED_NODES_MODULE
from .paths import read_regular


def dataflow_node_types() -> frozenset[str]:
    """Node types DataFlow generated from the app's models, as the server has them now."""
    from kailash.nodes.base import NodeRegistry

    return frozenset(
        name
        for name, cls in list(NodeRegistry._nodes.items())
        if getattr(cls, "__module__", None) == GENERATED_NODES_MODULE
    )


# What DataFlow appends to a model's class name for each node it generates.
MODEL_NODE_SUFFIXES = tuple(node_name_for("", op) for op in OPERATIONS)
# Directories a project's own models are never in.
_NOT_PROJECT_DIRS = frozenset({"__pycache__", "node_modules", "site-packages"})


class ModelIndex:
    """Every DataFlow model class the project defines, and the node types DataFlow
    generates for each, found by the screen (walking the project on first need).

    Also the node types DataFlow generated in this process (the server's models).
    """

    def __init__(self, base: Path, graph: ImportGraph, facts_of: FactsOf,
                 max_file_bytes: int) -> None:
        self.base = base
        self.graph = graph
        self.facts_of = facts_of
        self.max_file_bytes = max_file_bytes
        self.generated = dataflow_node_types()
        self._project: dict[str, tuple[str, str]] | None = None

    def standins(self, node_types: Sequence[str]) -> tuple[str, ...]:
        """The node types of ``node_types`` that DataFlow generates from a model."""
        if any(t.endswith(MODEL_NODE_SUFFIXES) and t not in self.generated for t in node_types):
            self._walk()
        project = self._project or {}
        return tuple(t for t in node_types if t in self.generated or t in project)

    def model_of(self, node_type: str) -> str:
        """``Customer (models.py)``: the model a node type comes from, and its file."""
        self._walk()
        found = (self._project or {}).get(node_type)
        if found is not None:
            return f"{found[0]} ({found[1]})"
        for suffix in MODEL_NODE_SUFFIXES:
            if node_type.endswith(suffix):
                return node_type[: -len(suffix)]
        return node_type

    def _walk(self) -> None:
        if self._project is not None:
            return
        self._project = {}
        base = self.base.resolve()
        for root, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and d not in _NOT_PROJECT_DIRS
                             and not os.path.exists(os.path.join(root, d, "pyvenv.cfg")))
            for name in sorted(files):
                if name.endswith(".py"):
                    self._add(Path(root, name))

    def _add(self, path: Path) -> None:
        """Learn ``path``'s model classes. Only a regular file, small enough, is read (a
        FIFO or ``/dev/zero`` under a ``.py`` name would block or never end), and only
        one whose bytes hold ``.model`` is screened: most of a project cannot define
        models, and screening a large file starts a process."""
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_file_bytes:
                return
            if b".model" not in read_regular(path, self.max_file_bytes):
                return
        except OSError:
            return
        facts = self.facts_of(path)
        if not facts.model_classes or self.graph.own_model(path) is None:
            return
        rel = path.relative_to(self.base.resolve()).as_posix()
        for cls in facts.model_classes:
            for op in OPERATIONS:
                self._project.setdefault(node_name_for(cls, op), (cls, rel))  # type: ignore[union-attr]
