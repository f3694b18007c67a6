"""What the gateway does for each instance, study and result costs the same in its third year
as on its first day: ten times the studies done with long ago leave the work of each step
as it was. Counted in SQLite's virtual-machine steps, the same on any machine.

Each step runs under the state's lock, so a step that reads the gateway's whole history
holds up every other: a result coming home looked its job up by reading every job (55 ms
with a million), and each round of sending read every study ever counted for uptake
(26 ms), a STAT study's included.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aifi.gateway.state import GatewayState
from support.spool import add_history, play, received, steps_on

#: Per step, what the gateway's threads ask of its state (GatewayService).
Step = Callable[[GatewayState, dict[str, Any]], object]
STEPS: dict[str, Step] = {
    "receipt: index an instance": lambda state, today: state.record_instance(
        received(f"1.7.{today['n']}", "1.7", today["spool"], 10), 60.0
    ),
    "assembly: studies due": lambda state, today: state.due_studies(time.time()),
    "sending: jobs to send": lambda state, today: state.pending_jobs(time.time()),
    "sending: next try": lambda state, today: state.next_pending_at(),
    "sending: the same instances sent before": lambda state, today: state.skip_if_sent_before(
        today["job"], "a digest no job was sent with", 1
    ),
    "sending: studies to count for uptake": lambda state, today: state.uncounted_studies(),
    "sending: counts to report": lambda state, today: state.unreported_counts(),
    "results: the job of an outcome": lambda state, today: state.job_by_exchange_id("x-today"),
    "results: notices sent": lambda state, today: state.notification_outcomes(today["job"]),
    "results: delivered already": lambda state, today: state.delivered(
        today["job"], "sr.dcm", "pacs"
    ),
    "results: record a delivery": lambda state, today: state.record_delivery(
        today["job"], "sr.dcm", "pacs", None, None
    ),
    "retention: studies to purge": lambda state, today: state.purgeable_studies(
        time.time() - 86400, 3600.0
    ),
}


def steps_of(state: GatewayState, step: Step, today: dict[str, Any]) -> int:
    """SQLite's virtual-machine steps (in tens) one step takes."""
    with steps_on(state, 10) as steps:
        step(state, today)
    return steps[0]


@pytest.fixture
def gateway_today(tmp_path: Path) -> tuple[GatewayState, dict[str, Any]]:
    state = GatewayState(tmp_path / "state.db")
    play(state, tmp_path / "spool", random.Random(11), 80)  # today's work
    job = int(state.query("SELECT MAX(id) AS id FROM jobs")[0]["id"])
    state.update_job(job, exchange_job_id="x-today")
    return state, {"job": job, "spool": tmp_path / "spool" / "1.7", "n": 0}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_a_step_of_the_gateway_costs_the_same_after_years_of_history(
    gateway_today: tuple[GatewayState, dict[str, Any]], name: str
) -> None:
    state, today = gateway_today
    step = STEPS[name]
    try:
        add_history(state, 0, 300)
        step(state, today)  # first use: the statement is prepared
        today["n"] += 1
        before = steps_of(state, step, today)
        add_history(state, 300, 2700)
        today["n"] += 1
        after = steps_of(state, step, today)
        assert len(state.query("SELECT 1 FROM jobs")) > 3000
    finally:
        state.close()
    assert after <= before * 1.1 + 2, (before, after)
