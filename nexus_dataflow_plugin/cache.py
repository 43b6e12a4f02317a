"""The screen cache: a file's ``Facts`` keyed by path, stat and plugin version.

A warm scan then stats each file instead of reading and parsing it. The stat
key holds what a user cannot set back (ctime, inode) besides size and mtime,
so a file rewritten with its mtime restored is screened again (see
``finder.stamp`` for the one change it misses); each entry
keeps the sha256 of the exact bytes screened, for the worker to execute only
those.

Files above ``IN_PROCESS_MAX_BYTES`` are screened in a short-lived ``python -I -S``
subprocess killed at the file's timeout: CPython parses some inputs in
quadratic time (a 600 KB f-string takes 20 s), and the server must not stall. When a
scan has many uncached small files, they are screened side by side in one
``python -I -S`` process per core (``_PoolProcess``), each answering its share of
the files in order, killed when one of them outlasts the timeout. The cache
is one JSON file per project under the user's cache directory; it is only
ever replaced atomically (write a temporary file, then rename), so concurrent
writers cannot interleave and a reader never sees half a file; a whole scan drops the
entries of files it no longer asked about. Anything
unreadable, from another version or not shaped as expected is ignored: the
worst a broken cache can do is cost a re-parse.

Beside it, ``ReadCache`` keeps what reading each file as data gave
(``declarative.Read.record``), so that a warm scan rebuilds those workflows
instead of parsing and replaying the file again. The cache directory is trusted
as the project's files are: what it holds becomes registered workflows.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from . import __version__
from .config import Settings
from .finder import MSG_TOO_LARGE
from .finder import stamp as _stamp
from .paths import read_regular
from .processes import ReadAheadProcess, usable_cores
from .report import MSG_SCREEN_FAILED, MSG_SCREEN_TIMEOUT, MSG_UNREADABLE
from .screen import (
    READY,
    Facts,
    ImportRef,
    ModelUse,
    PathRef,
    analyze_tree,
    parse,
)

logger = logging.getLogger(__name__)

CACHE_FORMAT = 8
# An entry, per file path: a list (a warm scan decodes a fifth faster than with a dict
# per file) of the stat it is about, the sha256 of the bytes judged, their facts, and
# how long importing them took (None until a scan imports the file).
_STAT, _SHA256, _FACTS, _DURATION = range(4)
# On disk an entry's facts are a place in the file's table of distinct facts: files alike
# (the same imports, nodes and factories) share one. In a scan's memory they are that
# place, or the facts a screen gave (written into the table at save). On the mixed tree
# of 10,000 files half the facts were repeats: the table took the warm load's decoded
# objects and page faults by half, and its decode and rebuild from 60 to 46 ms.


def _whole(entry: Any) -> bool:
    """``entry`` has an entry's shape (what it holds is checked where it is used)."""
    return type(entry) is list and len(entry) == 4


def _sound(entry: list[Any]) -> bool:
    """A loaded entry holds a stat, digest and duration as the screen writes them: one
    nested a thousand deep would take the save's encoder past the stack."""
    stat, digest, _, duration = entry
    return (type(stat) is list and len(stat) == 5 and all(type(v) is int for v in stat)
            and type(digest) is str and (duration is None or type(duration) is float))

# Measured on CPython 3.11 (ast.parse, worst case an f-string of `{a}` fields): 50 KB
# 0.2 s, 100 KB 0.64 s, 200 KB 2.4 s, 600 KB 20 s; plain code parses at about 1 MB/s.
# Up to 32 KB the worst case stays under 0.1 s, so such files are parsed in the server.
IN_PROCESS_MAX_BYTES = 32 * 1024

# At most this many large files are screened at once, each within this address space:
# a syntax tree takes up to several hundred times its source (a 3 MB file reached
# 1.5 GB), and a project of many large files must not take the machine's memory.
MAX_SCREENS = max(2, os.cpu_count() or 1)
SCREEN_MEMORY_BYTES = 2 * 1024**3

# Uncached small files are screened in pool processes, one per core, once a scan has at
# least this many per process. A process costs about 20 ms of CPU to start and the
# server about 15 us per file to take its answers, against 100-170 us per file screened
# in the server: on idle cores the pool pays from a few hundred files, but on a busy
# machine (the cores taken by others) the screen alone was slower with it up to
# 1,000-2,000 files, and a full cold scan of 1,000 files (whose workers want the same
# cores) 1.06-1.28 times slower.
POOL_MIN_FILES = 2000

