"""The screen cache: a file's ``Facts`` keyed by path, size, mtime and plugin version.

A warm scan then stats each file instead of reading and parsing it. The cache
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
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .report import MSG_UNREADABLE
from .screen import Facts, ImportRef, ModelUse, analyze

logger = logging.getLogger(__name__)

CACHE_FORMAT = 5


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "nexus-dataflow-plugin"


def _ref(data: list[Any]) -> ImportRef:
    module, names, level, line = data
    return ImportRef(str(module), tuple(names), int(level), int(line))


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
        list(facts.model_classes),
    ]


def facts_from_json(data: list[Any]) -> Facts:
    error, model, imports, uses, factories, nodes, may_block, classes = data
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
        model_classes=tuple(str(c) for c in classes),
    )


class ScreenCache:
    """Facts per file, reused while the file's size and mtime are unchanged.

    With ``persist=False`` it only memoises within one scan.
    """

    def __init__(self, base: Path, directory: Path | None = None, persist: bool = True) -> None:
        digest = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:16]
        self.path = (directory or default_cache_dir()) / f"screen-{digest}.json"
        self.persist = persist
        self._entries: dict[str, Any] = {}
        self._memo: dict[Path, Facts] = {}
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

    def _facts(self, path: Path) -> Facts:
        key = str(path)
        try:
            stat = os.stat(key)
        except OSError as exc:
            return Facts(error=MSG_UNREADABLE.format(what=exc.strerror or exc))
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = self._entries.get(key)
        if isinstance(entry, dict) and entry.get("stat") == stamp:
            try:
                return facts_from_json(entry["facts"])
            except (KeyError, TypeError, ValueError):
                pass
        try:
            facts = analyze(path.read_bytes())
        except OSError as exc:
            return Facts(error=MSG_UNREADABLE.format(what=exc.strerror or exc))
        self._entries[key] = {"stat": stamp, "facts": facts_to_json(facts)}
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
        """Publish the cache atomically; failing to write it is logged, never raised."""
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
