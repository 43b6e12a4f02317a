"""Every message between the server, its workers and each file's process.

Shared by all three sides (the worker's import rule: ``tests/test_worker.py``). Each
message is a frozen dataclass; ``encode`` and ``decode`` are the only way
onto and off the wire (JSON, never pickles), and ``decode`` checks what it is
given against the dataclass's field types, so a malformed message is a
``ProtocolError``, never a ``TypeError`` somewhere later.

Channels (``processes`` makes them, ``worker`` hands them on):

- per worker, control (server <-> worker, a ``SOCK_SEQPACKET`` socket pair, one
  message a packet): ``Init``, ``RunFile`` and ``ReadAhead`` one way, ``Ready`` and
  ``Exited`` the other. A ``RunFile`` carries the child ends of the file's two channels
  (``SCM_RIGHTS``); the worker closes its copies as soon as it has forked the
  file's process, so only that process holds them;
- per file, a result channel (a ``SOCK_STREAM`` socket pair), which the file's
  process moves above every descriptor number it can name: ``Started`` then
  ``Result``, each a frame (kind byte, 4-byte length, JSON body), read by the
  server straight from the file's process, never through the worker;
- per file a stderr channel (the process's descriptor 2), and per worker one for
  its own stderr: bytes, not messages, kept as a bounded tail for reasons;
- per read-ahead process, a result channel as a file's (``Started``, then a
  ``Reading`` frame per file it read), and the memory file its ``ReadFiles`` came in;
  its stderr is ``/dev/null``.

A file's process has ``/dev/null`` as stdin and stdout: nothing it prints is read.
Sockets, not pipes: a pipe can be reopened through ``/proc/<pid>/fd`` by any
process of the same user, a socket cannot, so no other file's process can
write into a channel or read from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import struct
import types
import typing
from dataclasses import dataclass
from typing import Any

WORKER_MODULE = "nexus_dataflow_plugin.worker"

# Largest control message: an Init carries the node-library map and sys.path.
MAX_CONTROL_BYTES = 1 << 20
# Nesting deeper than this is refused (a workflow's config is a few levels deep;
# 100,000 levels would take the decoder's recursion limit with it).
MAX_DEPTH = 64

# Exit status of a file's process whose result channel was gone when it had a result.
EXIT_NO_CHANNEL = 71

FRAME_HEADER = struct.Struct(">BI")
FRAME_STARTED = 1
FRAME_RESULT = 2
FRAME_READING = 3  # a read-ahead's answers, after its Started


class ProtocolError(ValueError):
    """A message that is not what the protocol allows; the text says what."""


# -- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Init:
    """Server -> worker, once: how to set up before any file runs."""

    sys_path: tuple[str, ...]
    library_path: tuple[str, ...]
    base: str
    node_modules: dict[str, str]
    memory_bytes: int | None
    cpu_seconds: int | None
    max_result_bytes: int


@dataclass(frozen=True)
class RunFile:
    """Server -> worker: run one file in a process of its own (its channels attached)."""

    id: int
    path: str
    module: str
    factories: tuple[str, ...]
    preload: tuple[str, ...]
    inner_timeout: float
    digest: str | None = None
    # Node types DataFlow generates from the project's models: stand-ins are registered
    # under these names in the file's process only, and the server rebuilds them.
    standins: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadItem:
    """One file for a read-ahead: where to read it (``real``), and the path and module
    name it is read as (what ``declarative.read`` is given)."""

    real: str
    path: str
    module: str


@dataclass(frozen=True)
class ReadAhead:
    """Server -> worker: start a read-ahead process (``id``, below 0, names it in its
    ``Exited``); attached, a memory file holding its ``ReadFiles`` and its result channel."""

    id: int


@dataclass(frozen=True)
class ReadFiles:
    """What a read-ahead process does: screen these files and read those that declare
    workflows as data, from the last to the first (the server takes the first ones
    itself). Only this package's code runs there, never a file's."""

    items: tuple[ReadItem, ...]
    screen_max_bytes: int  # files it screens are at most this; larger ones are the server's
    max_nodes: int
    max_bytes: int
    project_root: str


@dataclass(frozen=True)
class Ready:
    """Worker -> server: warmed up, nothing of any candidate has run in it."""

    pid: int


@dataclass(frozen=True)
class Exited:
    """Worker -> server: how a file's process ended (it is the process's parent)."""

    id: int
    code: int | None
    signal: int | None


@dataclass(frozen=True)
class Started:
    """File process -> server, before any of the file runs: who to time and kill."""

    pid: int


@dataclass(frozen=True)
class Reading:
    """Read-ahead process -> server, one per file: the sha256 of the bytes it judged,
    their facts (``screen.facts_to_json``) and, when the file declares workflows, the
    workflows read from them (``declarative.Read.record``)."""

    index: int
    digest: str
    facts: Any
    record: str | None = None


@dataclass(frozen=True)
class WorkflowData:
    """One workflow as data, or the reasons it cannot travel."""

    attr: str
    data: dict[str, Any] | None
    node_modules: dict[str, str]
    problems: tuple[str, ...]
    model_nodes: tuple[str, ...] = ()  # stand-ins it uses: the server has the real classes


@dataclass(frozen=True)
class GuardStep:
    """One frame of the chain the runtime guard saw reach DataFlow."""

    file: str
    module: str
    line: int


@dataclass(frozen=True)
class Guarded:
    """The runtime guard stopped the file: what it tried (``detail``), whether the file
    itself or something it imports tried (``status``), and the chain (see ``guard``)."""

    status: str
    detail: str
    chain: tuple[GuardStep, ...] = ()


@dataclass(frozen=True)
class Result:
    """File process -> server: what importing the file gave. One shape per outcome:
    workflows and failures; or ``error``; or ``timeout`` (where the inner alarm
    found it); or ``changed`` (its bytes are not the ones screened); or
    ``oversize`` (the encoded result's size, over the limit); or ``guarded``."""

    workflows: tuple[WorkflowData, ...] = ()
    failures: tuple[str, ...] = ()
    # How long the file took by its own process's clock: the server may have been busy
    # (rebuilding another file's workflows) when the result arrived.
    elapsed: float | None = None
    error: str | None = None
    timeout: str | None = None
    changed: bool = False
    oversize: int | None = None
    guarded: Guarded | None = None


MESSAGES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Init, RunFile, ReadAhead, ReadFiles, Ready, Exited, Started, Reading,
                Result)
}


