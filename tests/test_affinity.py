"""`aifi exchange --cpu N`: the replica and every thread it starts run on core N alone; a core
the process may not use is refused with the cores it may."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from aifi.affinity import NoSuchCore, pin_to_core
from aifi.cli import app

_CHILD = """
import os, threading
from aifi.affinity import pin_to_core
pin_to_core({core})
seen = []
worker = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
worker.start(); worker.join()
print(sorted(os.sched_getaffinity(0)), seen[0])
"""


def test_a_pinned_process_and_the_threads_it_starts_run_on_that_core_alone() -> None:
    core = max(os.sched_getaffinity(0))  # not always core 0
    shown = subprocess.run(
        [sys.executable, "-c", _CHILD.format(core=core)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert shown.stdout.split("] ") == [f"[{core}", f"[{core}]\n"], shown.stdout


def test_a_core_the_process_may_not_use_is_refused_with_the_ones_it_may() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    missing = max(allowed) + 1
    with pytest.raises(NoSuchCore, match=f"core {missing} is not one .*allowed: {allowed[0]}"):
        pin_to_core(missing)
    assert sorted(os.sched_getaffinity(0)) == allowed  # untouched
    refused = CliRunner().invoke(app, ["exchange", "--cpu", str(missing), "--port", "0"])
    assert refused.exit_code == 2
    assert f"--cpu: core {missing} is not one this process may run on" in refused.output
