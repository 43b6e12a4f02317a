"""The benchmark suite runs (quick mode) and ours finds exactly the names native finds.

Timing is not asserted: this machine is shared and CI machines vary. The full
targets are checked by ``python benchmarks/run.py`` and recorded in
docs/performance.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
BENIGN = ("seed", "mixed-40", "workflows-20", "builders-20")


@pytest.fixture(scope="module")
def quick() -> dict:
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"run.py --quick failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def test_quick_mode_covers_the_cases(quick: dict) -> None:
    assert quick["quick"] is True
    assert set(quick["cases"]) == {*BENIGN, "small", "manifest-40", "screen-500", "autoload"}
    metrics = {(c["case"], c["metric"]) for c in quick["checks"]}
    assert any(case == "autoload" for case, _ in metrics)
    assert any(case == "screen-500" for case, _ in metrics)
    for check in quick["checks"]:
        assert check["met"] in (True, False, None)


@pytest.mark.parametrize("case", BENIGN)
def test_ours_finds_the_same_workflow_names_as_native(quick: dict, case: str) -> None:
    result = quick["cases"][case]
    assert result["names_native"], f"native found no workflows on {case}"
    assert result["names_ours"] == result["names_native"]
    assert result["matches_expected"], "native did not find the generated workflows"
    assert quick["same_names"][case] is True


def test_seed_app_registers_the_same_workflows_with_the_plugin(quick: dict) -> None:
    seed = quick["cases"]["seed"]
    assert seed["app_same_names"] is True
    for variant in ("plugin_auto", "plugin_auto_settled"):
        for run in seed["app"][variant]["runs"]:
            assert run["names"] == seed["app_expected_names"]


def test_the_small_app_registers_the_same_workflows_stock_with_the_plugin_and_by_the_flag(
    quick: dict,
) -> None:
    small = quick["cases"]["small"]
    assert set(small["variants"]) == {"stock", "plugin", "flag"}
    assert small["same_names"] is True
    workflows = {v: m["workflows"] for v, m in small["variants"].items()}
    assert workflows == dict.fromkeys(workflows, small["expected_workflows"])


def test_the_memory_row_compares_the_caller_with_the_workflows_it_returns(quick: dict) -> None:
    own = quick["cases"]["mixed-40"]["variants"]["ours_cold"]["workflows_own_kb"]
    assert own > 0
    assert any(c["case"] == "mixed-40" and "own size" in c["metric"] for c in quick["checks"])


def test_starting_from_a_manifest_registers_what_native_and_the_scan_register(
    quick: dict,
) -> None:
    manifest = quick["cases"]["manifest-40"]
    assert manifest["same_names"] is True
    assert set(manifest["variants"]) == {"native", "scan", "manifest"}
    workflows = {v: m["workflows"] for v, m in manifest["variants"].items()}
    assert workflows == dict.fromkeys(workflows, manifest["expected_workflows"])


def test_the_watch_benchmark_times_each_save_and_the_idle_watcher() -> None:
    done = subprocess.run(
        [sys.executable, str(RUN.with_name("watch.py")), "--files", "300", "--saves", "3",
         "--idle", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"watch.py failed:\n{done.stderr[-4000:]}"
    result = json.loads(done.stdout)
    assert result["files"] == 300 and len(result["latencies_s"]) == 3
    assert result["latency_worst_s"] == max(result["latencies_s"])
    assert set(result["targets"]) == {"latency_median_s", "latency_worst_s", "idle_core_pct"}
    assert result["idle_core_pct"] >= 0