# -- encoding ----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Messages (and tuples of them) as dicts; everything else as it is. Unlike
    ``dataclasses.asdict`` this copies no dict or list: a workflow's data is already
    JSON, and copying it cost as much as dumping it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def encode(message: Any) -> bytes:
    """A message as one JSON object, tagged with its type."""
    body = _plain(message)
    body["type"] = type(message).__name__
    return json.dumps(body, separators=(",", ":")).encode()


# In JSON text, the escape of a UTF-16 surrogate: the only way a message decoded as
# strict UTF-8 can hold a lone one (a pair is fine, but telling them apart is the walk
# the check saves). UTF-8's multi-byte sequences hold no ASCII byte to fool the search.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode(data: bytes, *expected: type) -> Any:
    """The message ``data`` holds, checked against its dataclass; one of ``expected``.

    Raises only ``ProtocolError``.
    """
    # Messages are UTF-8 (``json`` would guess UTF-16 or 32 too, and pass a surrogate's
    # own bytes). Most hold no surrogate escape: then no text in them can be a lone
    # surrogate, and the check of every string is skipped (for a read-ahead's answer,
    # three quarters of its decoding).
    texts = _SURROGATE_ESCAPE.search(data) is not None
    try:
        raw = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ProtocolError(f"nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ProtocolError("not a JSON object")
    tag = raw.pop("type", None)
    cls = MESSAGES.get(tag) if type(tag) is str else None  # (a list is not hashable)
    if cls is None or (expected and cls not in expected):
        wanted = " or ".join(c.__name__ for c in expected) or "a message"
        raise ProtocolError(f"expected {wanted}")
    return _build(cls, raw, cls.__name__, texts)


@functools.cache
def _hints(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(name, type, has a default) per field, resolved once per class."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (f.name, hints[f.name],
         f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
        for f in dataclasses.fields(cls)
    )


def _build(cls: type, raw: Any, where: str, texts: bool) -> Any:
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where}: expected an object")
    fields = _hints(cls)
    unknown = set(raw) - {name for name, _, _ in fields}
    if unknown:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    values = {}
    for name, hint, optional in fields:
        if name not in raw:
            if optional:
                continue
            raise ProtocolError(f"{where}: missing field {name}")
        values[name] = _value(raw[name], hint, f"{where}.{name}", 0, texts)
    if cls is WorkflowData and not values["attr"].isidentifier():
        raise ProtocolError(f"{where}.attr: {values['attr'][:40]!r} is not a Python name")
    return cls(**values)


