"""Stage 1: find candidate files exactly as Nexus's native discovery does.

Same glob patterns, same exclusions, same order, so the same files yield the
same workflow names. Two things differ on purpose: a file matched by two
patterns is one candidate (imported once), and paths are confined to the base
directory (a symlink out of the project is refused, not followed).
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nexus.discovery import WorkflowDiscovery

from .protocol import is_text

WORKFLOW_PATTERNS: tuple[str, ...] = tuple(WorkflowDiscovery.WORKFLOW_PATTERNS)
EXCLUDE_FILES: frozenset[str] = frozenset(WorkflowDiscovery.EXCLUDE_FILES)


MSG_OUTSIDE = "Is a symlink to {target}, outside the project ({base}); refused, not followed."
MSG_TOO_LARGE = (
    "Is {size:,} bytes, over the {limit:,}-byte limit for discovered files; refused unread. "
    "Raise max_file_bytes if this really is a workflow file."
)
MSG_BROKEN_LINK = "Is a broken or looping symlink ({what}); skipped."
MSG_NOT_TEXT = (
    "Its path {path} is not valid UTF-8, which the messages to a file's process, the "
    "report and the log cannot carry; refused unread. Rename the file (or its directory)."
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One file native discovery would import, with why we refuse it, if we do."""

    path: Path
    rel: str
    refusal: str | None = None
    real: Path | None = None
    # ``stamp(os.stat(real))`` as the finder took it: the screen cache's key, one stat
    # per file.
    stamp: list[int] | None = None


def stamp(info: os.stat_result) -> list[int]:
    """What identifies a file's content version: ctime and inode change on any rewrite
    (and no user call sets them back), size and mtime besides; the size first. Not on
    every change: a write through a shared memory mapping made dirty before the last
    scan moves none of them, so a file is trusted by its stamp only where its judged
    bytes are not checked again (a file it imports; a file read as data or sent to a
    worker is checked against its digest)."""
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


@dataclass(frozen=True)
class Found:
    """The finder's output.

    ``order`` lists every (pattern, file) match in native order, duplicates
    included, so names can be resolved exactly as native discovery resolves
    them (later matches overwrite earlier ones).
    """

    base: Path
    candidates: tuple[Candidate, ...]
    order: tuple[str, ...]


def resolve_base(base_path: str | os.PathLike[str] | None) -> Path:
    return Path(base_path if base_path is not None else os.getcwd()).absolute()


def excluded(rel: str, name: str, exclude: Sequence[str]) -> bool:
    """Whether discovery leaves this file out: a name Nexus skips, or an ``exclude`` pattern
    (``serve`` leaves out the same files when it looks for models)."""
    if name in EXCLUDE_FILES:
        return True
    return any(fnmatch.fnmatch(rel, pattern) for pattern in exclude)


def _check(
    path: Path, rel: str, base_real: Path, max_file_bytes: int, dirs: dict[Path, Path | None]
) -> Candidate | None:
    """A candidate, refused if it leaves the project, loops, or is too large to read.

    None for what is not a regular file (native skips those too). One ``lstat``
    per plain file; symlinks (and each directory, once) are resolved.
    """
    if not is_text(str(path)):
        return Candidate(path, rel, MSG_NOT_TEXT.format(path=ascii(str(path))))
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            real = path.resolve(strict=True)
            info = real.stat()
        else:
            parent = path.parent
            if parent not in dirs:
                resolved = parent.resolve(strict=True)
                dirs[parent] = None if resolved == parent else resolved
            where = dirs[parent]
            real = path if where is None else where / path.name  # one Path when they agree
    except (OSError, RuntimeError) as exc:
        return Candidate(path, rel, MSG_BROKEN_LINK.format(what=exc))
    if not real.is_relative_to(base_real):
        return Candidate(path, rel, MSG_OUTSIDE.format(target=real, base=base_real))
    if not stat.S_ISREG(info.st_mode):
        return None
    size = info.st_size
    if size > max_file_bytes:
        return Candidate(path, rel, MSG_TOO_LARGE.format(size=size, limit=max_file_bytes))
    return Candidate(path, rel, real=real, stamp=stamp(info))


def _matches(base: Path, pattern: str) -> Iterable[Path]:
    try:
        return sorted(base.glob(pattern))
    except OSError:
        return ()


def find_candidates(
    base: Path,
    *,
    patterns: Sequence[str] = WORKFLOW_PATTERNS,
    exclude: Sequence[str] = (),
    max_file_bytes: int,
) -> Found:
    """Glob the native patterns under ``base``; each file becomes one candidate."""
    base_real = base.resolve()
    candidates: dict[str, Candidate] = {}
    order: list[str] = []
    dirs: dict[Path, Path | None] = {}  # a directory -> its real path, None if the same
    for pattern in patterns:
        for path in _matches(base, pattern):
            rel = path.relative_to(base).as_posix()
            if excluded(rel, path.name, exclude):
                continue
            if rel not in candidates:
                candidate = _check(path, rel, base_real, max_file_bytes, dirs)
                if candidate is None:
                    continue
                candidates[rel] = candidate
            order.append(rel)
    return Found(base=base, candidates=tuple(candidates.values()), order=tuple(order))
