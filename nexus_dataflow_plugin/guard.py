"""The runtime guard: inside a discovery worker, nothing can construct a DataFlow or
register a model.

The static screen reads imports; no reading sees all of them (computed names,
``exec``, plugin loaders driven by configuration). This is the layer behind it:
``install()`` runs in the worker process before a candidate file, and from then
on the first attempt to construct ``DataFlow`` (any subclass, any route:
``DataFlowEngine.builder``, a factory, a module the file imports) or to register
a model stops the file *before* DataFlow runs a line: no connection, no node
registration, no migration files. The guard builds a ``Verdict`` from the stack
it sees and hands it to ``on_stop``, which is expected to report it and end the
process. If ``on_stop`` returns, ``GuardStop`` (a ``BaseException``, so
``except Exception`` and ``except ImportError`` let it through) is raised on
this and every later attempt, and ``verdict()`` remembers the first one.

DataFlow's library modules still import: only construction and registration
are stopped. DataFlow is patched when its
engine module is imported (a ``sys.meta_path`` hook wraps that module's loader)
or at once if it already was.

This contains the project's own mistakes; it is not a sandbox: code running as
the server's user can undo any patch.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any, NamedTuple

from .paths import find_spec_beside, is_environment

ENGINE_MODULE = "dataflow.core.engine"
ENGINE_CLASS = "DataFlow"

STATUS_MODEL = "skipped_model"  # the candidate itself tried
STATUS_DEPENDENT = "skipped_dependent"  # something it imports or calls into tried

ACTION_CONSTRUCT = "construct a DataFlow instance"
ACTION_REGISTER = "register the DataFlow model {name}"

# Methods of DataFlow that stop the file, and how to say what it tried.
_GUARDED = {"__init__": ACTION_CONSTRUCT, "model": ACTION_REGISTER,
            "register_model": ACTION_REGISTER}


class Step(NamedTuple):
    """One frame of the chain that reached DataFlow: its file, module and line."""

    file: str
    module: str
    line: int


@dataclass(frozen=True)
class Verdict:
    """Why a file was stopped: ``status`` is ``skipped_model`` or ``skipped_dependent``;
    ``chain`` runs from the outermost project frame to the one that called DataFlow."""

    status: str
    detail: str
    chain: tuple[Step, ...]


class GuardStop(BaseException):
    """Raised where DataFlow was called when ``on_stop`` returned; a BaseException so
    that ``except Exception`` in user code does not turn it into success."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.detail)
        self.verdict = verdict


_lock = threading.Lock()
_state: dict[str, Any] = {"on_stop": None, "candidate": None, "verdict": None, "hooked": False,
                          "earlier_threads": frozenset()}


def verdict() -> Verdict | None:
    """The first verdict this process reached, if ``on_stop`` ever returned."""
    return _state["verdict"]


def install(on_stop: Callable[[Verdict], None], candidate_path: str | None = None) -> None:
    """Arm the guard for the file at ``candidate_path`` (call before it runs; calling
    again for the next file of the same process only changes the file and callback)."""
    with _lock:
        _state["on_stop"] = on_stop
        _state["candidate"] = os.path.realpath(candidate_path) if candidate_path else None
        _state["verdict"] = None
        # Threads already running belong to files that ran before this one.
        main = threading.main_thread().ident
        _state["earlier_threads"] = frozenset(
            t.ident for t in threading.enumerate() if t.ident != main)
        if _state["hooked"]:
            return
        _state["hooked"] = True
        engine = sys.modules.get(ENGINE_MODULE)
        if engine is not None:
            _patch(engine)
        sys.meta_path.insert(0, _EngineFinder())


class _EngineFinder:
    """Finds the engine module with the other finders, then wraps its loader so that
    the class is patched the moment the module has run."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != ENGINE_MODULE:
            return None
        spec = find_spec_beside(self, name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
            return spec
        return None


class _PatchingLoader:
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create else None

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package ...
        return getattr(self.loader, name)


def _patch(engine: ModuleType) -> None:
    cls = getattr(engine, ENGINE_CLASS, None)
    if not isinstance(cls, type) or getattr(cls, "_ndp_guarded", False):
        return
    library = os.path.dirname(os.path.dirname(os.path.realpath(engine.__file__ or "")))
    for name, action in _GUARDED.items():
        original = cls.__dict__.get(name)
        if callable(original):
            setattr(cls, name, _stopping(original, action, library))
    cls._ndp_guarded = True  # type: ignore[attr-defined]


def _stopping(original: Callable[..., Any], action: str, library: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        model = args[1] if len(args) > 1 else kwargs.get("cls") or kwargs.get("model_cls")
        what = action.format(name=getattr(model, "__name__", "") or "(a decorator call)")
        _stop(what, sys._getframe(1), library)
        return original(*args, **kwargs)  # reached only when no guard is armed

    return guarded


def _stop(action: str, frame: FrameType | None, library: str) -> None:
    """Build the verdict from the stack and stop; returns only when the guard is unarmed."""
    if _state["on_stop"] is None:
        return
    if _state["verdict"] is not None:
        raise GuardStop(_state["verdict"])
    if threading.get_ident() in _state["earlier_threads"]:
        # A thread an earlier file of this process left running: stopped, but it is
        # not this file's doing, so this file's verdict is not decided by it.
        raise GuardStop(Verdict(STATUS_DEPENDENT, action, _chain(frame, library)))
    chain = _chain(frame, library)
    candidate = _state["candidate"]
    innermost = chain[-1].file if chain else ""
    own = candidate is None or os.path.realpath(innermost) == candidate
    status = STATUS_MODEL if own else STATUS_DEPENDENT
    result = Verdict(status, action, chain)
    _state["verdict"] = result
    _state["on_stop"](result)
    raise GuardStop(result)


_HERE = os.path.dirname(os.path.realpath(__file__))


def _chain(frame: FrameType | None, library: str) -> tuple[Step, ...]:
    """The project frames on the stack, outermost first: no frames of DataFlow, of
    this package, of the standard library or of the import machinery."""
    steps: list[Step] = []
    while frame is not None:
        code = frame.f_code
        file = code.co_filename
        real = os.path.realpath(file) if not file.startswith("<") else file
        ours = real.startswith((library + os.sep, _HERE + os.sep))
        if not (file.startswith("<") or ours or is_environment(real)):
            step = Step(file, str(frame.f_globals.get("__name__", "?")), frame.f_lineno)
            if not steps or steps[-1].file != file:
                steps.append(step)
        frame = frame.f_back
    return tuple(reversed(steps))