# -I ignores PYTHONPATH: the child puts this package's parent on sys.path itself.
_LIMITS = (
    "import sys, json, resource\n"
    "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))\n"
    "sys.path.insert(0, sys.argv[1])\n"
)
_CHILD = _LIMITS + (
    "from nexus_dataflow_plugin.screen import analyze, facts_to_json\n"
    "sys.stdout.write(json.dumps(facts_to_json(analyze(sys.stdin.buffer.read()))))\n"
)
# The screen module alone: the pool's start-up is half that of importing this module.
_POOL_CHILD = _LIMITS + (
    "from nexus_dataflow_plugin.screen import screen_listed\n"
    f"screen_listed(json.loads(sys.stdin.buffer.read()), sys.stdout.buffer, "
    f"{IN_PROCESS_MAX_BYTES})\n"
)
# What a pool process answers for a file: screen it in the server as usual (it is not
# for the pool), or alone out of process (the pool process ended while screening it).
_IN_SERVER = None
_ALONE = "alone"
# A pool process says it is ready (its imports done) within this, or its files are
# screened in the server: the per-file timeout does not count the start-up.
_POOL_START_S = 10.0


_compact = json.JSONEncoder(separators=(",", ":")).encode


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "nexus-dataflow-plugin"


def _command(program: str) -> list[str]:
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [sys.executable, "-I", "-S", "-c", program, package_parent, str(SCREEN_MEMORY_BYTES)]


# A warm scan rebuilds every file's facts from the cache: ``tuple.__new__`` skips the
# named tuples' keyword handling, ``map`` the generator frames (a third of the cost).
_new = tuple.__new__


# What an entry holds is taken only as the screen writes it: a value of another type is
# a damaged entry (``ValueError``), never converted into a verdict of its own.
def _text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise ValueError(f"not text: {type(value).__name__}")


def _only(kind: type) -> Callable[[Any], Any]:
    """A check that passes a value of exactly ``kind`` (``bool`` is not an ``int`` here)."""
    def check(value: Any) -> Any:
        if type(value) is kind:
            return value
        raise ValueError(f"a {type(value).__name__} where a {kind.__name__} belongs")
    return check


_str, _int, _flag = _only(str), _only(int), _only(bool)


_list = _only(list)  # a str or dict would pass ``map``: "Ab" as ("A", "b"), {} as ()


def _ref(data: list[Any]) -> ImportRef:
    module, names, level, line = _list(data)
    return _new(ImportRef, (_str(module), tuple(map(_str, _list(names))), _int(level),
                            _int(line)))


def _path(data: list[Any]) -> PathRef:
    anchor, ups, tail, line = _list(data)
    return _new(PathRef, (_str(anchor), _int(ups), _str(tail), _int(line)))


def _use(data: list[Any]) -> ModelUse:
    name, cls, line, source = _list(data)
    return _new(ModelUse, (_str(name), _str(cls), _int(line), _ref(source)))


def facts_from_json(data: list[Any]) -> Facts:
    (error, model, imports, uses, factories, nodes, may_block, entries, runs, exports,
     stalled, classes) = _list(data)
    # Most fields are empty lists: ``== []`` skips building an empty tuple from them (a
    # third of the cost); anything else must be a list too.
    return _new(Facts, (  # in Facts' field order
        _text(error),
        _text(model),
        () if imports == [] else tuple(map(_ref, _list(imports))),
        () if uses == [] else tuple(map(_use, _list(uses))),
        () if factories == [] else tuple(map(_str, _list(factories))),
        () if nodes == [] else tuple(map(_str, _list(nodes))),
        _flag(may_block),
        () if entries == [] else tuple(map(_path, _list(entries))),
        () if runs == [] else tuple(map(_path, _list(runs))),
        () if exports == [] else tuple(map(_str, _list(exports))),
        _flag(stalled),
        () if classes == [] else tuple(map(_str, _list(classes))),
    ))


def _stalled(timeout: float) -> Facts:
    """The facts of a file whose screen outlasted ``timeout``: neither screened nor run."""
    return Facts(error=MSG_SCREEN_TIMEOUT.format(timeout=timeout), stalled=True)


