"""One measurement, in a fresh process: ``python benchmarks/_child.py SPEC.json OUT.json``.

It imports ``nexus`` first, as a server would, before anything is timed;
then runs one scan (or one app start, or one screen pass) and writes what it
measured to OUT.json. Kinds (``spec["kind"]``):

- ``native``: ``nexus.discovery.discover_workflows(base)``.
- ``ours``: ``SmartDiscovery(base, timeout=, cache_dir=, pool=).run()``. With
  ``prestart`` the pool is made and started before the timer (what the plugin
  does at install), and the timer starts once every worker has reported ready
  and then used no CPU for 0.5 s (an app whose own start-up outlasts the
  workers' warm-up); without it the scan starts its own workers (the fully
  cold number).
- ``app``: ``build()`` from the tree's ``app.py``, then ``app.start(blocking=False)``;
  with ``settle``, waiting as above for the plugin's workers between the two.
- ``screen``: ``ScreenCache(base, cache_dir)``, ``prefetch`` with the finder's stats, then
  ``facts(path)`` over every candidate, on all cores, with the garbage collector paused
  as ``SmartDiscovery`` pauses it.

With ``own_size``, the returned workflows' own size is measured after the timer
(``_own_size_kb``).

Memory: the calling process's peak RSS is the kernel's own high-water mark
(``VmHWM``), reset just before the timer (``5`` to /proc/self/clear_refs), so
nothing has to sample it; the growth is that peak minus the RSS at the start.
Where the reset is refused, a thread samples ``VmRSS`` instead. The scan's
descendants (worker processes and their forked children) are found through
/proc/<pid>/task/<tid>/children every 50 ms; their RSS is summed. Sampling
every 5 ms, as an earlier version did, cost the measured process about 15 %
of a core with four descendants: on two cores, that slowed what it measured.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

SAMPLE_S = 0.05


def _status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM in KiB for a process (empty when it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as handle:
                kids += [int(p) for p in handle.read().split()]
        except OSError:
            pass
    return kids


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = _children(pid)
    while stack:
        child = stack.pop()
        found.append(child)
        stack += _children(child)
    return found


def _stat_cpu(pid: int) -> float:
    """CPU seconds of a process plus those of its reaped children (utime..cstime)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[float, float]:
    """(this process, its descendants: live ones plus every reaped one) in CPU seconds."""
    times = os.times()
    live = sum(_stat_cpu(pid) for pid in descendants(os.getpid()))
    return times.user + times.system, times.children_user + times.children_system + live


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux 4.0+); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """Peak RSS of this process and peak summed RSS of its descendants, every 50 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.me = os.getpid()
        self.stop_event = threading.Event()
        self.peak_self_kb = 0
        self.peak_children_kb = 0
        self.peak_children_procs = 0
        self.seen: set[int] = set()

    def sample(self) -> None:
        rss = _status().get("VmRSS", 0)
        self.peak_self_kb = max(self.peak_self_kb, rss)
        kids = descendants(self.me)
        self.seen.update(kids)
        total = sum(_status(k).get("VmRSS", 0) for k in kids)
        self.peak_children_kb = max(self.peak_children_kb, total)
        self.peak_children_procs = max(self.peak_children_procs, len(kids))

    def run(self) -> None:
        while not self.stop_event.wait(SAMPLE_S):
            self.sample()

    def finish(self) -> None:
        self.stop_event.set()
        self.join()
        self.sample()


def _wait_ready(pool: object, limit_s: float = 180.0) -> None:
    """Block until every pre-started worker has written its READY event.

    Reads nothing: ``select`` on each worker's control channel only, so the pool
    then reads READY itself as usual. (Uses the pool's private worker list;
    a benchmark may. ``event_fd`` is that channel before the isolation rebuild,
    so ``--ref`` can measure an older commit.)
    """
    import select

    deadline = time.monotonic() + limit_s
    for worker in list(getattr(pool, "_workers", [])):
        remaining = deadline - time.monotonic()
        channel = getattr(worker, "event_fd", None) or worker.control.fileno()
        ready, _, _ = select.select([channel], [], [], max(0.0, remaining))
        if not ready:
            raise RuntimeError("pre-started worker did not become ready")


def _wait_settled(pool: object, quiet_s: float = 0.5, limit_s: float = 60.0) -> None:
    """Wait for READY, then until the workers stop using CPU for ``quiet_s``.

    A worker now finishes its warm-up (Kailash's core, one rehearsal build) before
    READY and is idle after it: node libraries are imported when a file names them,
    before its fork or in its own process. The quiet wait keeps the number that of
    an app whose start-up outlasts the warm-up whatever a worker does after READY,
    so ``--ref`` stays fair to older commits whose workers imported node libraries
    while idle. It watches the CPU time of this process's descendants.
    """
    _wait_ready(pool)
    deadline = time.monotonic() + limit_s
    last, quiet_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        used = sum(_stat_cpu(pid) for pid in descendants(os.getpid()))
        now = time.monotonic()
        if used != last:
            last, quiet_since = used, now
        elif now - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


def _run_native(spec: dict) -> tuple[dict, callable]:
    from nexus.discovery import discover_workflows

    base = spec["base"]
    return {}, lambda: discover_workflows(base)


def _run_ours(spec: dict) -> tuple[dict, callable]:
    from nexus_dataflow_plugin.discovery import SmartDiscovery

    kwargs = {"timeout": spec.get("timeout", 10.0), "cache_dir": spec["cache_dir"]}
    info: dict = {}
    pool = None
    if spec.get("prestart"):
        began = time.perf_counter()
        pool = SmartDiscovery(spec["base"], **kwargs).make_pool().start()
        _wait_settled(pool)
        info["warmup_s"] = time.perf_counter() - began
    discovery = SmartDiscovery(spec["base"], pool=pool, **kwargs)

    def scan() -> dict:
        report = discovery.run()
        info["statuses"] = _count(e.status for e in report.files)
        return report.workflows

    info["_pool"] = pool
    return info, scan


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _measure(spec: dict, prepare) -> dict:
    info, scan = prepare(spec)
    pool = info.pop("_pool", None)
    gc.collect()
    exact_peak = reset_peak()
    before = _status()
    sampler = Sampler()
    sampler.sample()
    sampler.peak_self_kb = before.get("VmRSS", 0)
    sampler.peak_children_kb = 0
    sampler.peak_children_procs = 0
    sampler.start()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if spec.get("marker"):
        Path(spec["marker"]).touch()  # the parent's time limit counts from here
    cpu_self, cpu_children = cpu_times()
    began = time.perf_counter()
    found = scan()
    wall = time.perf_counter() - began
    cpu_self_after, cpu_children_after = cpu_times()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    sampler.finish()
    after = _status()
    if pool is not None:
        pool.close()
    if spec.get("own_size"):
        info["workflows_own_kb"] = _own_size_kb(found)
    peak = sampler.peak_self_kb
    if exact_peak or after.get("VmHWM", 0) > before.get("VmHWM", 0):
        peak = max(peak, after.get("VmHWM", 0))
    return {
        **info,
        "wall_s": wall,
        "self_cpu_s": cpu_self_after - cpu_self,
        "workers_cpu_s": cpu_children_after - cpu_children,
        "names": sorted(found),
        "rss_before_kb": before.get("VmRSS", 0),
        "self_peak_growth_kb": max(0, peak - before.get("VmRSS", 0)),
        "children_peak_kb": sampler.peak_children_kb,
        "children_peak_procs": sampler.peak_children_procs,
        "children_seen": len(sampler.seen),
    }


def _own_size_kb(workflows: dict) -> float:
    """What the returned workflows hold by themselves, in KiB, after the timed scan:
    each one's ``to_dict()`` as JSON text, then, under ``tracemalloc``, read back and
    rebuilt with ``Workflow.from_dict`` as the server does, the JSON data dropped. What
    is still traced is what the rebuilt workflows hold, their config strings included.
    A floor for the caller's growth: the server must hold them."""
    import json
    import tracemalloc

    from kailash.workflow import Workflow

    texts = [json.dumps(workflow.to_dict()) for workflow in workflows.values()]
    gc.collect()
    tracemalloc.start()
    rebuilt = [Workflow.from_dict(json.loads(text)) for text in texts]
    gc.collect()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del rebuilt
    return size / 1024


def _run_app(spec: dict) -> dict:
    base = spec["base"]
    sys.path.insert(0, base)
    import app as app_module  # the tree's app.py

    began = time.perf_counter()
    app = app_module.build()
    built = time.perf_counter()
    settled = built
    if spec.get("settle"):
        # Model an app whose own start-up outlasts the workers' warm-up (the seed
        # document quotes 10 to 15 s): wait until the plugin's pre-started
        # workers are ready, then time start().
        plugin = getattr(app, "_dataflow_compatible_plugin", None)
        prepared = getattr(plugin, "_pool", None)
        if prepared is not None:
            _wait_settled(prepared[-1])
        settled = time.perf_counter()
    spent = {"discover_s": 0.0, "register_s": 0.0}
    _timed(app, "_auto_discover_workflows", spent, "discover_s")
    _timed(app, "register", spent, "register_s")
    app.start(blocking=False)
    started = time.perf_counter()
    names = sorted(app._workflows)
    app.stop()
    return {
        "build_s": built - began,
        "settle_s": settled - built,
        "start_s": started - settled,
        "total_s": started - began,
        **spent,
        "names": names,
    }


def _timed(app: object, attr: str, spent: dict[str, float], key: str) -> None:
    """Add the time spent in ``app.<attr>`` (looked up now) to ``spent[key]``."""
    original = getattr(app, attr)

    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - began

    setattr(app, attr, wrapper)


def _run_screen(spec: dict) -> dict:
    """The screen as a scan runs it: the finder's stat of each candidate is the cache
    key (finding is timed apart), the uncached files are screened on every core."""
    from nexus_dataflow_plugin.discovery import SmartDiscovery, paused_gc

    base = Path(spec["base"])
    discovery = SmartDiscovery(base, cache_dir=spec["cache_dir"])
    gc.collect()
    with paused_gc():  # as SmartDiscovery runs its screen
        finding = time.perf_counter()
        found = discovery.find()
        files = [(c.real, c.stamp) for c in found.candidates if c.real is not None]
        began = time.perf_counter()
        cpu = time.process_time()
        cache = discovery.screen_cache()
        loaded = time.perf_counter()
        cache.prefetch(files)
        models = sum(1 for path, _ in files if cache.facts(path).model)
        screened = time.perf_counter()
        cache.save()
        saved = time.perf_counter()
        cpu = time.process_time() - cpu
    wall = saved - began
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "files": len(files),
        "models": models,
        "wall_s": wall,
        "find_s": began - finding,
        "load_s": loaded - began,
        "facts_s": screened - loaded,
        "save_s": saved - screened,
        "files_per_s": len(files) / wall if wall else None,
        "cpu_s": cpu,
        "children_cpu_s": children.ru_utime + children.ru_stime,
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    os.chdir(spec["base"])
    sys.path[0] = spec["base"]  # as `python app.py` run from the project would have it
    import nexus  # noqa: F401 - as a server would, before anything is timed

    kind = spec["kind"]
    if kind == "native":
        result = _measure(spec, _run_native)
    elif kind == "ours":
        result = _measure(spec, _run_ours)
    elif kind == "app":
        result = _run_app(spec)
    elif kind == "screen":
        result = _run_screen(spec)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    Path(argv[1]).write_text(json.dumps(result))
    # Native discovery may leave non-daemon threads behind; do not wait for them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
