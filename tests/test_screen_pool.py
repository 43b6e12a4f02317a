"""Uncached small files screened side by side in screen processes, one per core.

- Every file gets exactly the facts and digest the server's own screen gives it.
- A file that outlasts the timeout in a screen process is a stall with a reason; the
  files around it are screened as usual.
- A screen process killed from outside costs no file its verdict: the file it was on
  is screened again alone, the rest in the server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from procs import processes_with_env, started_commands

from nexus_dataflow_plugin import cache as screen_cache
from nexus_dataflow_plugin.cache import IN_PROCESS_MAX_BYTES, ScreenCache
from nexus_dataflow_plugin.screen import analyze

FIXTURES = Path(__file__).parent / "fixtures"
MARK = "NDP_TEST_SCREEN_POOL"

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                reason="the screen runs in the server on one core")


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> str:
    """A screen process for every file (the threshold is for speed, not behaviour), each
    marked in its environment so the test can find it."""
    monkeypatch.setattr(screen_cache, "POOL_MIN_FILES", 1)
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    return mark


def _copy_fixtures(into: Path) -> list[Path]:
    """Every fixture of the suite, hostile ones included: the screen parses, never runs."""
    into.mkdir(parents=True)
    paths = []
    for source in sorted(FIXTURES.rglob("*.py")):
        target = into / f"{source.parent.name}_{source.name}"
        shutil.copyfile(source, target)
        paths.append(target)
    return paths


def _screen_processes(mark: str) -> list[int]:
    return [pid for pid, command in processes_with_env(MARK, mark) if "screen_listed" in command]


def test_every_file_gets_the_facts_and_digest_the_servers_own_screen_gives(tmp_path, pooled):
    paths = _copy_fixtures(tmp_path / "workflows")
    cache = ScreenCache(tmp_path, tmp_path / "cache")
    cache.prefetch((p, None) for p in paths)
    assert _screen_processes(pooled), "no screen process started"

    for path in paths:
        data = path.read_bytes()
        assert cache.facts(path) == analyze(data), path.name
        assert cache.digest(path) == hashlib.sha256(data).hexdigest(), path.name
    cache.save()
    assert _screen_processes(pooled) == []


def small_fstring_parses_slowly() -> str:
    """Just under the in-server limit, and about 0.1 s to parse (CPython 3.11's parser is
    quadratic in f-string fields)."""
    source = 'a = 1\nx = f"' + "{a}" * 10_500 + '"\n'
    assert len(source) <= IN_PROCESS_MAX_BYTES
    return source


def test_a_small_file_that_outlasts_the_timeout_is_a_stall_and_its_neighbours_are_not(
        tmp_path, pooled):
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    before, slow, after = (workflows / name for name in (
        "before.py", "small_fstring_parses_slowly.py", "after.py"))
    before.write_bytes((FIXTURES / "engine" / "models_from_dataflow_import.py").read_bytes())
    slow.write_text(small_fstring_parses_slowly())
    after.write_bytes((FIXTURES / "engine" / "names_generic_and_specific.py").read_bytes())
    cache = ScreenCache(tmp_path, tmp_path / "cache", timeout=0.03)
    # Two processes, the slow file alone in one: files are shared out in turn.
    cache.prefetch((p, None) for p in (before, slow, after))

    stalled = cache.facts(slow)
    assert stalled.stalled and "0.03s" in str(stalled.error)
    time.sleep(0.5)  # the neighbours' answers are in by now: their own time is not judged
    assert cache.facts(before) == analyze(before.read_bytes())
    assert cache.facts(before).model
    assert cache.facts(after) == analyze(after.read_bytes())
    cache.save()
    again = ScreenCache(tmp_path, tmp_path / "cache")
    assert again.digest(slow) is None  # a stall is not an answer: screened again next time
    assert again.digest(before) is not None


def test_a_screen_process_killed_from_outside_costs_no_file_its_verdict(tmp_path, pooled):
    paths = _copy_fixtures(tmp_path / "workflows")
    for i in range(8):  # keeps both processes busy when they are killed
        slow = tmp_path / "workflows" / f"small_fstring_parses_slowly_{i}.py"
        slow.write_text(small_fstring_parses_slowly())
        paths.insert(2, slow)
    cache = ScreenCache(tmp_path, tmp_path / "cache")
    with started_commands() as commands:
        cache.prefetch((p, None) for p in paths)
        cache.facts(paths[0])  # one answer from each process: both are ready
        cache.facts(paths[1])
        killed = _screen_processes(pooled)
        assert len(killed) == 2
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

        for path in paths:
            assert cache.facts(path) == analyze(path.read_bytes()), path.name
    cache.save()
    assert _screen_processes(pooled) == []
    alone = [c for c in commands if "screen_listed" not in c]
    assert len(alone) == 2, "the file each killed process was on is screened again alone"
