"""The screen cache: a file's ``Facts`` keyed by path, stat and plugin version.

A warm scan then stats each file instead of reading and parsing it. The stat
key holds what a user cannot set back (ctime, inode) besides size and mtime,
so a file rewritten with its mtime restored is screened again; each entry
keeps the sha256 of the exact bytes screened, for the worker to execute only
those.

Files above ``IN_PROCESS_MAX_BYTES`` are screened in a short-lived ``python -I -S``
subprocess killed at the file's timeout: CPython parses some inputs in
quadratic time (a 600 KB f-string takes 20 s), and the server must not stall. The cache
is one JSON file per project under the user's cache directory; it is only
ever replaced atomically (write a temporary file, then rename), so concurrent
writers cannot interleave and a reader never sees half a file. Anything
unreadable, from another version or not shaped as expected is ignored: the
worst a broken cache can do is cost a re-parse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import __version__
from .config import Settings
from .report import MSG_SCREEN_FAILED, MSG_SCREEN_TIMEOUT, MSG_UNREADABLE
from .screen import Facts, ImportRef, ModelUse, PathRef, analyze

logger = logging.getLogger(__name__)

CACHE_FORMAT = 6

# Measured on CPython 3.11 (ast.parse, worst case an f-string of `{a}` fields): 50 KB
# 0.2 s, 100 KB 0.64 s, 200 KB 2.4 s, 600 KB 20 s; plain code parses at about 1 MB/s.
# Up to 32 KB the worst case stays under 0.1 s, so such files are parsed in the server.
IN_PROCESS_MAX_BYTES = 32 * 1024

# At most this many large files are screened at once, each within this address space:
# a syntax tree takes up to several hundred times its source (a 3 MB file reached
# 1.5 GB), and a project of many large files must not take the machine's memory.
MAX_SCREENS = max(2, os.cpu_count() or 1)
SCREEN_MEMORY_BYTES = 2 * 1024**3

# -I ignores PYTHONPATH: the child puts this package's parent on sys.path itself.
_CHILD = (
    "import sys, json, resource\n"
    "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from nexus_dataflow_plugin.cache import facts_to_json\n"
    "from nexus_dataflow_plugin.screen import analyze\n"
    "sys.stdout.write(json.dumps(facts_to_json(analyze(sys.stdin.buffer.read()))))\n"
)


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "nexus-dataflow-plugin"


def _ref(data: list[Any]) -> ImportRef:
    module, names, level, line = data
    return ImportRef(str(module), tuple(names), int(level), int(line))


def _path(data: list[Any]) -> PathRef:
    anchor, ups, tail, line = data
    return PathRef(str(anchor), int(ups), str(tail), int(line))


def facts_to_json(facts: Facts) -> list[Any]:
    """``Facts`` as a JSON list in field order: without a key per field, a cache
    of 10,000 files parses in two thirds of the time."""
    return [
        facts.error,
        facts.model,
        [list(i) for i in facts.imports],
        [[u.name, u.cls, u.line, list(u.source)] for u in facts.external_model_uses],
        list(facts.factories),
        list(facts.node_types),
        facts.may_block,
        [list(p) for p in facts.path_entries],
        [list(p) for p in facts.run_paths],
        list(facts.exports),
        facts.stalled,
        list(facts.model_classes),
    ]


def facts_from_json(data: list[Any]) -> Facts:
    (error, model, imports, uses, factories, nodes, may_block, entries, runs, exports,
     stalled, classes) = data
    return Facts(
        error=error,
        model=model,
        imports=tuple(_ref(i) for i in imports),
        external_model_uses=tuple(
            ModelUse(str(n), str(c), int(line), _ref(src)) for n, c, line, src in uses
        ),
        factories=tuple(str(f) for f in factories),
        node_types=tuple(str(n) for n in nodes),
        may_block=bool(may_block),
        path_entries=tuple(_path(p) for p in entries),
        run_paths=tuple(_path(p) for p in runs),
        exports=tuple(str(e) for e in exports),
        stalled=bool(stalled),
        model_classes=tuple(str(c) for c in classes),
    )


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
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-I", "-S", "-c", _CHILD, package_parent,
             str(SCREEN_MEMORY_BYTES)],
            stdin=self._in, stdout=self._out, stderr=subprocess.DEVNULL,
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
            return Facts(error=MSG_SCREEN_TIMEOUT.format(timeout=self.timeout), stalled=True)
        except (OSError, ValueError, TypeError) as exc:
            return Facts(error=MSG_SCREEN_FAILED.format(what=f"{type(exc).__name__}: {exc}"))
        finally:
            self._in.close()
            self._out.close()


def _stamp(stat: os.stat_result) -> list[int]:
    """What identifies a file's content version: ctime and inode change on any rewrite
    (and no user call sets them back), size and mtime besides."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