def _value(value: Any, hint: Any, where: str, depth: int, texts: bool) -> Any:
    """``value`` checked against ``hint``; ``texts``: the message may hold a lone
    surrogate, so each string is checked too."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    origin = typing.get_origin(hint)
    if hint is Any:
        return _json(value, where, depth, texts)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _value(value, inner[0], where, depth, texts)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, texts)
    if origin is tuple:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list")
        item = typing.get_args(hint)[0]
        return tuple(_value(v, item, f"{where}[]", depth + 1, texts) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object")
        item = typing.get_args(hint)[1]
        if texts:
            for key in value:
                _text(key, where)
        return {k: _value(v, item, f"{where}.{k}", depth + 1, texts) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ProtocolError(f"{where}: expected int")
    if not isinstance(value, hint):
        raise ProtocolError(f"{where}: expected {hint.__name__}")
    if hint is str and texts:
        _text(value, where)
    return value


def is_text(value: str) -> bool:
    """Text that can be written anywhere: JSON's ``\\ud800`` escapes decode to lone
    surrogates, which no UTF-8 writer (a log, an HTTP response) accepts."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: str, where: str) -> None:
    if not is_text(value):
        raise ProtocolError(f"{where}: text that is not valid Unicode")


def _json(value: Any, where: str, depth: int, texts: bool) -> Any:
    """Any JSON value, no deeper than ``MAX_DEPTH`` (checked a level at a time, without
    recursion), its strings valid text when ``texts``."""
    level = [value]
    while level:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        below: list[Any] = []
        for item in level:
            kind = type(item)
            if kind is dict:
                below += item.values()
                if texts:
                    for key in item:
                        _text(key, where)
            elif kind is list:
                below += item
            elif texts and kind is str:
                _text(item, where)
        level = below
        depth += 1
    return value


def node_count(result: Result) -> int:
    """Nodes and connections over all the result's workflows: what the server would
    rebuild (``Workflow.from_dict`` grows with the square of a node pair's connections)."""
    total = 0
    for workflow in result.workflows:
        for key in ("nodes", "connections"):
            part = (workflow.data or {}).get(key)
            total += len(part) if isinstance(part, (dict, list)) else 0
    return total


# -- frames on a file's result channel ------------------------------------------------------


def frame(kind: int, message: Any) -> bytes:
    body = encode(message)
    return FRAME_HEADER.pack(kind, len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FrameReader:
    """Collects one channel's frames; refuses a frame longer than ``limit`` unread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Frames completed by ``data``. Raises ``ProtocolError`` for an unknown kind and
        ``OversizeFrame`` for a frame over the limit."""
        self.buffer += data
        frames = []
        at = 0  # the buffer is cut once: a read-ahead's answers come many to a read
        try:
            while len(self.buffer) - at >= FRAME_HEADER.size:
                kind, size = FRAME_HEADER.unpack_from(self.buffer, at)
                if kind not in (FRAME_STARTED, FRAME_RESULT, FRAME_READING):
                    raise ProtocolError(f"unknown frame kind {kind}")
                if size > self.limit:
                    raise OversizeFrame(size)
                end = at + FRAME_HEADER.size + size
                if len(self.buffer) < end:
                    break
                frames.append((kind, bytes(self.buffer[at + FRAME_HEADER.size:end])))
                at = end
        finally:
            del self.buffer[:at]
        return frames


class OversizeFrame(ProtocolError):
    def __init__(self, size: int) -> None:
        super().__init__(f"a frame of {size} bytes")
        self.size = size
