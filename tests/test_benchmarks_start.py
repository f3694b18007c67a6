"""Every benchmark starts: its imports resolve and it reads its arguments. A benchmark runs by
hand, not in the suite, so a module it imports from could move without anyone noticing (the
end-to-end one did)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


def test_there_are_benchmarks() -> None:
    assert {path.stem for path in BENCHMARKS} >= {"e2e", "exchange_load", "reports"}


@pytest.mark.parametrize("benchmark", BENCHMARKS, ids=lambda path: path.stem)
def test_a_benchmark_starts_and_takes_json(benchmark: Path) -> None:
    shown = subprocess.run(
        [sys.executable, str(benchmark), "--help"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "--json" in shown.stdout  # each writes its figures and targets there
