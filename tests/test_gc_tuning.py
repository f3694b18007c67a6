"""A serving process freezes its start-up heap and collects young objects less often."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json
from aifi.gc_tuning import OLDER_THRESHOLD, YOUNG_THRESHOLD, tune_for_serving
before = gc.get_freeze_count()
tune_for_serving()
print(json.dumps({"before": before, "after": gc.get_freeze_count(),
                  "threshold": gc.get_threshold(),
                  "expected": [YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD]}))
"""


def test_tuning_freezes_what_exists_and_raises_the_thresholds() -> None:
    # A process of its own: freezing is for the life of the process, not for the test run.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    seen = json.loads(out)
    assert seen["before"] == 0
    assert seen["after"] > 1_000  # the imported modules and their objects
    assert seen["threshold"] == seen["expected"]
    assert seen["expected"][0] > 700  # CPython's default young threshold
