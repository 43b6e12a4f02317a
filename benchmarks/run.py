"""Benchmarks: native Nexus discovery against nexus_dataflow_plugin, side by side.

    python benchmarks/run.py [--quick] [--json] [--cases a,b] [--repeat N]

Generates project trees in a temporary directory and measures, in one run,
``nexus.discovery.discover_workflows`` (native) and ``SmartDiscovery`` (ours).
Every measurement runs in a fresh subprocess (``benchmarks/_child.py``) that
imports ``nexus`` before its timer starts, so imports, caches and registries
never leak from one measurement into the next. Wall times are medians of
``--repeat`` runs (default 5; 1 with ``--quick``).

Cases (``--cases`` takes a comma-separated list; sizes may be changed, e.g.
``mixed-200``):

- ``seed``: the seed document's app; the scan, and ``app.start(blocking=False)``
  with the plugin and ``auto_discovery=True`` against ``auto_discovery=False``.
- ``small``: the same small app (five workflow files, two models);
  ``app.start(blocking=False)`` stock, with the plugin added in code, and with
  the plugin turned on by the configuration flag; the extra over stock per repeat.
- ``mixed-N``: N files, half DataFlow model files, half plain workflow files;
  cold (no bytecode, empty screen cache) and warm (the same again, unchanged);
  ours with the pool pre-started (as the plugin does at install) and with the
  worker start-up inside the timer.
- ``manifest-N``: the ``mixed-N`` tree with an ``app.py``; ``app.start(blocking=False)``
  with ``auto_discovery=True``: stock Nexus (native discovery), the plugin
  scanning, and the plugin starting from a manifest ``nexus-dataflow freeze``
  made before the timed runs; ratios of discovery and of ``start()`` per pair.
- ``workflows-N``: N plain workflow files, no models; cold.
- ``builders-N``: N workflow files that compute their nodes (a loop, a helper function,
  f-strings), no models; cold and warm. None reads as data: each file runs in a
  process of its own, as any file outside the declarative language does.
- ``hostile-N``: ``mixed-N`` plus 3 files that hang at import; native gets
  30 s and is reported as not finishing; ours runs with ``timeout=5``.
- ``screen-N``: the static screen alone over N files, cold and warm, all cores, as a
  scan runs it (the finder's stat is the cache key; finding is timed apart).
- ``autoload``: ``python -c pass`` with the package installed against
  ``NEXUS_DISABLE_PLUGIN_AUTOLOAD=1``.

With ``--json`` a JSON document is printed instead of the table (machine,
load, every raw measurement, medians, each target and whether it was met, and
``same_names`` per case: whether ours found exactly the names native found).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import trees  # noqa: E402

from nexus_dataflow_plugin.schedule import PER_WORKER  # noqa: E402

CHILD = HERE / "_child.py"
FULL_CASES = ["seed", "small", "mixed-1000", "manifest-1000", "workflows-200", "builders-200",
              "hostile-1000", "screen-10000", "autoload"]
QUICK_CASES = ["seed", "small", "mixed-40", "manifest-40", "workflows-20", "builders-20",
               "screen-500", "autoload"]
HOSTILE_TIMEOUT_S = 5.0
NATIVE_HOSTILE_LIMIT_S = 30.0
CHILD_LIMIT_S = 900.0
AUTOLOAD_RUNS = 100
AUTOLOAD_RUNS_QUICK = 10
MB = 1024.0

# Targets from issues 5 and 14 (ratios are ours / native).
T_MIXED_COLD = 0.15
T_MIXED_WARM = 0.12
T_MIXED_START = 0.25  # cold, the workers' start inside the timer
T_WORKFLOWS_COLD = 0.6
T_BUILDERS = 1.0  # the issue's title, faster than native, for files that must run
T_SEED_EXTRA_S = 0.3
T_SMALL_EXTRA_S = 0.05  # start() with the plugin minus stock start(), small app
T_MEMORY_OWN = 1.15  # the caller's growth over the returned workflows' own size
FLAG_ENV = "NEXUS_DATAFLOW_COMPATIBLE"
T_SCREEN_COLD = 10000.0  # issue 14, on all cores
T_SCREEN_WARM = 150000.0
T_AUTOLOAD_MS = 2.0


class ChildFailed(RuntimeError):
    pass


@dataclass
class Check:
    """One line of the results: what was measured, both sides, the target, the verdict."""

    case: str
    metric: str
    native: Any = None
    ours: Any = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Bench:
    work: Path
    repeat: int
    quick: bool
    verbose: bool
    profile_dir: Path | None = None
    source: Path | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    checks: list[Check] = field(default_factory=list)
    cases: dict[str, Any] = field(default_factory=dict)
    counter: int = 0

    # -- running one measurement ---------------------------------------------------

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def child(
        self,
        spec: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        limit_s: float | None = None,
    ) -> dict[str, Any] | None:
        """Run one measurement in a fresh process; None if it hit ``limit_s``.

        ``limit_s`` counts from when the child's timer starts (it touches a
        marker file), not from process start, so the import of Nexus is not
        charged to the scan.
        """
        self.counter += 1
        stem = self.work / "runs" / f"{self.counter:04d}-{spec['kind']}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        spec_path, out_path = stem.with_suffix(".spec.json"), stem.with_suffix(".out.json")
        marker, err_path = stem.with_suffix(".started"), stem.with_suffix(".err")
        spec = {**spec, "marker": str(marker)}
        spec_path.write_text(json.dumps(spec))
        child_env = self.environ()
        child_env.update(env or {})
        with open(err_path, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, str(CHILD), str(spec_path), str(out_path)],
                cwd=spec["base"],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=child_env,
                start_new_session=True,
            )
        began = time.monotonic()
        timed_out = False
        while process.poll() is None:
            time.sleep(0.05)
            now = time.monotonic()
            if limit_s is not None and marker.exists():
                if time.time() - marker.stat().st_mtime > limit_s:
                    timed_out = True
            if now - began > CHILD_LIMIT_S:
                timed_out = True
            if timed_out:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
                break
        if timed_out:
            if limit_s is None:
                raise ChildFailed(f"{spec['kind']} measurement ran over {CHILD_LIMIT_S:.0f} s")
            self.log(f"  {spec['kind']}: did not finish within {limit_s:.0f} s")
            return None
        if process.returncode != 0 or not out_path.exists():
            tail = err_path.read_text(errors="replace")[-3000:]
            raise ChildFailed(f"{spec['kind']} measurement failed ({process.returncode}):\n{tail}")
        result = json.loads(out_path.read_text())
        self.log(f"  {spec['kind']}: " + ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in result.items() if k not in ("names", "statuses")))
        return result

    def environ(self) -> dict[str, str]:
        """The environment for every measured process (``--ref`` puts its source first)."""
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.source)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            )
        return env

    def fresh(self, name: str) -> Path:
        self.counter += 1
        path = self.work / "scratch" / f"{self.counter:04d}-{name}"
        path.mkdir(parents=True)
        return path

    def scan(self, kind: str, tree: trees.Tree, *, cold: bool, cache_dir: Path | None = None,
             prestart: bool = True, timeout: float = 10.0, limit_s: float | None = None,
             profile: str | None = None, own_size: bool = False) -> dict[str, Any] | None:
        if cold:
            trees.wipe_bytecode(tree.root)
        spec: dict[str, Any] = {"kind": kind, "base": str(tree.root), "own_size": own_size}
        if kind == "ours":
            spec |= {"cache_dir": str(cache_dir), "prestart": prestart, "timeout": timeout}
        if profile:
            spec["profile"] = profile
        return self.child(spec, limit_s=limit_s)

    def profile_path(self, case: str, variant: str) -> str | None:
        if self.profile_dir is None:
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return str(self.profile_dir / f"{case}-{variant}.prof")

    # -- the cases ---------------------------------------------------------------------

    def scan_variants(self, case: str, tree: trees.Tree, *, warm: bool,
                      full_cold: bool) -> dict[str, list[dict[str, Any]]]:
        """Repeat: native cold (+warm), ours pre-started cold (+warm), ours incl. start."""
        runs: dict[str, list[dict[str, Any]]] = {}

        def add(variant: str, result: dict[str, Any] | None) -> None:
            runs.setdefault(variant, []).append(result)

        for i in range(self.repeat):
            self.log(f"{case}: repeat {i + 1}/{self.repeat}")
            add("native_cold", self.scan("native", tree, cold=True))
            if warm:
                add("native_warm", self.scan("native", tree, cold=False))
            cache = self.fresh("cache")
            add("ours_cold", self.scan("ours", tree, cold=True, cache_dir=cache,
                                       own_size=True))
            if warm:
                add("ours_warm", self.scan("ours", tree, cold=False, cache_dir=cache))
            if full_cold:
                cache = self.fresh("cache")
                add("ours_cold_start", self.scan("ours", tree, cold=True, cache_dir=cache,
                                                 prestart=False))
                if warm:
                    add("ours_warm_start", self.scan("ours", tree, cold=False, cache_dir=cache,
                                                     prestart=False))
        if self.profile_dir is not None:
            # Extra runs under cProfile (the caller's side), kept out of the medians.
            self.log(f"{case}: profiled runs")
            cache = self.fresh("cache")
            self.scan("ours", tree, cold=True, cache_dir=cache,
                      profile=self.profile_path(case, "cold"))
            if warm:
                self.scan("ours", tree, cold=False, cache_dir=cache,
                          profile=self.profile_path(case, "warm"))
        return runs

    def summarise_scans(self, case: str, tree: trees.Tree,
                        runs: dict[str, list[dict[str, Any]]],
                        targets: dict[str, float]) -> dict[str, Any]:
        """Medians per variant, the checks, and whether the names agree."""
        summary: dict[str, Any] = {"files": tree.files, "expected_workflows": len(tree.expected),
                                   "variants": {}}
        for variant, results in runs.items():
            summary["variants"][variant] = _medians(results)
        expected = sorted(tree.expected)
        native_names = runs["native_cold"][0]["names"]
        same = all(r["names"] == native_names for rs in runs.values() for r in rs)
        summary["same_names"] = same
        summary["matches_expected"] = native_names == expected
        summary["names_native"] = native_names
        summary["names_ours"] = runs["ours_cold"][0]["names"]
        for results in runs.values():  # keep the raw runs small: a count and a verdict
            for result in results:
                result["same_names"] = result["names"] == native_names
                result["workflows"] = len(result.pop("names"))
        summary["runs"] = runs
        medians = summary["variants"]
        labels = {
            "cold": ("cold scan (s), pool pre-started", "ours_cold", "native_cold"),
            "cold_start": ("cold scan (s), incl. worker start", "ours_cold_start", "native_cold"),
            "warm": ("warm scan (s), pool pre-started", "ours_warm", "native_warm"),
            "warm_start": ("warm scan (s), incl. worker start", "ours_warm_start", "native_warm"),
        }
        for key, (label, ours_key, native_key) in labels.items():
            if ours_key not in medians:
                continue
            n, o = medians[native_key], medians[ours_key]
            target = targets.get(key)
            note = (f"CPU: native {n['self_cpu_s']:.2f} s; ours {o['self_cpu_s']:.2f} s in the "
                    f"caller + {o['workers_cpu_s']:.2f} s in workers")
            if "warmup_s" in o:
                note += f"; workers' warm-up before the timer {o['warmup_s']:.2f} s"
            if self.repeat > 1:
                note += (f"; range over runs: native {_span(runs[native_key])}, "
                         f"ours {_span(runs[ours_key])}")
                paired = [b["wall_s"] / a["wall_s"] for a, b in
                          zip(runs[native_key], runs[ours_key], strict=True) if a and b]
                if paired:  # each repeat ran both back to back: drift cancels in the pair
                    note += (f"; ratio within each repeat {min(paired):.2f}-{max(paired):.2f}, "
                             f"median {statistics.median(paired):.3f}")
            self.check(case, label, n["wall_s"], o["wall_s"], target=target, note=note)
        native_mem = medians["native_cold"]["self_peak_growth_kb"] / MB
        ours_mem = medians["ours_cold"]["self_peak_growth_kb"] / MB
        self.check(case, "peak RSS growth of the caller (MB), cold", native_mem, ours_mem)
        own = medians["ours_cold"].get("workflows_own_kb")
        if own and "memory" in targets:
            self.check(case, "peak RSS growth of the caller (MB), cold: the returned "
                       "workflows' own size vs ours", own / MB, ours_mem,
                       target=targets["memory"],
                       note="own size: after the timed scan, each returned workflow's "
                       "to_dict() as JSON, read back and rebuilt under tracemalloc")
        procs = max(r["children_peak_procs"] for r in runs["ours_cold"])
        workers_mb = medians["ours_cold"]["children_peak_kb"] / MB
        # The design's bound with no slow file: each worker and its files in flight
        # (``schedule.PER_WORKER``), and a read-ahead per core the server leaves free.
        bound = self.workers * (1 + PER_WORKER) + self.workers - 1
        self.checks.append(Check(
            case, "workers' peak RSS, summed (MB), cold", None, round(workers_mb, 1),
            target=f"<= {bound} processes alive",
            met=procs <= bound,
            note=f"at most {procs} worker processes alive at once (workers, their read-ahead "
            f"and the files' processes, {PER_WORKER} per worker)",
        ))
        self.checks.append(Check(
            case, "workflows found", len(native_names), len(summary["names_ours"]),
            target="same names", met=same,
            note="" if summary["matches_expected"] else "native differs from the generated set",
        ))
        return summary

    def check(self, case: str, metric: str, native: float, ours: float, *,
              target: float | None = None, note: str = "") -> None:
        ratio = ours / native if native else None
        met = None if target is None or ratio is None else ratio <= target
        self.checks.append(Check(case, metric, _round(native), _round(ours),
                                 None if ratio is None else round(ratio, 3),
                                 f"<= {target}" if target is not None else "", met, note))

    def case_seed(self, name: str) -> None:
        tree = trees.seed_tree(self.work / "trees" / name, self.work / "dbs" / name)
        runs = self.scan_variants(name, tree, warm=False, full_cold=False)
        summary = self.summarise_scans(name, tree, runs, {})
        on_env = {"BENCH_PLUGIN": "1", "BENCH_AUTO_DISCOVERY": "1"}
        variants: dict[str, tuple[dict[str, str], bool]] = {
            "plugin_auto": (on_env, False),
            "plugin_auto_settled": (on_env, True),
            "plugin_off": ({"BENCH_PLUGIN": "1", "BENCH_AUTO_DISCOVERY": "0"}, False),
        }
        if not self.quick:
            variants["stock_auto"] = ({"BENCH_PLUGIN": "0", "BENCH_AUTO_DISCOVERY": "1"}, False)
        apps = self.app_starts(name, tree, variants)
        summary["app"] = {v: {"runs": rs, **_medians(rs)} for v, rs in apps.items()}
        app = summary["app"]
        off = app["plugin_off"]
        for variant, label in (
            ("plugin_auto", "as measured"),
            ("plugin_auto_settled", "workers already warm"),
        ):
            on = app[variant]
            extra = on["start_s"] - off["start_s"]
            self.checks.append(Check(
                name, f"app.start() extra with plugin+auto_discovery (s), {label}",
                None, round(extra, 3), None, f"<= {T_SEED_EXTRA_S} s", extra <= T_SEED_EXTRA_S,
                f"start() {on['start_s']:.3f} s (range "
                f"{_span(apps[variant], 'start_s')}; discovery {on['discover_s']:.3f} s, "
                f"of which Nexus registering the found workflows {on['register_s']:.3f} s) vs "
                f"{off['start_s']:.3f} s with auto_discovery=False; app build before start() "
                f"(Nexus(), plugin install, models) {on['build_s']:.3f} s vs "
                f"{off['build_s']:.3f} s",
            ))
        on = app["plugin_auto"]["start_s"]
        expected_app = sorted(tree.expected | {"create_user", "create_session"})
        # The app's registered names: discovery's plus the two registered by hand.
        registered = [r["names"] for v, rs in apps.items() if v != "plugin_off" for r in rs]
        app_same = all(names == expected_app for names in registered)
        summary["app_expected_names"] = expected_app
        if "stock_auto" in apps:
            stock = summary["app"]["stock_auto"]
            self.checks.append(Check(
                name, "app.start() with auto_discovery=True: stock vs plugin (s)",
                round(stock["start_s"], 3), round(on, 3), round(on / stock["start_s"], 3), "",
                None, f"stock: discovery {stock['discover_s']:.3f} s, of which registering "
                f"{stock['register_s']:.3f} s; it imports workflows/dataflow_models.py into the "
                "server (a second DataFlow instance); the plugin skips it",
            ))
        summary["app_same_names"] = app_same
        summary["same_names"] = summary["same_names"] and app_same
        self.cases[name] = summary

    def app_starts(self, name: str, tree: trees.Tree,
                   variants: dict[str, tuple[dict[str, str], bool]]
                   ) -> dict[str, list[dict[str, Any]]]:
        """``app.start()`` of the tree's app.py per variant (its environment, and whether
        to wait for the workers first), each cold, the variants back to back per repeat."""
        apps: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for i in range(self.repeat):
            self.log(f"{name}: app.start() repeat {i + 1}/{self.repeat}")
            for variant, (env, settle) in variants.items():
                trees.wipe_bytecode(tree.root)
                env = {**env, "XDG_CACHE_HOME": str(self.fresh("xdg"))}
                spec = {"kind": "app", "base": str(tree.root), "settle": settle}
                apps[variant].append(self.child(spec, env=env))
        return apps

    def case_small(self, name: str) -> None:
        """A small app (the seed's: five workflow files, a model file with two models):
        ``start()`` with the plugin, added in code or by the flag, against stock."""
        tree = trees.seed_tree(self.work / "trees" / name, self.work / "dbs" / name)
        auto = {"BENCH_AUTO_DISCOVERY": "1"}
        apps = self.app_starts(name, tree, {
            "stock": ({**auto, "BENCH_PLUGIN": "0"}, False),
            "plugin": ({**auto, "BENCH_PLUGIN": "1"}, False),
            "flag": ({**auto, "BENCH_PLUGIN": "0", FLAG_ENV: "1"}, False),
        })
        medians = {v: _medians(rs) for v, rs in apps.items()}
        for variant, how in (("plugin", "added in code"), ("flag", f"by the flag ({FLAG_ENV})")):
            extras = [o["start_s"] - s["start_s"]
                      for s, o in zip(apps["stock"], apps[variant], strict=True)]
            extra = statistics.median(extras)
            self.checks.append(Check(
                name, f"start() with the plugin {how} minus stock start() (s)", None,
                round(extra, 3), None, f"<= +{T_SMALL_EXTRA_S} s", extra <= T_SMALL_EXTRA_S,
                f"median of the differences within each repeat (range "
                f"{min(extras):.3f} to {max(extras):.3f} s); start() "
                f"{medians[variant]['start_s']:.3f} s (discovery "
                f"{medians[variant]['discover_s']:.3f} s) vs stock "
                f"{medians['stock']['start_s']:.3f} s (discovery "
                f"{medians['stock']['discover_s']:.3f} s); app build before start() "
                f"{medians[variant]['build_s']:.3f} s vs {medians['stock']['build_s']:.3f} s",
            ))
        expected = sorted(tree.expected | {"create_user", "create_session"})
        same = all(r["names"] == expected for rs in apps.values() for r in rs)
        self.checks.append(Check(name, "workflows registered", len(expected),
                                 len(apps["flag"][0]["names"]), target="same names, every variant",
                                 met=same))
        for results in apps.values():
            for result in results:
                result["workflows"] = len(result.pop("names"))
        self.cases[name] = {"files": tree.files, "expected_workflows": len(expected),
                            "same_names": same, "variants": medians, "runs": apps}

    def case_scan(self, name: str, family: str, size: int) -> None:
        root = self.work / "trees" / name
        if family == "mixed":
            tree = trees.mixed_tree(root, size, self.work / "dbs" / name)
            targets = {"cold": T_MIXED_COLD, "warm": T_MIXED_WARM, "cold_start": T_MIXED_START,
                       "memory": T_MEMORY_OWN}
        elif family == "workflows":
            tree = trees.workflows_tree(root, size)
            targets = {"cold": T_WORKFLOWS_COLD}
        else:
            tree = trees.builders_tree(root, size)
            targets = {"cold": T_BUILDERS, "warm": T_BUILDERS}
        runs = self.scan_variants(name, tree, warm=family != "workflows",
                                  full_cold=not self.quick)
        self.cases[name] = self.summarise_scans(name, tree, runs, targets)

    def case_manifest(self, name: str, size: int) -> None:
        """``app.start()`` on ``mixed-N``: native discovery, the plugin's scan, its manifest."""
        tree = trees.add_app(trees.mixed_tree(self.work / "trees" / name, size,
                                              self.work / "dbs" / name))
        manifest = self.work / f"{name}.manifest.json"
        self.log(f"{name}: nexus-dataflow freeze")
        subprocess.run([sys.executable, "-m", "nexus_dataflow_plugin.cli", "freeze",
                        str(tree.root), "-o", str(manifest)], env=self.environ(), check=True,
                       capture_output=True, timeout=CHILD_LIMIT_S)
        on = {"BENCH_AUTO_DISCOVERY": "1"}
        variants = {
            "native": {**on, "BENCH_PLUGIN": "0"},
            "scan": {**on, "BENCH_PLUGIN": "1"},
            "manifest": {**on, "BENCH_PLUGIN": "1", "BENCH_MANIFEST": str(manifest)},
        }
        apps = self.app_starts(name, tree, {v: (env, False) for v, env in variants.items()})
        for result in (r for rs in apps.values() for r in rs):
            result["own_s"] = result["discover_s"] - result["register_s"]
        medians = {v: _medians(rs) for v, rs in apps.items()}
        expected = sorted(tree.expected)
        same = all(r["names"] == expected for rs in apps.values() for r in rs)
        for metric, key in (("discovery at start()", "discover_s"),
                            ("discovery less Nexus's register() calls", "own_s"),
                            ("app.start()", "start_s")):
            manifest_s = medians["manifest"][key]
            for other in ("native", "scan"):
                spread = (f"range over runs: {other} {_span(apps[other], key)}, manifest "
                          f"{_span(apps['manifest'], key)}")
                paired = [b[key] / a[key] for a, b in
                          zip(apps[other], apps["manifest"], strict=True) if a and b and a[key]]
                if len(paired) > 1:  # each repeat ran all three back to back
                    spread += (f"; ratio within each repeat {min(paired):.2f}-{max(paired):.2f}, "
                               f"median {statistics.median(paired):.3f}")
                self.check(name, f"{metric} (s): manifest vs {other}",
                           medians[other][key], manifest_s, note=spread)
        self.checks.append(Check(
            name, "workflows registered", len(expected), medians["manifest"]["workflows"],
            target="same names, every variant", met=same,
            note=f"manifest {manifest.stat().st_size / 1024:.0f} KiB",
        ))
        for results in apps.values():
            for result in results:
                result["workflows"] = len(result.pop("names"))
        self.cases[name] = {"files": tree.files, "expected_workflows": len(expected),
                            "same_names": same, "variants": medians, "runs": apps}

    def case_hostile(self, name: str, size: int) -> None:
        tree = trees.mixed_tree(self.work / "trees" / name, size, self.work / "dbs" / name)
        good = set(tree.expected)
        trees.add_hostile(tree)
        self.log(f"{name}: native, {NATIVE_HOSTILE_LIMIT_S:.0f} s limit")
        native = self.scan("native", tree, cold=True, limit_s=NATIVE_HOSTILE_LIMIT_S)
        ours_runs = []
        for i in range(self.repeat):
            self.log(f"{name}: ours repeat {i + 1}/{self.repeat}")
            ours_runs.append(self.scan("ours", tree, cold=True, cache_dir=self.fresh("cache"),
                                       timeout=HOSTILE_TIMEOUT_S))
        ours = _medians(ours_runs)
        all_found = all(set(r["names"]) == good for r in ours_runs)
        for result in ours_runs:
            result["workflows"] = len(result.pop("names"))
        timeouts = ours_runs[0].get("statuses", {}).get("timeout", 0)
        summary = {
            "files": tree.files, "expected_workflows": len(good),
            "native": native if native is not None else {"finished": False,
                                                         "limit_s": NATIVE_HOSTILE_LIMIT_S},
            "ours": ours, "ours_runs": ours_runs, "same_names": all_found,
            "ours_timeouts": timeouts,
        }
        native_text = (f"{native['wall_s']:.2f}" if native is not None
                       else f"did not finish ({NATIVE_HOSTILE_LIMIT_S:.0f} s limit)")
        limit = HOSTILE_TIMEOUT_S + 2.0
        self.checks.append(Check(
            name, f"scan (s), timeout={HOSTILE_TIMEOUT_S:g}", native_text, round(ours["wall_s"], 3),
            None, f"<= {limit:g} s (timeout + 2 s)", ours["wall_s"] <= limit and all_found,
            f"{timeouts} files timed out; every good workflow found: {all_found}; "
            f"range over runs {_span(ours_runs)}",
        ))
        benign = self.cases.get(name.replace("hostile", "mixed"), {}).get("variants", {})
        if "ours_cold" in benign:
            extra = ours["wall_s"] - benign["ours_cold"]["wall_s"]
            summary["extra_over_benign_s"] = extra
            self.checks.append(Check(
                name, "extra over the same tree without the hanging files (s)", None,
                round(extra, 3), None, f"<= {limit:g} s (timeout + 2 s)", extra <= limit,
                "a looser reading of the target: what the hanging files cost",
            ))
        self.checks.append(Check(name, "workflows found", None if native is None
                                 else len(native["names"]), ours_runs[0]["workflows"],
                                 target=f"all {len(good)} good ones", met=all_found))
        self.cases[name] = summary

    def case_screen(self, name: str, size: int) -> None:
        tree = trees.screen_tree(self.work / "trees" / name, size, self.work / "dbs" / name)
        runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
        for i in range(self.repeat):
            self.log(f"{name}: repeat {i + 1}/{self.repeat}")
            cache = self.fresh("cache")
            for variant in ("cold", "warm"):
                spec = {"kind": "screen", "base": str(tree.root), "cache_dir": str(cache)}
                runs[variant].append(self.child(spec))
        summary: dict[str, Any] = {"files": tree.files}
        for variant, target in (("cold", T_SCREEN_COLD), ("warm", T_SCREEN_WARM)):
            med = _medians(runs[variant])
            summary[variant] = med
            rate = med["files_per_s"]
            rates = [r["files_per_s"] for r in runs[variant]]
            self.checks.append(Check(
                name, f"static screen, {variant} (files/s, all cores)", None, round(rate),
                None, f">= {target:,.0f}", rate >= target,
                f"load {med['load_s'] * 1000:.0f} ms, screen {med['facts_s'] * 1000:.0f} ms, "
                f"save {med['save_s'] * 1000:.0f} ms; CPU: server {med['cpu_s']:.2f} s, "
                f"screen processes {med['children_cpu_s']:.2f} s "
                f"({tree.files / (med['cpu_s'] + med['children_cpu_s']):,.0f} files per CPU-s); "
                f"finding (not in the rate) "
                f"{med['find_s'] * 1000:.0f} ms; range over runs "
                f"{min(rates):,.0f}-{max(rates):,.0f} files/s",
            ))
        summary["runs"] = runs
        self.cases[name] = summary

    def case_autoload(self, name: str) -> None:
        runs = AUTOLOAD_RUNS_QUICK if self.quick else AUTOLOAD_RUNS
        env_on = self.environ()
        env_on.pop("NEXUS_DISABLE_PLUGIN_AUTOLOAD", None)
        env_off = {**env_on, "NEXUS_DISABLE_PLUGIN_AUTOLOAD": "1"}
        times: dict[str, list[float]] = {"installed": [], "disabled": []}
        cmd = [sys.executable, "-c", "pass"]
        for _ in range(3):  # warm the page cache
            subprocess.run(cmd, env=env_on, check=True)
        cpu: dict[str, list[float]] = {"installed": [], "disabled": []}
        pair = (("installed", env_on), ("disabled", env_off))
        for i in range(runs):  # in pairs, each order half the time: drift hits both sides alike
            for variant, env in pair[:: 1 if i % 2 else -1]:
                used = resource.getrusage(resource.RUSAGE_CHILDREN)
                began = time.perf_counter()
                subprocess.run(cmd, env=env, check=True)
                times[variant].append((time.perf_counter() - began) * 1000)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[variant].append((after.ru_utime + after.ru_stime - used.ru_utime
                                     - used.ru_stime) * 1000)
        on, off = statistics.median(times["installed"]), statistics.median(times["disabled"])
        cpu_on, cpu_off = statistics.median(cpu["installed"]), statistics.median(cpu["disabled"])
        # Each pair ran back to back: the median of their differences cancels the
        # machine's drift, which moves single runs by more than the 2 ms measured.
        diffs = sorted(a - b for a, b in zip(times["installed"], times["disabled"], strict=True))
        added = statistics.median(diffs)
        hook_us = []
        for _ in range(min(runs, 10)):
            err = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=env_on,
                                 capture_output=True, text=True, check=True).stderr
            hook_us += [int(line.split("|")[1]) for line in err.splitlines()
                        if line.rstrip().endswith(" nexus_dataflow_plugin.startup")]
        hook_ms = statistics.median(hook_us) / 1000 if hook_us else None
        self.cases[name] = {"runs": runs, "ms": times, "cpu_ms": cpu, "median_installed_ms": on,
                            "median_disabled_ms": off, "median_cpu_installed_ms": cpu_on,
                            "median_cpu_disabled_ms": cpu_off, "median_paired_ms": added,
                            "hook_import_ms": hook_ms}
        self.checks.append(Check(
            name, "`python -c pass`: installed minus autoload disabled (ms, paired)", None,
            round(added, 2), None, f"<= {T_AUTOLOAD_MS:g} ms", added <= T_AUTOLOAD_MS,
            f"median of {runs} back-to-back differences (IQR {diffs[len(diffs) // 4]:.1f} to "
            f"{diffs[3 * len(diffs) // 4]:.1f} ms); medians of the runs themselves "
            f"{on:.1f} vs {off:.1f} ms wall, {cpu_on:.1f} vs {cpu_off:.1f} ms CPU",
        ))
        if hook_ms is not None:
            self.checks.append(Check(
                name, "start-up hook import (ms, -X importtime, cumulative)", None,
                round(hook_ms, 3), None, f"<= {T_AUTOLOAD_MS:g} ms", hook_ms <= T_AUTOLOAD_MS,
                "nexus_dataflow_plugin.startup as imported by the .pth line; less noisy than "
                "wall time, but excludes the .pth line itself",
            ))


