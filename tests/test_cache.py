"""The screen cache: a warm scan trusts a file's stat, a changed file is screened
again, and a broken or foreign cache file costs a re-parse, never a wrong answer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from nexus_dataflow_plugin import SmartDiscovery
from nexus_dataflow_plugin.cache import ScreenCache, facts_from_json
from nexus_dataflow_plugin.screen import analyze, facts_to_json

MODELS = """from dataflow import DataFlow

db = DataFlow("sqlite:///app.db")


@db.model
class Order:
    id: int
"""

# Every kind of fact the screen records, for the JSON round trip.
RICH = """import os
import runpy
import sys
import time

from kailash.workflow.builder import WorkflowBuilder
from .shared import helper
from ..models import db

db.model(Invoice)


def build_pipeline():
    builder = WorkflowBuilder()
    builder.add_node("PythonCodeNode", "a", {"code": "result = {}"})
    return builder.build()


while False:
    time.sleep(1)

sys.path.insert(0, os.path.dirname(__file__))
runpy.run_path("scripts/seed.py")
__all__ = ["build_pipeline"]
"""

WORKFLOW = """from kailash.workflow.builder import WorkflowBuilder


def build_pipeline():
    builder = WorkflowBuilder()
    builder.add_node("PythonCodeNode", "a", {"code": "result = {}"})
    return builder.build()
