"""Shared pytest fixtures and helpers.

The first block provides PostgreSQL; other fixtures go below it: a private screen
cache for the whole session, and the project a test module scans (``tree``, its
``report``) with the helpers that build and scan one (``place``, ``scan``, ``runs``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    from nexus_dataflow_plugin import DiscoveryReport

# --- PostgreSQL -------------------------------------------------------------------------------
# Tests that need a real PostgreSQL use `postgres_url` (server-level, database ndp_test) or
# `fresh_pg_database` (an empty database of their own). In CI, .ci/run starts a private cluster
# and exports NDP_POSTGRES_URL. psycopg2 is imported lazily so tests that never touch
# PostgreSQL do not depend on it.

_PG_SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres.sh"


def _pg_connect(url: str):
    """Connect with a short timeout, turning any error into a clear test failure."""
    import psycopg2

    try:
        return psycopg2.connect(url, connect_timeout=5)
    except psycopg2.Error as exc:
        pytest.fail(f"PostgreSQL at {url} does not accept connections: {exc}", pytrace=False)


def _run_pg_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(_PG_SCRIPT), *args], capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a reachable PostgreSQL server, database ndp_test.

    NDP_POSTGRES_URL wins when set (that is how .ci/run passes its cluster). Without it, CI
    fails rather than skips, so a broken database setup can never turn into a green run that
    tested nothing. On a developer machine we start a throwaway cluster with the same script
    CI uses (.ci/postgres.sh) and stop it at session end.
    """
    url = os.environ.get("NDP_POSTGRES_URL")
    if url:
        _pg_connect(url).close()
        yield url
        return
    if os.environ.get("CI"):
        pytest.fail(
            "NDP_POSTGRES_URL is not set. In CI, PostgreSQL tests must run against the server"
            " started by .ci/run; they fail rather than skip.",
            pytrace=False,
        )
    cluster_dir = tempfile.mkdtemp(prefix="ndp-pg-")
    try:
        proc = _run_pg_script("start", cluster_dir)
        if proc.returncode != 0:
            pytest.fail(
                "NDP_POSTGRES_URL is not set and starting a private PostgreSQL with"
                f" .ci/postgres.sh failed (exit {proc.returncode}):\n{proc.stderr}",
                pytrace=False,
            )
        url = proc.stdout.strip().splitlines()[-1]
        _pg_connect(url).close()
        yield url
    finally:
        _run_pg_script("stop", cluster_dir)


@pytest.fixture
def fresh_pg_database(postgres_url: str) -> Iterator[str]:
    """URL of a new, empty, uniquely named database, dropped after the test.

    Gives each test isolation (schemas, migrations, registries) without sharing state
    through ndp_test.
    """
    from psycopg2 import sql

    name = f"ndp_t_{uuid.uuid4().hex[:16]}"
    ident = sql.Identifier(name)
    conn = _pg_connect(postgres_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    finally:
        conn.close()

    try:
        yield urlunsplit(urlsplit(postgres_url)._replace(path="/" + name))
    finally:
        conn = _pg_connect(postgres_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                # Pools left open by the test would otherwise block DROP DATABASE.
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                force = sql.SQL(" WITH (FORCE)") if conn.server_version >= 130000 else sql.SQL("")
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident) + force)
        finally:
            conn.close()


def pg_rows(url: str, sql: str) -> list[tuple]:
    """Every row ``sql`` returns from the database at ``url``: what a test reads back."""
    conn = _pg_connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


# --- end of PostgreSQL fixtures ---------------------------------------------------------------


# --- SQLite ------------------------------------------------------------------------------------


def sqlite_rows(path: str | os.PathLike[str], sql: str) -> list[tuple]:
    """Every row ``sql`` returns from the SQLite file at ``path`` (``pg_rows`` for SQLite)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# --- a private cache ---------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The screen cache of every test, and of every process a test starts, in a temporary
    directory: the suite must not write into the user's ``~/.cache``. Set for the whole
    session, before any module-scoped fixture runs; a test may still choose its own."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        yield cache
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved


# --- a project to scan -------------------------------------------------------------------------
# Marker fixtures (tests/fixtures/engine/README.md) append their pid to ``<file>.ran`` each
# time they run; ``runs`` reads that back. A test module that scans one project for all its
# tests declares ``FIXTURES`` (a directory) and ``LAYOUT`` (destination -> fixture); the
# ``tree`` fixture builds it once and ``report`` scans it once. A module whose project or
# scan differs overrides the fixture it needs.


def runs(path: Path, suffix: str = ".ran") -> list[int]:
    """The pids that executed the fixture at ``path``, one per execution."""
    marker = Path(f"{path}{suffix}")
    return [int(pid) for pid in marker.read_text().split()] if marker.exists() else []


def place(base: Path, layout: Mapping[str, str | Path], fixtures: Path) -> Path:
    """Copy fixtures into ``base``: destination (relative) -> fixture file or directory
    (relative to ``fixtures``, or absolute). Returns ``base``."""
    for dest, src in layout.items():
        source, target = fixtures / src, base / dest
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return base


def scan(path: Path, **options: Any) -> DiscoveryReport:
    """One scan of ``path`` as most tests make it: one worker (cheap on a shared machine, and
    every file goes through the same warm process), no screen cache, 5 s per file;
    ``options`` change any of it (``workers=None`` is one worker per core, the default)."""
    # Imported here, not with conftest: the package imports Nexus, whose import calls
    # logging.basicConfig(level=INFO); before pytest's log capture is in place that takes
    # effect, and tests that count log records see INFO ones.
    from nexus_dataflow_plugin import SmartDiscovery

    settings = {"timeout": 5, "workers": 1, "cache": False, **options}
    return SmartDiscovery(path, **settings).run()


def warm(pool: Any, directory: Path) -> None:
    """Leave ``pool``'s workers warm, as a server's are by its first scan: a scan (of a
    project made in ``directory``) with one file that needs a worker."""
    from nexus_dataflow_plugin import SmartDiscovery

    engine = Path(__file__).parent / "fixtures" / "engine"
    place(directory, {"workflows/good.py": "good_pipeline.py"}, engine)
    SmartDiscovery(directory, cache=False, pool=pool).run()


@pytest.fixture(scope="module")
def tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test module's project: its ``LAYOUT`` of ``FIXTURES``, built once per module."""
    module = request.module
    return place(tmp_path_factory.mktemp(module.__name__), module.LAYOUT, module.FIXTURES)


@pytest.fixture(scope="module")
def report(tree: Path) -> DiscoveryReport:
    """One scan of the module's ``tree`` (see ``scan``), shared by its tests."""
    return scan(tree)