class ScreenCache:
    """Facts per file, reused while the file's stat is unchanged.

    With ``persist=False`` it only memoises within one scan. ``timeout`` bounds
    the screen of each large file (see ``IN_PROCESS_MAX_BYTES``).
    """

    def __init__(self, base: Path, directory: Path | None = None, persist: bool = True,
                 timeout: float = Settings.timeout) -> None:
        digest = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:16]
        self.path = (directory or default_cache_dir()) / f"screen-{digest}.json"
        self.persist = persist
        self.timeout = timeout
        self._entries: dict[str, Any] = {}
        self._memo: dict[Path, Facts] = {}
        self._running: dict[Path, tuple[list[int], str, _Screening]] = {}
        self._dirty = False
        if persist:
            self._load()

    def _load(self) -> None:
        try:
            with self.path.open(encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return
        if (
            isinstance(data, dict)
            and data.get("format") == CACHE_FORMAT
            and data.get("version") == __version__
            and isinstance(data.get("files"), dict)
        ):
            self._entries = data["files"]

    def facts(self, path: Path) -> Facts:
        """Facts for ``path``: from the cache when its stat matches, else screened now."""
        if path not in self._memo:
            self._memo[path] = self._facts(path)
        return self._memo[path]

    def forget(self, path: Path) -> None:
        """Drop what is known of ``path``: it changed under the scan, screen it afresh."""
        self._memo.pop(path, None)
        if self._entries.pop(str(path), None) is not None:
            self._dirty = True

    def digest(self, path: Path) -> str | None:
        """The sha256 (hex) of the exact bytes the screen judged, once ``facts(path)`` ran:
        the worker executes a file only if its bytes still have this digest."""
        entry = self._entries.get(str(path))
        value = entry.get("sha256") if isinstance(entry, dict) else None
        return value if isinstance(value, str) else None

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Start the out-of-process screens of the large files among ``paths`` now, so
        that they run side by side and none waits for another's timeout."""
        for path in paths:
            try:
                small = os.stat(path).st_size <= IN_PROCESS_MAX_BYTES
            except OSError:
                continue  # facts() reports it
            if small or path in self._memo or path in self._running:
                continue
            if len(self._running) >= MAX_SCREENS:
                return  # the rest are screened when reached, one at a time
            read = self._read(path)
            if isinstance(read, tuple) and len(read[1]) > IN_PROCESS_MAX_BYTES:
                stamp, data = read
                try:
                    job = _Screening(data, self.timeout)
                except OSError as exc:
                    logger.debug("out-of-process screen of %s not started: %s", path, exc)
                    continue
                self._running[path] = (stamp, hashlib.sha256(data).hexdigest(), job)

    def _read(self, path: Path) -> Facts | tuple[list[int], bytes]:
        """The cached facts while the stat matches (or why the file cannot be read),
        else its stat and bytes, to screen."""
        try:
            stamp = _stamp(os.stat(path))
        except OSError as exc:
            return Facts(error=MSG_UNREADABLE.format(what=exc.strerror or exc))
        entry = self._entries.get(str(path))
        if isinstance(entry, dict) and entry.get("stat") == stamp and "sha256" in entry:
            try:
                return facts_from_json(entry["facts"])
            except (KeyError, TypeError, ValueError):
                pass  # a damaged entry costs a re-screen
        try:
            return stamp, path.read_bytes()
        except OSError as exc:
            return Facts(error=MSG_UNREADABLE.format(what=exc.strerror or exc))

    def _facts(self, path: Path) -> Facts:
        if path in self._running:
            stamp, digest, job = self._running.pop(path)
            return self._store(path, stamp, digest, job.result())
        read = self._read(path)
        if isinstance(read, Facts):
            return read
        stamp, data = read
        if len(data) > IN_PROCESS_MAX_BYTES:
            try:
                facts = _Screening(data, self.timeout).result()
            except OSError as exc:
                facts = Facts(error=MSG_SCREEN_FAILED.format(what=exc.strerror or exc))
        else:
            facts = analyze(data)
        return self._store(path, stamp, hashlib.sha256(data).hexdigest(), facts)

    def _store(self, path: Path, stamp: list[int], digest: str, facts: Facts) -> Facts:
        """Remember the facts and the digest of the bytes they are about. A stalled
        screen is not cached: the next scan tries again, as it would import again."""
        if not facts.stalled:
            self._entries[str(path)] = {"stat": stamp, "sha256": digest,
                                        "facts": facts_to_json(facts)}
            self._dirty = True
        return facts

    def duration(self, path: Path | None) -> float | None:
        """How long importing ``path`` took in the last scan that imported it."""
        entry = self._entries.get(str(path))
        value = entry.get("duration") if isinstance(entry, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    def timed(self) -> bool:
        """Whether an earlier scan recorded how long any of these files took to import."""
        return any(isinstance(e, dict) and "duration" in e for e in self._entries.values())

    def record_duration(self, path: Path | None, seconds: float) -> None:
        entry = self._entries.get(str(path))
        if isinstance(entry, dict):
            entry["duration"] = round(seconds, 4)
            self._dirty = True

    def save(self) -> None:
        """Publish the cache atomically; failing to write it is logged, never raised.

        Screens still running (a scan that stopped early) are ended first."""
        for path in list(self._running):
            self._running.pop(path)[2].cancel()
        if not (self.persist and self._dirty):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".screen-", suffix=".tmp")
            document = {"format": CACHE_FORMAT, "version": __version__, "files": self._entries}
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                # dumps, not dump: json.dump streams through the pure-Python encoder.
                handle.write(json.dumps(document, separators=(",", ":")))
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError as exc:
            logger.debug("screen cache not saved to %s: %s", self.path, exc)