"""


def _project(root: Path) -> Path:
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "models.py").write_text(MODELS)
    (root / "workflows" / "orders.py").write_text(WORKFLOW)
    return root


def _screened(tmp_path: Path) -> tuple[Path, Path, ScreenCache]:
    """The project under ``tmp_path/app``, its model file screened and the cache saved in
    ``tmp_path/cache``: the project, the model file, the cache."""
    root = _project(tmp_path / "app")
    models = (root / "workflows" / "models.py").resolve()
    first = ScreenCache(root, tmp_path / "cache")
    assert first.facts(models).model
    first.save()
    return root, models, first


def _same_stat_no_models(path: Path, into: Path | None = None) -> None:
    """Rewrite ``path`` as comments (or write them ``into`` another file), keeping its size
    and mtime: only a cache misses that."""
    stat, into = path.stat(), into or path
    into.write_text(("# no models here\n" * stat.st_size)[: stat.st_size - 1] + "\n")
    os.utime(into, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_facts_survive_the_round_trip_through_json():
    facts = analyze(RICH.encode())
    assert facts.imports and facts.external_model_uses and facts.factories and facts.may_block
    assert facts.path_entries and facts.run_paths and facts.exports
    assert facts_from_json(json.loads(json.dumps(facts_to_json(facts)))) == facts
    # The cache writes the named tuple itself, which JSON writes as the list.
    assert json.dumps(facts) == json.dumps(facts_to_json(facts))


def test_a_warm_scan_answers_from_the_cache_while_the_file_is_untouched(tmp_path):
    root, models, first = _screened(tmp_path)
    # Mark the stored answer: a warm cache that returns it did not read the file.
    document = json.loads(first.path.read_text())
    place = document["files"][str(models)][2]  # its facts' place in the table
    document["facts"][place][1] = "answered from the cache"  # its facts' model
    first.path.write_text(json.dumps(document))
    assert ScreenCache(root, tmp_path / "cache").facts(models).model == "answered from the cache"


def test_files_alike_share_one_facts_entry_and_each_keeps_its_own_answer(tmp_path):
    root = _project(tmp_path / "app")
    for name in ("invoices", "refunds"):
        (root / "workflows" / f"{name}.py").write_text(WORKFLOW)
    files = sorted(p.resolve() for p in (root / "workflows").glob("*.py"))
    first = ScreenCache(root, tmp_path / "cache")
    answers = {path: first.facts(path) for path in files}
    first.save()
    document = json.loads(first.path.read_text())
    # Three workflow files alike and a model file: two distinct facts, each stored once.
    assert len(document["facts"]) == 2 and len(document["files"]) == 4
    warm = ScreenCache(root, tmp_path / "cache")
    assert {path: warm.facts(path) for path in files} == answers


def test_a_damaged_entry_is_dropped_at_save_never_given_another_files_facts(tmp_path):
    root, models, first = _screened(tmp_path)
    orders = (root / "workflows" / "orders.py").resolve()
    first.facts(orders)
    first.save()
    document = json.loads(first.path.read_text())
    entries = document["files"]
    # The workflow file's entry now points at the model file's facts from the end of the
    # table (a negative place): a scan that does not ask about it saves the cache.
    entries[str(orders)][2] = entries[str(models)][2] - len(document["facts"])
    first.path.write_text(json.dumps(document))
    partial = ScreenCache(root, tmp_path / "cache")
    partial.facts(models)
    partial.record_duration(models, 0.5)  # something to save
    partial.save()
    assert str(orders) not in json.loads(first.path.read_text())["files"]
    assert ScreenCache(root, tmp_path / "cache").facts(orders).model is None


def test_a_rewrite_with_size_and_mtime_set_back_is_screened_again(tmp_path):
    root, models, _ = _screened(tmp_path)
    # Same size and mtime, no longer a model file: the ctime moved, so it is read again.
    _same_stat_no_models(models)
    warm = ScreenCache(root, tmp_path / "cache")
    assert warm.facts(models).model is None
    assert warm.digest(models) == hashlib.sha256(models.read_bytes()).hexdigest()


def test_a_file_replaced_by_another_inode_is_screened_again(tmp_path):
    root, models, _ = _screened(tmp_path)
    replacement = models.with_name("replacement.tmp")
    _same_stat_no_models(models, into=replacement)
    os.replace(replacement, models)
    assert ScreenCache(root, tmp_path / "cache").facts(models).model is None


def test_the_digest_is_of_the_exact_bytes_the_screen_judged(tmp_path):
    root = _project(tmp_path / "app")
    orders = (root / "workflows" / "orders.py").resolve()
    cache = ScreenCache(root, tmp_path / "cache", persist=False)
    assert cache.digest(orders) is None  # not screened yet
    judged = orders.read_bytes()
    assert cache.facts(orders).factories == ("build_pipeline",)
    orders.write_text("import models\n")  # changed after the screen
    assert cache.digest(orders) == hashlib.sha256(judged).hexdigest()


def test_durations_are_kept_for_the_next_scan(tmp_path):
    root = _project(tmp_path / "app")
    orders = (root / "workflows" / "orders.py").resolve()
    cache = ScreenCache(root, tmp_path / "cache")
    cache.facts(orders)
    assert not cache.timed()
    cache.record_duration(orders, 0.25)
    cache.save()
    again = ScreenCache(root, tmp_path / "cache")
    assert again.timed() and again.duration(orders) == 0.25
    (cache_file,) = (tmp_path / "cache").glob("screen-*.json")
    cache_file.write_text(_forge(cache_file.read_text(), lambda e: e.__setitem__(3, 10**400)))
    assert ScreenCache(root, tmp_path / "cache").duration(orders) is None  # not a float


BROKEN = {
    "truncated": lambda good: good[: len(good) // 2],
    "garbage_bytes": lambda good: "\x00\xff not json at all",
    "wrong_shapes_right_header": lambda good: json.dumps(
        {**json.loads(good), "files": {k: [v[0], v[1], [1, 2], None]
                                       for k, v in json.loads(good)["files"].items()}}
    ),
    "older_format": lambda good: json.dumps({**json.loads(good), "format": 3}),
    "nested_too_deep": lambda good: "[" * 100_000,
    # Entries whose stat still matches, with a value of another type than the screen's.
    "model_not_text": lambda good: _forge_facts(good, lambda facts: facts.__setitem__(1, False)),
    "error_a_list": lambda good: _forge_facts(good, lambda facts: facts.__setitem__(0, ["x"])),
    "line_infinite": lambda good: _forge_facts(good, lambda facts: [
        ref.__setitem__(3, float("inf")) for ref in facts[2]]),
    # Not lists where the screen writes lists: ``map`` would take a str or a dict.
    "fields_not_lists": lambda good: _forge_facts(good, lambda facts: (
        facts.__setitem__(2, {}), facts.__setitem__(11, "Ab"))),
    # Places in the table of facts that are not one of its places.
    "place_past_the_table": lambda good: _forge(good, lambda entry: entry.__setitem__(2, 10**6)),
    "place_negative": lambda good: _forge(good, lambda entry: entry.__setitem__(2, -1)),
    "place_a_bool": lambda good: _forge(good, lambda entry: entry.__setitem__(2, True)),
    "no_table": lambda good: json.dumps({k: v for k, v in json.loads(good).items()
                                         if k != "facts"}),
}


def _forge(good: str, change) -> str:
    document = json.loads(good)
    for entry in document["files"].values():
        change(entry)
    return json.dumps(document)


def _forge_facts(good: str, change) -> str:
    document = json.loads(good)
    for facts in document["facts"]:
        change(facts)
    return json.dumps(document)


@pytest.mark.parametrize("damage", sorted(BROKEN))
def test_a_broken_cache_costs_a_reparse_never_a_wrong_answer(tmp_path, damage):
    root = _project(tmp_path / "app")
    cache_dir = tmp_path / "cache"
    clean = SmartDiscovery(root, timeout=10, workers=1, cache_dir=cache_dir).run()
    (cache_file,) = cache_dir.glob("screen-*.json")
    cache_file.write_text(BROKEN[damage](cache_file.read_text()))

    again = SmartDiscovery(root, timeout=10, workers=1, cache_dir=cache_dir).run()

    assert sorted(again.workflows) == sorted(clean.workflows) == ["orders.build_pipeline"]
    assert again.file("workflows/models.py").status == clean.file("workflows/models.py").status
    json.loads(cache_file.read_text())  # rewritten whole
    warm = ScreenCache(root, cache_dir)  # and with each file's own facts, as screened
    for path in sorted((root / "workflows").glob("*.py")):
        assert warm.facts(path.resolve()) == analyze(path.read_bytes()), path.name


def test_a_cache_that_cannot_be_written_is_logged_not_raised(tmp_path, caplog):
    root = _project(tmp_path / "app")
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory should be")
    cache = ScreenCache(root, blocker / "cache")
    cache.facts((root / "workflows" / "orders.py").resolve())
    with caplog.at_level(logging.DEBUG, logger="nexus_dataflow_plugin.cache"):
        cache.save()
    assert "screen cache not saved" in caplog.text


def test_the_test_suite_keeps_its_cache_out_of_the_users_home(tmp_path: Path) -> None:
    """Here and in every process a test starts (they inherit the environment)."""
    import subprocess
    import sys

    from nexus_dataflow_plugin.cache import default_cache_dir

    home_cache = Path(os.path.expanduser("~")) / ".cache"
    child = subprocess.run(
        [sys.executable, "-c",
         "from nexus_dataflow_plugin.cache import default_cache_dir; print(default_cache_dir())"],
        capture_output=True, text=True, check=True, cwd=tmp_path, timeout=60,
    ).stdout.strip()
    for where in (default_cache_dir(), Path(child)):
        assert not where.is_relative_to(home_cache), where
        assert where.is_relative_to(Path(os.environ["XDG_CACHE_HOME"]))


def _reads(tmp_path: Path, **records: tuple[str, str]):
    """The readings file under ``tmp_path``; ``records`` (path -> key, record) stored
    in it first, by a complete scan."""
    from nexus_dataflow_plugin.cache import ReadCache

    def make() -> ReadCache:
        return ReadCache(tmp_path / "cache" / "read-x.txt")

    if records:
        first = make()
        for path, (key, record) in records.items():
            first.put(path, key, record)
        first.save(complete=True)
    return make()


def test_a_reading_is_kept_under_its_key_and_path(tmp_path):
    again = _reads(tmp_path, **{"/p/a.py": ("k1", '{"r": "a"}'), "/p/b.py": ("k2", '{"r": "b"}')})
    assert again.get("/p/a.py", "k1") == '{"r": "a"}'
    assert again.get("/p/b.py", "other bytes") is None
    assert again.get("/p/elsewhere.py", "k1") is None
    assert sorted(os.listdir(tmp_path / "cache")) == ["read-x.txt"]  # nothing left over


@pytest.mark.parametrize("complete, kept", [(True, ["/p/a.py"]), (False, ["/p/a.py", "/p/b.py"])])
def test_a_complete_scan_drops_readings_it_did_not_use(tmp_path, complete, kept):
    """A full scan keeps what it used; a scan of some files (``only``) keeps the rest."""
    second = _reads(tmp_path, **{"/p/a.py": ("k1", "{}"), "/p/b.py": ("k2", "{}")})
    assert second.get("/p/a.py", "k1") == "{}"
    second.save(complete=complete)
    third = _reads(tmp_path)
    assert [p for p in ("/p/a.py", "/p/b.py") if third.get(p, {"/p/a.py": "k1"}.get(p, "k2"))] \
        == kept


DAMAGED_READINGS = {
    "empty": lambda data: b"",
    "another_format": lambda data: b'{"format": 0}' + data[data.index(b"\n"):],
    "truncated": lambda data: data[:len(data) // 2],
    "path_unterminated": lambda data: data.replace(b'"/p/a.py"', b'"/p/a.py'),
    "not_ascii_in_the_key": lambda data: data.replace(b"k1 ", b"k\xff1 "),
    "path_nested_too_deep": lambda data: data.replace(b'"/p/a.py"', b"[" * 100_000),
    "one_byte_of_the_record_changed": lambda data: data.replace(b'"a"}', b'"b"}'),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_READINGS))
def test_a_damaged_readings_file_costs_a_reading_then_is_mended(tmp_path, damage):
    """Never served, never raised; the next save leaves the damage out."""
    _reads(tmp_path, **{"/p/a.py": ("k1", '{"r": "a"}'), "/p/b.py": ("k2", '{"r": "b"}')})
    path = tmp_path / "cache" / "read-x.txt"
    path.write_bytes(DAMAGED_READINGS[damage](path.read_bytes()))
    damaged = _reads(tmp_path)
    assert damaged.get("/p/a.py", "k1") is None
    damaged.get("/p/b.py", "k2")
    damaged.save()
    header, *lines = path.read_bytes().split(b"\n")[:-1] or [b""]
    for line in lines:  # whole records only: key, check, path, record
        key, check, name, record = line.decode("ascii").split(" ", 3)
        assert json.loads(record) == {"r": "b"} and json.loads(name) == "/p/b.py"


def test_a_full_disk_under_the_cache_costs_the_cache_never_the_scan(tmp_path):
    """Writes refused part way (a file size limit stands in for a full disk): the scan
    gives its workflows, and no temporary file is left in the cache directory."""
    import subprocess
    import sys

    project = tmp_path / "app"
    (project / "workflows").mkdir(parents=True)
    for index in range(30):
        (project / "workflows" / f"flow{index}.py").write_text(WORKFLOW)
    code = (
        "import resource, signal, sys\n"
        "from nexus_dataflow_plugin import SmartDiscovery\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))\n"
        "report = SmartDiscovery(sys.argv[1], cache_dir=sys.argv[2], workers=1).run()\n"
        "print(len(report.workflows))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(project), str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "30"
    assert not [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"]


def test_readings_that_cannot_be_written_are_logged_not_raised(tmp_path, caplog):
    from nexus_dataflow_plugin.cache import ReadCache

    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory should be")
    reads = ReadCache(blocker / "cache" / "read-x.txt")
    with caplog.at_level(logging.DEBUG, logger="nexus_dataflow_plugin.cache"):
        reads.put("/p/a.py", "k1", "{}")
        reads.save()
    assert "readings not kept" in caplog.text


def test_a_scan_that_only_adds_readings_keeps_those_stored(tmp_path):
    reads = _reads(tmp_path, **{"/p/a.py": ("k1", "{}")})
    reads.put("/p/b.py", "k2", "{}")
    reads.save()
    again = _reads(tmp_path)
    assert again.get("/p/a.py", "k1") == again.get("/p/b.py", "k2") == "{}"


def test_a_whole_scan_drops_the_entries_of_files_it_no_longer_asked_about(tmp_path):
    """Renamed or deleted files leave nothing behind after a full scan; a scan of some
    files (``only``) keeps the rest."""
    root = _project(tmp_path / "app")
    cache_dir = tmp_path / "cache"

    def stored() -> list[str]:
        (cache_file,) = cache_dir.glob("screen-*.json")
        return sorted(Path(name).name for name in json.loads(cache_file.read_text())["files"])

    SmartDiscovery(root, timeout=10, workers=1, cache_dir=cache_dir).run()
    assert stored() == ["models.py", "orders.py"]
    (root / "workflows" / "orders.py").rename(root / "workflows" / "invoices.py")
    SmartDiscovery(root, timeout=10, workers=1, cache_dir=cache_dir).run(
        only=["workflows/invoices.py"])
    assert stored() == ["invoices.py", "models.py", "orders.py"]
    SmartDiscovery(root, timeout=10, workers=1, cache_dir=cache_dir).run()
    assert stored() == ["invoices.py", "models.py"]


@pytest.mark.parametrize("kind", ["screen", "read"])
def test_a_fifo_where_a_cache_file_belongs_is_replaced_not_waited_on(tmp_path, kind):
    """A file of the project (or of another one sharing the cache directory) can plant a
    FIFO under a cache file's name: the next scan does not block on it, and replaces it."""
    import stat as stat_module
    import threading

    root = _project(tmp_path / "app")
    cache_dir = tmp_path / "cache"
    SmartDiscovery(root, timeout=10, workers=1, cache_dir=cache_dir).run()
    (target,) = cache_dir.glob(f"{kind}-*")
    target.unlink()
    os.mkfifo(target)
    scanned: list[object] = []
    scan = threading.Thread(target=lambda: scanned.append(
        SmartDiscovery(root, timeout=10, workers=1, cache_dir=cache_dir).run()), daemon=True)
    scan.start()
    scan.join(60)
    if scan.is_alive():  # unblock the scan, then fail
        with open(target, "wb"):
            pass
        pytest.fail("the scan waited on the FIFO")
    assert sorted(scanned[0].workflows) == ["orders.build_pipeline"]
    assert stat_module.S_ISREG(target.stat().st_mode)


