"""Find workflows in an executed module's namespace, as native discovery does.

Narrower on purpose: only functions defined in the file itself that the
screen saw ``return`` a value are called (never imported callables, classes,
or anything the file calls under ``if __name__ == "__main__":``), each once,
over a snapshot of the namespace. Both the worker and the in-process explicit
loader use it.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import traceback
import types
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from kailash.workflow import Workflow
from kailash.workflow.builder import WorkflowBuilder

SKIP_NAMES = frozenset({"WorkflowBuilder", "Workflow"})
GENERIC_NAMES = frozenset({"workflow", "builder", "wf"})

# What the worker reports, as sentences (the server's report wraps them).
MSG_IMPORT_RAISED = "Raised {exc} while importing{where}: {message}"
MSG_IMPORT_MEMORY = "Hit the memory limit while importing{where}."
MSG_CALL_RAISED = "{name}{call} raised {exc}: {message}{where}"


@dataclass
class Probed:
    """Workflows found (attr -> Workflow, in namespace order, the last of each name)
    and failures, as sentences."""

    workflows: dict[str, Workflow] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def load_module(path: str, name: str, source: bytes) -> types.ModuleType:
    """Execute ``source`` as module ``name`` from ``path``, as native discovery loads a
    file (not put in ``sys.modules``); compiled here, so no bytecode is written beside it."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ImportError(f"no loader for {path}")
    module = importlib.util.module_from_spec(spec)
    code = compile(source, path, "exec", dont_inherit=True)
    exec(code, module.__dict__)  # noqa: S102 - the caller chose to run this file
    return module


def workflow_name(path: str, attr: str) -> str:
    """The name native discovery gives: the file's stem, or ``stem.attr``."""
    stem = PurePath(path).stem  # as native computes it
    return stem if attr.lower() in GENERIC_NAMES else f"{stem}.{attr}"


def where(exc: BaseException, path: str) -> str:
    """The deepest line of ``path`` in a traceback: what the user should look at."""
    line = None
    real = os.path.realpath(path)
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.realpath(frame.filename) == real:
            line = frame.lineno
    return f" (line {line})" if line else ""


MISSING_NODE = re.compile(r"Node '([^']+)' not found in registry")
MISSING_NODE_HINT = (
    "node type {node!r} is not available in the isolated worker; if DataFlow generates it "
    "from your models, load this file explicitly after the models exist "
    "(plugin.load_workflows)"
)


def import_raised(exc: BaseException, path: str) -> str:
    """``MSG_IMPORT_RAISED`` for ``exc``, raised while ``path`` was being imported."""
    return MSG_IMPORT_RAISED.format(exc=type(exc).__name__, where=where(exc, path),
                                    message=describe(exc))


def describe(exc: BaseException) -> str:
    """The first line of the error; for an unknown node type, what to do about it."""
    text = str(exc).strip()
    missing = MISSING_NODE.search(text)
    if missing:
        return MISSING_NODE_HINT.format(node=missing.group(1))
    lines = text.splitlines()
    return lines[0][:300] if lines else repr(exc)[:300]


def _factory(name: str, obj: Any, path: str, factories: Collection[str]) -> bool:
    """A function (or a wrapper of one) defined in this very file that may return a value.

    Matched on the function's own name, so an alias of a factory is a factory
    too; a lambda has no name of its own, so its binding must be listed.
    """
    if isinstance(obj, type) or not callable(obj):
        return False
    try:
        target = inspect.unwrap(obj)
    except ValueError:
        return False
    if not isinstance(target, types.FunctionType):
        return False
    if os.path.realpath(target.__code__.co_filename) != os.path.realpath(path):
        return False
    own = name if target.__name__ == "<lambda>" else target.__name__
    return own in factories


def probe(
    namespace: dict[str, Any],
    path: str,
    factories: Collection[str],
    passthrough: tuple[type[BaseException], ...] = (),
    *,
    factory: Callable[[str, Any], bool] | None = None,
) -> Probed:
    """Collect workflows and builders (built) and call the allowed factories once.

    ``factory(name, obj)`` says which values are factories to call (by default: the
    functions defined in ``path`` named in ``factories``).
    """
    if factory is None:
        def factory(name: str, obj: Any) -> bool:
            return _factory(name, obj, path, factories)
    probed = Probed()
    called: dict[int, Any] = {}  # function id -> its result: an alias is not a second call
    for name, obj in list(namespace.items()):  # a snapshot: factories may mutate globals
        if name.startswith("_") or name in SKIP_NAMES:
            continue
        try:
            if isinstance(obj, (Workflow, WorkflowBuilder)):
                value = obj
            elif factory(name, obj):
                if id(obj) not in called:
                    called[id(obj)] = obj()
                value = called[id(obj)]
                if not isinstance(value, (Workflow, WorkflowBuilder)):
                    continue
            else:
                continue
            if isinstance(value, WorkflowBuilder):
                value = value.build()
        except passthrough:
            raise
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            call = ".build()" if isinstance(obj, WorkflowBuilder) else "()"
            probed.failures.append(
                MSG_CALL_RAISED.format(
                    name=name, call=call, exc=type(exc).__name__, message=describe(exc),
                    where=where(exc, path),
                )
            )
            continue
        probed.workflows[name] = value
    # Native keeps the last of the workflows that share a name (``builder`` and
    # ``workflow = builder.build()`` both take the file's): the others would
    # only be encoded, sent and rebuilt to be dropped.
    last = {workflow_name(path, attr): attr for attr in probed.workflows}
    kept = set(last.values())
    probed.workflows = {a: w for a, w in probed.workflows.items() if a in kept}
    return probed