def _span(results: list[dict[str, Any] | None], key: str = "wall_s") -> str:
    values = [r[key] for r in results if r is not None and key in r]
    return f"{min(values):.2f}-{max(values):.2f} s" if values else "-"


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _medians(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The median of every numeric field over runs that finished."""
    done = [r for r in results if r is not None]
    out: dict[str, Any] = {"n": len(done)}
    if not done:
        return out
    for key, value in done[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in done if key in r)
    if "names" in done[0]:
        out["workflows"] = len(done[0]["names"])
    return out


_SPIN = ("import time\nbegan = time.perf_counter()\nn = 0\nwhile n < 10_000_000:\n    n += 1\n"
         "print(time.perf_counter() - began)\n")


def parallel_cores() -> float:
    """How many cores' worth of CPU the machine gives right now: one busy loop timed
    alone, then one per core at once (medians of five tries each).

    On a shared virtual machine this moves between runs, even within one, and it
    moves ours (workers in parallel) but not native (one thread).
    """
    cores = os.cpu_count() or 1

    def spin(count: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE,
                                  text=True) for _ in range(count)]
        return statistics.mean(float(p.communicate()[0]) for p in procs)

    alone = statistics.median(spin(1) for _ in range(5))
    together = statistics.median(spin(cores) for _ in range(5))
    return round(cores * alone / together, 2)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip()
                           for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
        info["ram_gib"] = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    from importlib import metadata

    versions = {}
    for dist in ("kailash", "kailash-nexus", "kailash-dataflow", "nexus-dataflow-plugin"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info["packages"] = versions
    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "nexus_dataflow_plugin")
        info["commit"] = git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def extract(ref: str, into: Path) -> Path:
    """The package as committed at ``ref``, unpacked under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "nexus_dataflow_plugin"], cwd=HERE.parent,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True,
                          check=True).stdout.strip()


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(document: dict[str, Any]) -> str:
    m = document["machine"]
    lines = [
        f"machine: {m['nproc']} cores, {m.get('cpu')}, {m.get('ram_gib')} GiB RAM, "
        f"Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"measured: {document['measured']}; HEAD {m.get('commit')}",
        f"load average before: {document['load_before']}, after: {document['load_after']}; "
        f"repeat {document['repeat']} (median){'; QUICK mode' if document['quick'] else ''}; "
        f"{document['elapsed_s']:.0f} s",
        *([f"cores' worth of CPU a busy loop per core got, before and after: "
           f"{document['parallel_cores']}"] if document.get("parallel_cores") else []),
        "",
    ]
    header = ("case", "measure", "native", "ours", "ours/native", "target", "result")
    rows = [header]
    for c in document["checks"]:
        verdict = "" if c["met"] is None else ("met" if c["met"] else "MISSED")
        rows.append((c["case"], c["metric"], _fmt(c["native"]), _fmt(c["ours"]),
                     _fmt(c["ratio"]), c["target"], verdict))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        lines.append("  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w)
                               if i < 5 else str(v).ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [(c["case"], c["metric"], c["note"]) for c in document["checks"] if c["note"]]
    if notes:
        lines += ["", "notes:"]
        lines += [f"  {case} / {metric}: {note}" for case, metric, note in notes]
    same = document["same_names"]
    lines += ["", "same workflow names as native: "
              + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in same.items())]
    return "\n".join(lines)


