"""What counts as the project's own code: under the base path, but not an environment.

A virtualenv inside the project (``.venv/``, the default of venv, uv and
poetry) holds installed libraries, not project code: their modules may be
imported by the server, and the import graph must not crawl them.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import sysconfig
from functools import lru_cache

ENVIRONMENT_DIRS = frozenset({"site-packages", "dist-packages"})


@lru_cache(maxsize=1)
def _prefixes() -> tuple[str, ...]:
    found = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    return tuple(sorted(os.path.realpath(p).rstrip(os.sep) + os.sep for p in found))


def is_installed(path: str | os.PathLike[str]) -> bool:
    """Inside a site-packages or dist-packages directory: an installed library."""
    return not ENVIRONMENT_DIRS.isdisjoint(os.path.realpath(path).split(os.sep))


def in_project(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """``path`` is project code under ``root``; an interpreter environment kept inside
    the project (its prefix, or any site-packages) is not."""
    real = os.path.realpath(path)
    base = os.path.realpath(root).rstrip(os.sep) + os.sep
    if not (real + os.sep).startswith(base) or is_installed(real):
        return False
    inner = [p for p in _prefixes() if p.startswith(base)]
    return not any(real.startswith(prefix) for prefix in inner)


@lru_cache(maxsize=1)
def _interpreter_dirs() -> tuple[str, ...]:
    """The interpreter's own library directories (standard library, site-packages)."""
    paths = sysconfig.get_paths()
    found = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(sorted(os.path.realpath(p).rstrip(os.sep) + os.sep for p in found))


@lru_cache(maxsize=1)
def _standard_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {paths[k] for k in ("stdlib", "platstdlib") if k in paths}
    return tuple(sorted(os.path.realpath(p).rstrip(os.sep) + os.sep for p in found))


def _under(path: str | os.PathLike[str], dirs: tuple[str, ...]) -> bool:
    real = os.path.realpath(path) + os.sep
    return any(real.startswith(d) for d in dirs)


def is_standard_library(path: str | os.PathLike[str]) -> bool:
    """In the standard library's directories, and not an installed library kept there."""
    return not is_installed(path) and _under(path, _standard_dirs())


def is_environment(path: str | os.PathLike[str]) -> bool:
    """An installed library or the standard library: code that is not any project's own.

    Anything else on the import path, inside the project or not, is screened:
    reading a file is not executing it.
    """
    return is_installed(path) or _under(path, _interpreter_dirs())


def find_spec_beside(finder: object, name: str, path: object = None,
                     target: object = None) -> object:
    """The spec the other ``sys.meta_path`` finders give for ``name``: for a finder that
    only inspects or wraps what the import system would find anyway."""
    for other in sys.meta_path:
        find = getattr(other, "find_spec", None)
        if other is finder or find is None:
            continue
        spec = find(name, path, target)
        if spec is not None:
            return spec
    return None


def read_regular(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of ``path`` (up to ``limit`` + 1 of them), if it is a regular file, else
    ``OSError``.

    Opened without blocking: the finder saw a regular file, but a file running in a
    worker meanwhile can put a FIFO under its name, and a plain ``open`` would wait for a
    writer forever, and the scan with it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read() if limit is None else handle.read(limit + 1)
    finally:
        os.close(fd)
