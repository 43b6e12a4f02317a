"""Stage 5: workflows cross the process boundary as data.

``encode`` runs in the worker: ``Workflow.to_dict()`` to JSON, plus the list of
what cannot make the trip and why (functions in node config, cycles, node
classes defined in the scanned project, secrets that ``to_dict`` redacts).
``decode`` runs in the server: ``Workflow.from_dict()``, after importing the
*library* modules that define the node classes, never a project file.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kailash.nodes.base import Node, NodeRegistry
from kailash.workflow import Workflow

from .paths import find_spec_beside, in_project, is_standard_library

REDACTED = "***REDACTED***"

NOT_JSON = "node '{node}' ({type}) holds a {what} in config key '{key}', which JSON cannot carry"
SECRET = "node '{node}' ({type}) config key '{key}' is redacted by Workflow.to_dict()"
CYCLE = "it has a cycle ({source} -> {target}); cycle settings do not survive Workflow.to_dict()"
PROJECT_NODE = (
    "node '{node}' uses {type}, a node class defined in the project ({where}), which the "
    "server must not import"
)
LOSSY = "it does not survive Workflow.to_dict()/from_dict() unchanged ({what})"
UNKNOWN_NODE = "node '{node}' ({type}) is not available in the server (module {module})"
REFUSED_MODULE = (
    "node '{node}' ({type}) comes from module {module}, which {why}; the server imports "
    "only modules of installed distributions to rebuild a workflow"
)
NOT_A_LIBRARY = "is not a module of an installed distribution"
DOES_NOT_DEFINE = "does not define {type}"
IMPORT_FAILED = "raised {exc} when imported ({message})"
DEFINES_MODELS = "defines DataFlow models"
_DATAFLOW = "dataflow"  # DataFlow's own modules build nodes; they define no app's models


# Kailash logs every workflow, node and connection it builds at INFO. The worker
# built the original (or the file was read as data, ``declarative``); these lines
# would describe the server's copy, and cost about 40 % of rebuilding it. Warnings
# and errors still come through.
_BUILD_LOGGERS = (logging.getLogger("kailash.workflow.graph"),
                  logging.getLogger("kailash.workflow.builder"))


@dataclass(frozen=True)
class Encoded:
    """A workflow as data, or the reasons it cannot travel; ``text``: its JSON, when
    ``json.dumps`` took it."""

    data: dict[str, Any] | None
    node_modules: dict[str, str]
    problems: tuple[str, ...]
    text: str = ""


_JSON_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)


def _unjsonable(node_id: str, node_type: str, config: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in config.items():
        try:
            json.dumps(value)
        except _JSON_ERRORS:
            if isinstance(value, type):
                what = f"Python class ({value.__name__})"
            else:
                what = "Python function" if callable(value) else type(value).__name__
            problems.append(NOT_JSON.format(node=node_id, type=node_type, what=what, key=key))
    return problems


def _project_file(module_name: str, project_root: str) -> str | None:
    """Where a node class's module lives, if it is part of the scanned project."""
    module = sys.modules.get(module_name)
    origin = getattr(module, "__file__", None)
    if module_name == "__main__" or origin is None:
        return module_name
    return _project_relpath(origin, project_root)


@functools.lru_cache(maxsize=1024)
def _project_relpath(origin: str, project_root: str) -> str | None:
    """Memoised: every node of a workflow asks about the same few modules, and
    resolving symlinks costs a dozen ``lstat`` calls each time."""
    if in_project(origin, project_root):
        return os.path.relpath(os.path.realpath(origin), os.path.realpath(project_root))
    return None


def _lost_connections(workflow: Workflow, data: dict[str, Any]) -> list[str]:
    """Connections the graph has that ``to_dict()`` did not write down."""
    written = {
        (c.get("source_node"), c.get("source_output"), c.get("target_node"), c.get("target_input"))
        for c in data.get("connections", [])
    }
    for source, target, edge in workflow.graph.edges(data=True):
        pairs = dict(edge.get("mapping") or {})
        if "from_output" in edge:
            outputs, inputs = edge["from_output"], edge.get("to_input")
            if not isinstance(outputs, list):  # one connection; two or more between a
                outputs, inputs = [outputs], [inputs]  # pair of nodes are lists, in step
            elif not isinstance(inputs, list):
                inputs = [inputs]
            for output, input_ in zip(outputs, inputs, strict=False):
                if isinstance(output, str):
                    pairs.setdefault(output, input_)
        for output, input_ in pairs.items():
            if (source, output, target, input_) not in written:
                return [LOSSY.format(what=f"connection {source}.{output} -> {target}.{input_}")]
    return []


