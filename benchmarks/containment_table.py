"""Print the bad-input matrix's results as a markdown table (for docs/containment.md).

The matrix is ``tests/hostile.py``'s, the one ``tests/test_containment.py`` tests
(every hostile fixture of ``tests/fixtures/hostile/`` next to well-behaved
workflows, plus symlinks out of the project, a symlink loop, a huge file and two
files deleted mid-scan): built and scanned once with its settings (``timeout=3``,
two workers, ``memory_limit_mb=512``), one row per file: behaviour, status, time,
reason. After the table it reports the wall time and whether any process of the
scan was still alive.

    python benchmarks/containment_table.py
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import hostile as matrix_module  # noqa: E402 - tests/hostile.py, not a test module


def _machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                "",
            )
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs"
        + (f" ({model})" if model else "")
        + f", Python {platform.python_version()}"
    )


def _cell(text: str, limit: int = 150) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="containment-") as root:
        built = matrix_module.build_matrix(Path(root))
        began = time.monotonic()
        matrix_module.scan_matrix(built)
        wall = time.monotonic() - began
        alive, others = matrix_module.survivors(built.marks)
        matrix_module.kill_survivors(built.marks)
        report = built.report
        assert report is not None
        rows = []
        for case in matrix_module.MATRIX:
            entry = report.file(case.path)
            if entry is None:
                rows.append(f"| {case.behaviour} | `{case.path}` | (no entry) | | |")
                continue
            expected = "" if entry.status in case.statuses else " ✗"
            rows.append(
                f"| {case.behaviour} | `{case.path}` | `{entry.status}`{expected} "
                f"| {entry.duration_s:.2f} | {_cell(entry.reason.replace(root, '<tmp>'))} |"
            )
    timeouts = len(report.by_status("timeout"))
    print(f"Generated {datetime.date.today().isoformat()} on {_machine()}.")
    print()
    print(
        f"`SmartDiscovery(tree, timeout={matrix_module.TIMEOUT_S:g}, "
        f"workers={matrix_module.WORKERS}, memory_limit_mb={matrix_module.MEMORY_LIMIT_MB})`, "
        f"{len(report.files)} files, one scan."
    )
    print()
    print("| Behaviour | File | Status | Time (s) | Reason |")
    print("|---|---|---|---:|---|")
    print("\n".join(rows))
    print()
    print(
        f"Whole scan: {wall:.2f} s wall ({timeouts} files timed out at "
        f"{matrix_module.TIMEOUT_S:g} s each, {matrix_module.WORKERS} workers). "
        f"Workflows discovered: {len(report.workflows)}. "
        + (
            "No process of the scan was alive afterwards."
            if not alive and not others
            else f"STILL ALIVE after the scan: {[(p.pid, p.fixture, p.role) for p in alive]}"
            f" {others}"
        )
    )
    return 0 if not alive and not others else 1


if __name__ == "__main__":
    raise SystemExit(main())
