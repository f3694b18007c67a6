"""The national reports' benchmark runs, and its two ways of counting agree (it exits 1 when
they do not), so the figures in docs/benchmarks.md can be measured again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "reports.py"


def test_the_reports_benchmark_counts_the_same_both_ways(tmp_path: Path) -> None:
    out = tmp_path / "reports.json"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCHMARK),
            "--jobs",
            "600",
            "--backends",
            "sqlite",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    assert {f["report"] for f in figures["figures"]} == {
        "evaluation",
        "evaluation per version",
        "drift (monthly)",
        "metering",
        "evaluation, 2026-06",
        "drift, 2026-06",
    }
    assert all(f["same_figures"] and f["rows"] > 0 for f in figures["figures"])
    assert figures["targets"] == {}