def encode(workflow: Workflow, project_root: str, project_modules: set[str]) -> Encoded:
    """Turn a workflow into JSON-safe data, or say exactly what stops it."""
    problems: list[str] = []
    node_modules: dict[str, str] = {}
    data = workflow.to_dict()
    text = ""
    try:
        text = json.dumps(data)  # usually all is JSON: one call, no per-key checks
        failure: Exception | None = None
    except _JSON_ERRORS as exc:
        failure = exc
    for node_id, node in data.get("nodes", {}).items():
        node_type = node.get("node_type", "?")
        config = node.get("config") or {}
        if failure is not None:
            problems += _unjsonable(node_id, node_type, config)
        problems += [
            SECRET.format(node=node_id, type=node_type, key=key)
            for key, value in config.items()
            if value == REDACTED
        ]
        instance = workflow._node_instances.get(node_id)
        cls = type(instance) if instance is not None else None
        if cls is not None:
            module = cls.__module__
            where = (
                module if module in project_modules else _project_file(module, project_root)
            )
            if where is not None:
                problems.append(PROJECT_NODE.format(node=node_id, type=node_type, where=where))
            else:
                node_modules[node_type] = module
    for source, target, edge in workflow.graph.edges(data=True):
        if edge.get("cycle"):
            problems.append(CYCLE.format(source=source, target=target))
            break
    if failure is not None and not problems:
        problems.append(LOSSY.format(what=f"{type(failure).__name__}: {failure}"))
    if not problems:
        # The data as it is: it survived ``json.dumps`` above, and the frame that carries
        # it is JSON, so the server reads what a round trip here would have made of it.
        problems += _lost_connections(workflow, data)
    return Encoded(None if problems else data, node_modules, tuple(problems), text)