def test_a_warm_scan_with_nothing_new_leaves_the_readings_file_alone(tmp_path):
    root = _project(tmp_path / "app")
    cache_dir = tmp_path / "cache"
    SmartDiscovery(root, timeout=10, workers=1, cache_dir=cache_dir).run()
    (readings,) = cache_dir.glob("read-*")
    before = readings.stat()
    SmartDiscovery(root, timeout=10, workers=1, cache_dir=cache_dir).run()
    after = readings.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_loading_the_cache_runs_no_full_collection_even_outside_a_scan(tmp_path: Path):
    """``screen_cache()`` is also how ``scan``, the manifest and ``explain`` load it: the
    older generations' passes during the load cost ten times the load in a server's
    heap (a young one may still run as the load begins)."""
    import gc

    workflows = tmp_path / "workflows"
    workflows.mkdir()
    for i in range(300):
        (workflows / f"flow_{i}.py").write_text(RICH)
    cache_dir = tmp_path / "cache"
    SmartDiscovery(tmp_path, cache_dir=cache_dir).screen()
    passes: list[str] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] > 0:
            passes.append(f"generation {info['generation']}")

    discovery = SmartDiscovery(tmp_path, cache_dir=cache_dir)
    gc.collect()
    gc.callbacks.append(count)
    try:
        cache = discovery.screen_cache()
    finally:
        gc.callbacks.remove(count)
    assert passes == []
    assert gc.isenabled()
    assert cache.facts((workflows / "flow_0.py").resolve()).imports