def parse_case(name: str) -> tuple[str, int | None]:
    family, _, size = name.partition("-")
    if family in ("seed", "small", "autoload") and not size:
        return family, None
    if family in ("mixed", "manifest", "workflows", "builders", "hostile", "screen") \
            and size.isdigit() \
            and int(size) > 0:
        return family, int(size)
    raise SystemExit(f"unknown case {name!r}: use seed, small, autoload, mixed-N, manifest-N, "
                     "workflows-N, builders-N, hostile-N or screen-N")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small trees, 1 repeat (CI)")
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    parser.add_argument("--cases", help="comma-separated cases (default: all of the mode's)")
    parser.add_argument("--repeat", type=int, help="runs per measurement (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--profile", metavar="DIR",
                        help="also profile one cold and one warm scan of ours (caller side, "
                        "cProfile, not in the medians) into DIR/<case>-<cold|warm>.prof")
    parser.add_argument("--ref", help="measure the package as committed at this git ref "
                        "(extracted to the temporary directory and put first on PYTHONPATH) "
                        "instead of the working tree")
    parser.add_argument("--render", metavar="FILE",
                        help="print the table of a saved --json document and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)
    if args.render:
        print(table(json.loads(Path(args.render).read_text())))
        return 0
    names = args.cases.split(",") if args.cases else (QUICK_CASES if args.quick else FULL_CASES)
    parsed = [(n.strip(), *parse_case(n.strip())) for n in names if n.strip()]
    repeat = args.repeat or (1 if args.quick else 5)
    if repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    bench = Bench(work, repeat, args.quick, args.verbose,
                  Path(args.profile).resolve() if args.profile else None)
    ref = None
    load_before = os.getloadavg()
    cores_before = None if args.quick else parallel_cores()
    began = time.monotonic()
    try:
        if args.ref:
            ref = git("rev-parse", "--verify", f"{args.ref}^{{commit}}")
            bench.source = extract(ref, work / "src")
        # The benign mixed case runs before hostile, whose extra cost is measured against it.
        order = {"seed": 0, "small": 0, "mixed": 1, "manifest": 2, "workflows": 3, "builders": 3,
                 "hostile": 4, "screen": 5, "autoload": 6}
        for name, family, size in sorted(parsed, key=lambda p: order[p[1]]):
            bench.log(f"== {name}")
            if family == "seed":
                bench.case_seed(name)
            elif family == "small":
                bench.case_small(name)
            elif family in ("mixed", "workflows", "builders"):
                bench.case_scan(name, family, size)
            elif family == "manifest":
                bench.case_manifest(name, size)
            elif family == "hostile":
                bench.case_hostile(name, size)
            elif family == "screen":
                bench.case_screen(name, size)
            else:
                bench.case_autoload(name)
    except (ChildFailed, subprocess.CalledProcessError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    document = {
        "machine": machine(),
        "measured": f"git {ref}" if ref else "working tree (as installed)",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "parallel_cores": None if args.quick else [cores_before, parallel_cores()],
        "quick": args.quick,
        "repeat": repeat,
        "workers": bench.workers,
        "elapsed_s": time.monotonic() - began,
        "checks": [c.as_dict() for c in bench.checks],
        "same_names": {k: v["same_names"] for k, v in bench.cases.items() if "same_names" in v},
        "cases": bench.cases,
    }
    if args.json:
        json.dump(document, sys.stdout, indent=1)
        print()
    else:
        print(table(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