class ModelNodeStandIn(Node):
    """Stands in, in a file's own process only, for a node DataFlow generates from the
    project's models: the file's workflow builds and travels as data, and the server
    rebuilds it with the app's own node classes. It accepts any config and never runs."""

    def get_parameters(self) -> dict[str, Any]:
        return {}

    def run(self, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("a stand-in for a DataFlow node runs only in the server")


def register_standins(names: tuple[str, ...]) -> None:
    """Register the stand-in under each name: only ever called in a file's process."""
    for name in names:
        NodeRegistry.register(ModelNodeStandIn, alias=name)


@functools.lru_cache(maxsize=4)
def _installed(path: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Top-level name -> the files (absolute, normalised) that the distributions on
    ``path`` ship under it. Built once per ``sys.path``: reading every distribution's
    RECORD takes a few hundred milliseconds, paid only when a node type is missing."""
    from importlib import metadata

    index: dict[str, set[str]] = {}
    for dist in metadata.distributions(path=list(path)):
        for shipped in dist.files or ():
            if shipped.parts:
                top = shipped.parts[0].split(".")[0]
                index.setdefault(top, set()).add(os.path.normpath(dist.locate_file(shipped)))
    return {top: frozenset(files) for top, files in index.items()}


def _distribution_files(top: str, path: tuple[str, ...]) -> frozenset[str]:
    return _installed(path).get(top, frozenset())


def _defines_models(origin: str) -> bool:
    from .screen import analyze  # the server's side only: the worker never decodes

    try:
        with open(origin, "rb") as handle:
            return analyze(handle.read()).model is not None
    except OSError:
        return True


def library_refusal(module: str, node_type: str) -> str | None:
    """Why the server must not import ``module`` for ``node_type``; None if it may.

    It may only when the module, and each package on the way to it, is a file
    an installed distribution ships (listed in its RECORD), the module's source
    names the node type, no part of its name is ``__main__`` (a program, not a
    library), and the file defines no DataFlow models (DataFlow's own package
    aside). A module found some other way (``PYTHONPATH``, an editable install,
    a directory merely named site-packages) is refused before anything of it
    is imported.
    """
    parts = module.split(".")
    files = _distribution_files(parts[0], tuple(sys.path))
    if not files or not all(parts) or "__main__" in parts:
        return NOT_A_LIBRARY
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        try:
            with libraries_only():
                spec = importlib.util.find_spec(name)  # imports the (checked) parent package
        except BaseException:  # noqa: BLE001 - a library's import may raise anything
            return NOT_A_LIBRARY
        origin = spec.origin if spec is not None else None
        if not origin or os.path.normpath(origin) not in files:
            return NOT_A_LIBRARY
        if parts[0] != _DATAFLOW and _defines_models(origin):
            return DEFINES_MODELS
    if not _names(origin, node_type):
        return DOES_NOT_DEFINE.format(type=node_type)
    return None


def _names(origin: str, node_type: str) -> bool:
    try:
        with open(origin, "rb") as handle:
            return node_type.encode() in handle.read()
    except (OSError, UnicodeEncodeError):
        return False


class _LibrariesOnly:
    """A ``sys.meta_path`` finder that, in the thread rebuilding a workflow, refuses any
    module a node library would pull in that neither the standard library nor an
    installed distribution ships: a project's ``getpass.py`` shadowing the standard
    one, on a server started from the project directory, is never imported."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if threading.get_ident() != self.thread:
            return None
        spec = find_spec_beside(self, name, path, target)
        if spec is None:
            return None
        origin = spec.origin
        if not spec.has_location or not origin:
            return spec  # built-in, frozen, namespace: nothing read from a file
        if is_standard_library(origin):
            return spec
        if os.path.normpath(origin) in _distribution_files(name.split(".")[0], tuple(sys.path)):
            return spec
        raise ImportError(f"{name} would be imported from {origin}, which no installed "
                          "distribution ships")


@contextlib.contextmanager
def libraries_only() -> Iterator[None]:
    finder = _LibrariesOnly()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def rebuild(data: dict[str, Any], strings: dict[str, str]) -> Workflow:
    """``Workflow.from_dict(data)``, each of data's strings first swapped for the equal one
    in ``strings`` (added when new).

    Decoded JSON holds a string object per occurrence; a workflow keeps most of them
    (node types, port names, node ids in its connections, config). One object per
    value, for a file's workflows, makes them 3 to 4 % smaller in the server.
    Iterative, so no nesting that ``json.loads`` accepted can exhaust the stack here.
    """
    pending: list[Any] = [data]
    while pending:
        value = pending.pop()
        for key, item in (value.items() if type(value) is dict else enumerate(value)):
            kind = type(item)
            if kind is str:
                value[key] = strings.setdefault(item, item)
            elif kind is dict or kind is list:
                pending.append(item)
    return Workflow.from_dict(data)


def decode(data: dict[str, Any], node_modules: dict[str, str],
           strings: dict[str, str] | None = None) -> Workflow:
    """Rebuild a workflow in the server, loading library node classes it needs.

    ``strings`` is ``rebuild``'s, shared by the workflows of one file (a new one when
    None). Raises ``ValueError`` naming the node and the module when a class is not
    available, or its module is not one the server may import.
    """
    for node_id, node in data.get("nodes", {}).items():
        node_type = node.get("node_type")
        if node_type in NodeRegistry._nodes:
            continue
        module = node_modules.get(node_type)
        if not module or not isinstance(node_type, str):
            raise ValueError(UNKNOWN_NODE.format(node=node_id, type=node_type, module="?"))
        refusal = library_refusal(module, node_type)
        if refusal is not None:
            raise ValueError(REFUSED_MODULE.format(node=node_id, type=node_type, module=module,
                                                   why=refusal))
        try:
            with libraries_only():
                importlib.import_module(module)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a library included
            raise ValueError(REFUSED_MODULE.format(
                node=node_id, type=node_type, module=module,
                why=IMPORT_FAILED.format(exc=type(exc).__name__, message=str(exc)[:200]),
            )) from None
        if node_type not in NodeRegistry._nodes:
            raise ValueError(UNKNOWN_NODE.format(node=node_id, type=node_type, module=module))
    return rebuild(data, {} if strings is None else strings)


class _QuietRebuilds:
    """Raise the build loggers to WARNING while any scan is rebuilding, then restore them.

    Once per scan, not per workflow: ``Logger.setLevel`` clears every logger's
    cache, which in a server with hundreds of loggers costs more than the
    logging it saves. Counted, so overlapping scans restore the levels once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = [logging.NOTSET] * len(_BUILD_LOGGERS)

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved = [log.level for log in _BUILD_LOGGERS]
                for log in _BUILD_LOGGERS:
                    if log.getEffectiveLevel() < logging.WARNING:
                        log.setLevel(logging.WARNING)
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for log, saved in zip(_BUILD_LOGGERS, self._saved, strict=True):
                    if log.level != saved:
                        log.setLevel(saved)


quiet_rebuilds = _QuietRebuilds()