class _Screening:
    """``analyze`` of one large file in a ``python -I -S`` subprocess, started early so
    that the large files of a scan are screened side by side, each within its timeout.

    Input and output go through temporary files: neither side waits on a pipe.
    """

    def __init__(self, data: bytes, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._in = tempfile.TemporaryFile()
        self._out = tempfile.TemporaryFile()
        self._in.write(data)
        self._in.seek(0)
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and code
            _command(_CHILD), stdin=self._in, stdout=self._out, stderr=subprocess.DEVNULL,
        )

    def cancel(self) -> None:
        self.process.kill()
        self.process.wait()
        self._in.close()
        self._out.close()

    def result(self) -> Facts:
        """The child's facts; ``stalled`` when it ran out of time (it is killed then)."""
        try:
            self.process.wait(max(0.0, self.deadline - time.monotonic()))
            self._out.seek(0)
            return facts_from_json(json.loads(self._out.read()))
        except subprocess.TimeoutExpired:
            self.cancel()
            return _stalled(self.timeout)
        except (OSError, ValueError, TypeError) as exc:
            return Facts(error=MSG_SCREEN_FAILED.format(what=f"{type(exc).__name__}: {exc}"))
        finally:
            self._in.close()
            self._out.close()


class _PoolProcess:
    """A ``python -I -S`` process screening a share of a scan's uncached small files.

    It answers its files in order; the server reads the answers as it asks for them.
    When the server has waited ``timeout`` for the next answer, the file being
    screened is stalled and the process is killed; when the process ends before
    answering, that file is screened again alone out of process (so that a file
    which crashes the parser is reported, not retried in the server) and the rest
    of its share in the server. A process that never gets ready leaves all its
    files to the server.
    """

    def __init__(self, paths: list[Path], timeout: float) -> None:
        self.timeout = timeout
        self._answers: list[bytes] = []
        self._partial = b""
        self._end: Facts | str | None = None  # for the first file left unanswered
        self._gone = False
        self._ready = False
        with tempfile.TemporaryFile() as listing:
            listing.write(json.dumps([str(p) for p in paths]).encode())
            listing.seek(0)
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and code
                _command(_POOL_CHILD), stdin=listing, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        self._poll = select.poll()
        self._poll.register(self.process.stdout.fileno(), select.POLLIN)  # type: ignore[union-attr]

    def answer(self, index: int) -> Facts | tuple[str, Facts] | str | None:
        """The digest and facts of the ``index``-th file, ``stalled``
        facts, ``_ALONE`` or ``_IN_SERVER`` (see the class)."""
        while index >= len(self._answers) and not self._gone:
            self._read()
        if index < len(self._answers):
            line, self._answers[index] = self._answers[index], b""
            try:
                digest, facts = json.loads(line.decode())  # str: no encoding to detect
                return str(digest), facts_from_json(facts)
            except (ValueError, TypeError):  # null: the server screens it
                return _IN_SERVER
        return self._end if index == len(self._answers) else _IN_SERVER

    def _read(self) -> None:
        fd = self.process.stdout.fileno()  # type: ignore[union-attr]
        wait = self.timeout if self._ready else _POOL_START_S
        if not self._poll.poll(wait * 1000):
            self._close(_stalled(self.timeout) if self._ready else _IN_SERVER)
            return
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            self._close(_ALONE if self._ready else _IN_SERVER)
            return
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        if not self._ready and complete:
            self._ready = complete.pop(0) == READY
            if not self._ready:
                self._close(_IN_SERVER)
                return
        self._answers += complete

    def _close(self, end: Facts | str | None = None) -> None:
        self._end = end
        self._gone = True
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()  # type: ignore[union-attr]

    def cancel(self) -> None:
        if not self._gone:
            self._close()


# Given the small uncached files of a screen, in order: the read-ahead processes it
# started for them, each with the places (in that list) of the files it answers.
StartsReadAhead = Callable[[list[Path]], list[tuple[ReadAheadProcess, list[int]]]]