def test_a_file_larger_than_max_file_bytes_is_not_read_whole(tmp_path: Path):
    """A candidate grown after the finder measured it, or a module a candidate imports,
    is read up to ``max_file_bytes`` and refused: no more of it reaches the server."""
    big = tmp_path / "helpers.py"
    with big.open("wb") as handle:
        handle.truncate(1 << 30)  # a sparse gigabyte
    cache = ScreenCache(tmp_path, tmp_path / "cache", max_file_bytes=4096)
    facts = cache.facts(big)
    assert facts.error is not None and "over the 4,096-byte limit" in facts.error


def test_a_read_aheads_facts_are_kept_as_facts_shared_by_files_alike_or_refused(tmp_path):
    """An answer waits in the server until the scan reaches its file: its facts are made
    as it comes (JSON lists weigh three times as much), one object for files alike; a
    shape the screen never writes is refused, and the server screens that file itself."""
    root = _project(tmp_path / "app")
    cache = ScreenCache(root, persist=False)
    answer = json.loads(json.dumps(facts_to_json(analyze(WORKFLOW.encode()))))  # as sent
    kept = cache._kept(answer)
    assert kept == analyze(WORKFLOW.encode())
    assert cache._kept(json.loads(json.dumps(answer))) is kept
    # Not lists where lists belong: a str or dict would pass ``map`` ("Ab" as A and b).
    for wrong in ([1, 2], {"error": None}, [None] * 11, answer[:-1] + [[5]],
                  answer[:-1] + ["Ab"], answer[:2] + [{}] + answer[3:],
                  answer[:2] + [["os", "ab", 0, 1]] + answer[3:]):
        assert cache._kept(wrong) is None


def test_an_entry_nested_past_the_stack_is_dropped_at_save_not_raised(tmp_path):
    """A stat or duration nested a thousand deep loads (``json`` takes it) but would take
    the save's encoder past the stack, deeper in a server's call: such an entry, of a
    file this scan did not ask about, is dropped."""
    import sys

    root, models, first = _screened(tmp_path)
    orders = (root / "workflows" / "orders.py").resolve()
    first.facts(orders)
    first.save()
    document = json.loads(first.path.read_text())
    document["files"][str(orders)][3] = json.loads("[" * 950 + "]" * 950)
    first.path.write_text(json.dumps(document))
    partial = ScreenCache(root, tmp_path / "cache")
    partial.record_duration(models, 0.5)  # something to save; orders.py is not asked about

    def deeper(levels: int) -> None:
        if levels:
            deeper(levels - 1)
        else:
            partial.save()

    deeper(sys.getrecursionlimit() - 1000)
    saved = json.loads(first.path.read_text())["files"]
    assert str(orders) not in saved and str(models) in saved