class ScreenCache:
    """Facts per file, reused while the file's stat is unchanged.

    With ``persist=False`` it only memoises within one scan. ``timeout`` bounds
    the screen of each large file (see ``IN_PROCESS_MAX_BYTES``).
    """

    def __init__(self, base: Path, directory: Path | None = None, persist: bool = True,
                 timeout: float = Settings.timeout,
                 max_file_bytes: int = Settings.max_file_bytes) -> None:
        digest = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:16]
        self.path = (directory or default_cache_dir()) / f"screen-{digest}.json"
        self.persist = persist
        self.timeout = timeout
        # A file is read up to this: a candidate grown since the finder measured it, or a
        # module a candidate imports, is no more the server's memory than a candidate.
        self.max_file_bytes = max_file_bytes
        self._entries: dict[str, Any] = {}
        self._table: list[Any] = []  # the loaded file's distinct facts, as JSON data
        self._built: list[Facts | None] = []  # each one's Facts, once an entry asks
        # Facts by value: files alike share one object in the scan, and one place in
        # the table saved (the save tells them apart by identity).
        self._alike: dict[Facts, Facts] = {}
        self._memo: dict[Path, Facts] = {}
        self._last_tree: tuple[Path, bytes, ast.Module | str] | None = None
        self._running: dict[Path, tuple[list[int], str, _Screening]] = {}
        self._stamps: dict[Path, list[int]] = {}  # given to prefetch, for _read
        self._stale: set[Path] = set()  # forgotten: a stat given to prefetch is older
        self._pools: list[_PoolProcess] = []
        self._pooled: dict[Path, tuple[_PoolProcess, int]] = {}
        self._aheads: list[ReadAheadProcess] = []
        self._ahead: dict[Path, tuple[ReadAheadProcess, int]] = {}
        # path -> (the path it was read as, its record or None), from a read-ahead
        self._read_ahead: dict[Path, tuple[str, str | None]] = {}
        self._answered = 0  # files whose facts a read-ahead gave
        self._dirty = False
        self.reads = ReadCache(self.path.with_name(f"read-{digest}.txt"), persist)
        if persist:
            self._load()

    def _load(self) -> None:
        raw = _read_cache_file(self.path)
        if raw is None:
            self._dirty = self.path.exists()  # replaced at save, whatever it is
            return
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            return
        if (
            isinstance(data, dict)
            and data.get("format") == CACHE_FORMAT
            and data.get("version") == __version__
            and isinstance(data.get("files"), dict)
            and isinstance(data.get("facts"), list)
        ):
            self._entries = data["files"]
            self._table = data["facts"]
            self._built = [None] * len(self._table)

    def facts(self, path: Path) -> Facts:
        """Facts for ``path``: from the cache when its stat matches, else screened now."""
        facts = self._memo.get(path)
        if facts is None:
            facts = self._memo[path] = self._facts(path)
        return facts

    def forget(self, path: Path) -> None:
        """Drop what is known of ``path``: it changed under the scan, screen it afresh."""
        self._memo.pop(path, None)
        self._stamps.pop(path, None)
        self._pooled.pop(path, None)
        self._ahead.pop(path, None)
        self._read_ahead.pop(path, None)
        self._stale.add(path)
        if self._entries.pop(str(path), None) is not None:
            self._dirty = True

    def digest(self, path: Path) -> str | None:
        """The sha256 (hex) of the exact bytes the screen judged, once ``facts(path)`` ran:
        the worker executes a file only if its bytes still have this digest."""
        entry = self._entries.get(str(path))
        value = entry[_SHA256] if _whole(entry) else None
        return value if isinstance(value, str) else None

    def prefetch(self, files: Iterable[tuple[Path, list[int] | None]],
                 ahead: StartsReadAhead | None = None) -> None:
        """Take the cached facts of ``files`` whose stat is unchanged, and start the
        screens of the others now: the large ones out of process side by side, so that
        none waits for another's timeout, and the small ones in read-ahead processes
        (``ahead``, given the small files in order: the processes it started and the
        places of each one's files) or else in pool processes when there are enough.

        Each file comes with its ``finder.stamp`` if the caller has one (the finder
        takes it anyway): it is the cache key, and ``facts`` does not stat the file again.
        """
        cold: list[Path] = []
        for path, stamp in files:
            # Each lookup hashes the path in Python: most scans have none of these to make.
            if ((self._memo and path in self._memo) or (self._running and path in self._running)
                    or (self._pooled and path in self._pooled)):
                continue
            try:
                if stamp is None or (self._stale and path in self._stale):
                    stamp = _stamp(os.stat(path))
            except OSError:
                continue  # facts() reports it
            cached = self._cached(path, stamp)
            if cached is not None:  # known: its facts now, and ``facts`` looks no further
                self._memo[path] = cached
                continue
            self._stamps[path] = stamp
            if stamp[0] <= IN_PROCESS_MAX_BYTES:  # its size
                cold.append(path)
                continue
            if len(self._running) >= MAX_SCREENS:
                continue  # screened when reached, one at a time
            read = self._read(path)
            if isinstance(read, tuple) and len(read[1]) > IN_PROCESS_MAX_BYTES:
                stamp, data = read
                try:
                    job = _Screening(data, self.timeout)
                except OSError as exc:
                    logger.debug("out-of-process screen of %s not started: %s", path, exc)
                    continue
                self._running[path] = (stamp, hashlib.sha256(data).hexdigest(), job)
        started = ahead(cold) if ahead is not None and cold else []
        for process, share in started:
            process.keep = self._kept
            self._aheads.append(process)
            self._ahead.update((cold[index], (process, place)) for place, index in enumerate(share))
        if not started:
            self._start_pool(cold)

    def _kept(self, data: Any) -> Facts | None:
        """Facts as JSON data (a read-ahead's answer as it comes, or an entry of the loaded
        table), shared with files alike; None when their shape is not the screen's (the
        file is screened again)."""
        try:
            facts = facts_from_json(data)
        except (TypeError, ValueError):
            return None
        return self._alike.setdefault(facts, facts)

    def _start_pool(self, paths: list[Path]) -> None:
        """Share ``paths`` out among pool processes, one per core, in turn: the scan asks
        for them in this order, so each process works a little ahead of the scan."""
        cores = usable_cores()
        count = min(cores, len(paths) // POOL_MIN_FILES)
        if cores < 2 or count < 1:
            return
        for first in range(count):
            share = paths[first::count]
            try:
                process = _PoolProcess(share, self.timeout)
            except OSError as exc:
                logger.debug("screen pool process not started: %s", exc)
                continue  # its files are screened in the server
            self._pools.append(process)
            self._pooled.update((path, (process, i)) for i, path in enumerate(share))

    def _read(self, path: Path) -> Facts | tuple[list[int], bytes]:
        """The cached facts while the stat matches (or why the file cannot be read),
        else its stat and bytes, to screen."""
        stamp = self._stamps.pop(path, None)
        try:
            stamp = stamp or _stamp(os.stat(path))
        except OSError as exc:
            return Facts(error=MSG_UNREADABLE.format(what=exc.strerror or exc))
        cached = self._cached(path, stamp)
        if cached is not None:
            return cached
        try:
            data = read_regular(path, self.max_file_bytes)
        except OSError as exc:
            return Facts(error=MSG_UNREADABLE.format(what=exc.strerror or exc))
        if len(data) > self.max_file_bytes:  # grown since its stat, or a module it imports
            try:
                size = os.stat(path).st_size
            except OSError:
                size = len(data)
            return Facts(error=MSG_TOO_LARGE.format(size=size, limit=self.max_file_bytes))
        return stamp, data

    def _cached(self, path: Path, stamp: list[int]) -> Facts | None:
        """The facts stored for ``path`` while its stat is ``stamp``; None if there are
        none, or they are damaged (a re-screen)."""
        entry = self._entries.get(str(path))
        if not (_whole(entry) and entry[_STAT] == stamp and type(entry[_SHA256]) is str):
            return None
        place = entry[_FACTS]
        if type(place) is not int:  # facts a screen gave in this scan
            return place if type(place) is Facts else None
        return self._placed(place)

    def _placed(self, place: int) -> Facts | None:
        """The facts at ``place`` in the loaded table, built once; None when there are
        none there, or they are damaged."""
        if not 0 <= place < len(self._table):
            return None
        facts = self._built[place]
        if facts is None:
            facts = self._built[place] = self._kept(self._table[place])
        return facts

    def _facts(self, path: Path) -> Facts:
        if self._running and path in self._running:  # (see prefetch)
            stamp, digest, job = self._running.pop(path)
            return self._store(path, stamp, digest, job.result())
        if self._ahead and path in self._ahead:
            process, place = self._ahead.pop(path)
            reading = process.take(place)  # None: not answered yet, screened here
            if (reading is not None and type(reading.facts) is Facts  # (see ``_kept``)
                    and self._unchanged(path, self._stamps.get(path))):
                self._answered += 1
                self._read_ahead[path] = (process.items[place].path, reading.record)
                return self._store(path, self._stamps.pop(path), reading.digest, reading.facts)
        answer = None
        pooled = self._pooled.pop(path, None) if self._pooled else None
        if pooled is not None:
            answer = pooled[0].answer(pooled[1])
            if isinstance(answer, Facts):  # (a named tuple: asked first)
                return answer  # stalled: not cached
            if isinstance(answer, tuple):
                return self._store(path, self._stamps.pop(path), *answer)
        read = self._read(path)
        if isinstance(read, Facts):
            return read
        stamp, data = read
        if len(data) > IN_PROCESS_MAX_BYTES or answer == _ALONE:
            try:
                facts = _Screening(data, self.timeout).result()
            except OSError as exc:
                facts = Facts(error=MSG_SCREEN_FAILED.format(what=exc.strerror or exc))
        else:
            tree = parse(data)
            facts = analyze_tree(data, tree)
            self._last_tree = (path, data, tree)
        return self._store(path, stamp, hashlib.sha256(data).hexdigest(), facts)

    def parsed(self, path: Path, data: bytes) -> ast.Module | str:
        """``screen.parse(data)``: the tree this process just screened, when ``data``
        are the bytes it judged last (a cold scan reads a file as data right after)."""
        last = self._last_tree
        if last is not None and last[0] == path and last[1] == data:
            return last[2]
        return parse(data)

    def read_ahead(self, path: Path) -> tuple[str, str | None] | None:
        """What a read-ahead process made of ``path``, once ``facts(path)`` took its
        answer: the path it read it as, and its ``declarative`` record (None when the
        file did not read as data there); None also when the file's stat has changed
        since (rewritten after it was judged: it is read again, and found out)."""
        answer = self._read_ahead.pop(path, None)
        entry = self._entries.get(str(path))
        if answer is not None and _whole(entry) and self._unchanged(path, entry[_STAT]):
            return answer
        return None

    @staticmethod
    def _unchanged(path: Path, stamp: list[int] | None) -> bool:
        """``path``'s stat is still ``stamp``: a read-ahead read the file long before the
        server's turn for it, and a file running meanwhile may have changed it since."""
        try:
            return stamp is not None and _stamp(os.stat(path)) == stamp
        except OSError:
            return False

    def end_screens(self) -> None:
        """End the screen's processes still running: the scan asks for no more facts."""
        for path in list(self._running):
            self._running.pop(path)[2].cancel()
        for process in self._pools:
            process.cancel()
        self._pools.clear()
        self._pooled.clear()
        if self._aheads:
            logger.debug("read-ahead processes answered %d of %d files", self._answered,
                         sum(len(ahead.items) for ahead in self._aheads))
        for ahead in self._aheads:
            ahead.close()
        self._aheads.clear()
        self._ahead.clear()

    def _store(self, path: Path, stamp: list[int], digest: str, facts: Facts) -> Facts:
        """Remember the facts and the digest of the bytes they are about. A stalled
        screen is not cached: the next scan tries again, as it would import again."""
        if not facts.stalled:
            facts = self._alike.setdefault(facts, facts)
            self._entries[str(path)] = [stamp, digest, facts, None]
            self._dirty = True
        return facts

    def duration(self, path: Path | None) -> float | None:
        """How long importing ``path`` took in the last scan that imported it."""
        entry = self._entries.get(str(path))
        value = entry[_DURATION] if _whole(entry) else None
        return value if type(value) is float and 0 <= value < math.inf else None

    def timed(self) -> bool:
        """Whether an earlier scan recorded how long any of these files took to import."""
        return any(_whole(e) and e[_DURATION] is not None for e in self._entries.values())

    def record_duration(self, path: Path | None, seconds: float) -> None:
        entry = self._entries.get(str(path))
        if _whole(entry):
            entry[_DURATION] = round(seconds, 4)
            self._dirty = True

    def save(self, *, complete: bool = False) -> None:
        """Publish the cache atomically; failing to write it is logged, never raised.

        Screens still running (a scan that stopped early) are ended first.
        ``complete``: a whole scan, which asked for the facts (and the reading) of every
        file it needs; the entries of files it did not ask for (deleted, renamed, no
        longer imported) are dropped, so the cache stays the size of the project."""
        self.end_screens()
        self.reads.save(complete=complete)
        if complete and self.persist:
            asked = {str(path) for path in self._memo}
            for name in [name for name in self._entries if name not in asked]:
                del self._entries[name]
                self._dirty = True
        if not (self.persist and self._dirty):
            return

        def write(handle: BinaryIO) -> None:
            # An entry at a time, then each distinct facts once: one ``dumps`` of the
            # whole document holds every token of it at once (1.3 MB for 1,000 files),
            # and ``json.dump`` goes through the pure-Python encoder.
            places: dict[int, int] = {}  # id() of facts written -> their place
            table: list[Any] = []  # those facts, by place (each alive in an entry)
            handle.write(f'{{"format":{CACHE_FORMAT},"version":{_compact(__version__)},'
                         '"files":{'.encode())
            comma = ""
            for name, entry in self._entries.items():
                facts = entry[_FACTS] if _whole(entry) else None
                # A loaded place is written anew: the table saved holds only the facts
                # of files still in the cache, each as the screen writes it. A damaged
                # entry is dropped, never written with another entry's facts.
                if type(facts) is int:
                    facts = self._placed(facts) if _sound(entry) else None
                if type(facts) is not Facts:
                    continue
                place = places.get(id(facts))
                if place is None:
                    place = places[id(facts)] = len(table)
                    table.append(facts)
                stored = [entry[_STAT], entry[_SHA256], place, entry[_DURATION]]
                handle.write(f"{comma}{_compact(name)}:{_compact(stored)}".encode())
                comma = ","
            handle.write(b'},"facts":[')
            comma = ""
            for facts in table:
                handle.write(f"{comma}{_compact(facts)}".encode())
                comma = ","
            handle.write(b"]}")

        try:
            _publish(self.path, ".screen-", write)
            self._dirty = False
        except OSError as exc:
            logger.debug("screen cache not saved to %s: %s", self.path, exc)


# A cache file is read whole; one larger than this is not ours (1,000 files of 100-node
# workflows make 77 MB of readings) and costs a re-screen instead of the server's memory.
CACHE_FILE_MAX_BYTES = 512 * 1024**2


def _read_cache_file(path: Path) -> bytes | None:
    """The bytes of a cache file, or None when there is none to read: missing, not a
    regular file (a FIFO planted there would block the scan), larger than
    ``CACHE_FILE_MAX_BYTES``, or unreadable."""
    try:
        if os.stat(path).st_size > CACHE_FILE_MAX_BYTES:  # (a FIFO's stat does not block)
            return None
        data = read_regular(path, CACHE_FILE_MAX_BYTES)
    except (OSError, MemoryError):
        return None
    return data if len(data) <= CACHE_FILE_MAX_BYTES else None


def _publish(path: Path, prefix: str, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` atomically with what ``write`` writes: into a temporary file
    beside it, renamed over it, or removed again when anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


READS_FORMAT = 1


def _reads_header() -> bytes:
    """What a stored reading depends on besides the file: this package, Kailash (its
    builders and node classes, and where they live) and Python (its parser)."""
    import kailash

    return json.dumps({"format": READS_FORMAT, "version": __version__,
                       "kailash": [kailash.__version__, kailash.__file__],
                       "python": sys.version}).encode()


_decoder = json.JSONDecoder()


class ReadCache:
    """Records of files read as data, one per file path, each under a key that names
    the exact bytes read and everything else the reading was given.

    One text file, a header line and then a line per file: ``key check path record``
    (``check``: the record's sha256, so that a damaged record is never served; the path
    as JSON; records are JSON too, so no line holds a newline). It is loaded when first
    asked. New records go to an anonymous temporary file as they come (a cold scan does
    not hold every file's workflows until its end, and a server killed mid-scan leaves
    nothing behind), copied into place at ``save``. A damaged line costs a reading, and
    the next save leaves it out.
    """

    def __init__(self, path: Path, persist: bool = True) -> None:
        self.path = path
        self.persist = persist
        # path -> its key, its record's sha256, its line, where the record starts in it
        self._stored: dict[str, tuple[str, str, bytes, int]] | None = None
        self._untidy = False  # the file holds a line that is damaged or repeated
        self._hits: set[str] = set()
        self._asked: set[str] = set()
        self._new: set[str] = set()
        self._out: BinaryIO | None = None

    def _load(self) -> dict[str, tuple[str, str, bytes, int]]:
        stored: dict[str, tuple[str, str, bytes, int]] = {}
        data = _read_cache_file(self.path)
        if data is None:
            self._untidy = self.path.exists()  # replaced at save, whatever it is
            return stored
        header, _, body = data.partition(b"\n")
        if header != _reads_header():
            self._untidy = bool(data)
            return stored
        *lines, last = body.split(b"\n")  # every line ends in a newline: a last one
        if last:  # without it was cut short
            self._untidy = True
        for line in lines:
            try:
                key, check, rest = line.decode("ascii").split(" ", 2)
                name, end = _decoder.raw_decode(rest)
                if not isinstance(name, str) or name in stored or rest[end:end + 1] != " ":
                    raise ValueError("not a path, or a path seen before")
            except (ValueError, RecursionError):  # a damaged line costs a reading
                self._untidy = True
                continue
            stored[name] = (key, check, line, len(key) + len(check) + 2 + end + 1)
        return stored

    def get(self, path: str, key: str) -> str | None:
        """The record stored for ``path`` under ``key``, if any, and undamaged."""
        if not self.persist:
            return None
        if self._stored is None:
            self._stored = self._load()
        self._asked.add(path)
        stored = self._stored.get(path)
        if stored is None or stored[0] != key:
            return None
        _, check, line, at = stored
        if hashlib.sha256(memoryview(line)[at:]).hexdigest() != check:
            self._untidy = True
            return None
        self._hits.add(path)
        return line[at:].decode("ascii")

    def put(self, path: str, key: str, record: str) -> None:
        """Keep ``record`` (ASCII JSON) as ``path``'s reading under ``key``."""
        if not self.persist:
            return
        try:
            data = record.encode("ascii")
            check = hashlib.sha256(data).hexdigest()
            self._output().write(f"{key} {check} {json.dumps(path)} ".encode() + data + b"\n")
            self._new.add(path)
        except (OSError, UnicodeEncodeError) as exc:
            logger.debug("readings not kept in %s: %s", self.path.parent, exc)
            self._discard()
            self.persist = False

    def save(self, *, complete: bool = False) -> None:
        """Replace the file when this scan read a file anew, when it holds a damaged
        line, or when ``complete`` (the scan asked for every file it read) and a stored
        record went unused. Kept: new records, records used, and, unless ``complete``,
        records not asked for."""
        if self._stored is None and self._new and self.persist:
            self._stored = self._load()  # (``put`` without ``get``): keep what is there
        stored = self._stored or {}
        unused = complete and len(self._hits) < len(stored)
        if not self.persist or not (self._new or unused or self._untidy):
            self._discard()
            self._forget()
            return
        try:
            out = self._output()
            for name, (_, _, line, _) in stored.items():
                if name in self._new or (name not in self._hits and (
                        complete or name in self._asked)):
                    continue
                out.write(line + b"\n")
            out.seek(0)
            _publish(self.path, ".read-", lambda handle: shutil.copyfileobj(out, handle))
        except OSError as exc:
            logger.debug("readings not saved to %s: %s", self.path, exc)
        finally:
            self._discard()
            self._forget()

    def _forget(self) -> None:
        """The scan is over: what was loaded is not kept alive by whoever holds this."""
        self._stored = None
        self._untidy = False
        self._hits.clear()
        self._asked.clear()
        self._new.clear()

    def _output(self) -> BinaryIO:
        """The anonymous file of this scan's new file, its header written."""
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = tempfile.TemporaryFile(dir=self.path.parent)
            self._out.write(_reads_header() + b"\n")
        return self._out

    def _discard(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            with contextlib.suppress(OSError):  # a full disk refuses the last flush too
                out.close()
