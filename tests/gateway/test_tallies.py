"""The counts the gateway's exporter reads (jobs, studies, deliveries, notices by state; what
the spool holds) are kept by triggers: whatever the gateway does, they equal its rows counted
afresh; a state from before them is counted once on its first start; and a scrape reads no
table of the gateway's history whole, nor waits for the gateway's own work."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifi.gateway import tallies
from aifi.gateway.metrics import GatewayCollector, start_metrics_server
from aifi.gateway.state import MAX_NOTICE_ATTEMPTS, TALLIES, GatewayState, RoutedJob, Snapshot
from aifi.gateway.tallies import Tally
from support.national import samples
from support.spool import add_history, play, received, steps_on


def kept_and_counted(state: GatewayState) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    """Each tally as the triggers keep it and as its rows count, zeros left out."""

    def nonzero(values: dict[str, float]) -> dict[str, float]:
        return {key: value for key, value in values.items() if value}

    with state.transaction() as db:
        return {
            tally.name: (nonzero(state.tally(tally.name)), nonzero(tallies.recount(db, tally)))
            for tally in TALLIES
        }


def assert_tallies_hold(state: GatewayState) -> None:
    for name, (kept, counted) in kept_and_counted(state).items():
        assert kept == counted, name


@pytest.mark.parametrize("seed", range(3))
def test_the_tallies_equal_the_rows_counted_afresh_whatever_the_gateway_did(
    tmp_path: Path, seed: int
) -> None:
    state = GatewayState(tmp_path / "state.db")
    rng = random.Random(seed)
    try:
        seen: set[str] = set()
        for _ in range(8):
            seen |= play(state, tmp_path / "spool", rng, 40)
            assert_tallies_hold(state)
        counted = kept_and_counted(state)
        purged = state.totals().get("purged_studies", 0)
    finally:
        state.close()
    # The play reached what the tallies must follow: jobs in several states, deliveries
    # both ways, notices of each outcome, instances received, replaced and purged.
    assert len(seen) >= 3
    assert set(counted["deliveries"][1]) == {"delivered", "failed"}
    outcomes = {key.rsplit("/", 1)[1] for key in counted["notices"][1]}
    assert outcomes == {"sent", "retrying", "failed"}
    assert purged > 0
    assert counted["spool_bytes"][1][""] > 0


def test_a_notice_tried_the_last_time_moves_from_retrying_to_failed(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "state.db")
    try:
        state.record_instance(received("1.2.1.0", "1.2.1", tmp_path, 10), 0.0)
        [due] = state.due_studies(time.time() + 1)
        routed = [RoutedJob("p", "stat", frozenset())]
        state.route_study("1.2.1", due["round"], due["due_at"], routed, study_pseudonym="1.2.1")
        [job] = state.query("SELECT id FROM jobs")
        counts = []
        for _ in range(MAX_NOTICE_ATTEMPTS):
            state.record_notification(job["id"], "webhook", ok=False, retryable=True, stat=True,
                                      detail="503", seconds=0.1)  # fmt: skip
            counts.append(state.tally("notices"))
    finally:
        state.close()
    assert counts[-2]["webhook/stat/retrying"] == 1
    assert counts[-2].get("webhook/stat/failed", 0) == 0
    assert counts[-1]["webhook/stat/retrying"] == 0
    assert counts[-1]["webhook/stat/failed"] == 1


def test_a_state_from_before_the_tallies_is_counted_once_on_its_first_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    state = GatewayState(path)
    play(state, tmp_path / "spool", random.Random(7), 120)
    state.close()
    with sqlite3.connect(path) as old:  # as a gateway of the version before left it
        for (name,) in old.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            old.execute(f"DROP TRIGGER {name}")
        old.execute("DROP TABLE tallies")
        jobs = old.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    assert jobs > 0
    state = GatewayState(path)
    try:
        assert sum(state.tally("jobs").values()) == jobs
        assert_tallies_hold(state)
        play(state, tmp_path / "spool", random.Random(8), 60)  # and kept from then on
        assert_tallies_hold(state)
    finally:
        state.close()


def test_the_spool_is_counted_afresh_at_each_start_after_an_earlier_version_ran(
    tmp_path: Path,
) -> None:
    """A gateway rolled back to an earlier version replaces a re-sent instance's row, which
    fires no trigger: the spool's bytes drift, and the triggers' digest cannot tell. The next
    start counts the spool again (the spool only, not the history)."""
    path = tmp_path / "state.db"
    state = GatewayState(path)
    play(state, tmp_path / "spool", random.Random(9), 60)
    state.close()
    with sqlite3.connect(path) as old:  # as the earlier version's receipt did
        row = old.execute("SELECT * FROM instances LIMIT 1").fetchone()
        old.execute(
            "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (*row[:9], row[9] + 1000, *row[10:]),
        )
    state = GatewayState(path)
    try:
        assert_tallies_hold(state)
    finally:
        state.close()


def test_changed_tallies_are_counted_afresh_and_unchanged_ones_are_not(tmp_path: Path) -> None:
    state = GatewayState(tmp_path / "state.db")
    play(state, tmp_path / "spool", random.Random(3), 80)
    by_product = Tally("jobs", "jobs", "{row}.product_id")
    try:
        with state.transaction() as db:
            assert tallies.install(db, TALLIES) is False  # as installed at the start
            assert tallies.install(db, [by_product]) is True
            assert tallies.install(db, [by_product]) is False
            expected = tallies.recount(db, by_product)
        assert state.tally("jobs") == expected
        assert state.tally("studies") == {}  # no longer counted
        assert set(expected) <= {"product-a", "product-b", "product-c"}
    finally:
        state.close()


def scrape_steps(state: GatewayState, monkeypatch: pytest.MonkeyPatch) -> int:
    """SQLite's virtual-machine steps (in hundreds) one scrape takes: the work it does,
    counted the same on any machine."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    read = Snapshot.query

    def counted(self: Snapshot, sql: str, params: tuple[Any, ...] = ()) -> Any:
        self._conn.set_progress_handler(count, 100)
        try:
            return read(self, sql, params)
        finally:
            self._conn.set_progress_handler(None, 100)

    # Steps on the gateway's own, locked connection: a scrape must take none.
    with steps_on(state, 1) as own, monkeypatch.context() as patched:
        patched.setattr(Snapshot, "query", counted)
        figures = list(GatewayCollector(state, retain_seconds=3600.0).collect())
    taken = own[0]
    assert figures[0].name == "aifi_gateway_state_up" and figures[0].samples[0].value == 1.0
    assert taken == 0, "the scrape read through the gateway's own, locked connection"
    return steps[0]


def test_a_scrape_costs_the_same_after_years_of_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten times the studies done with long ago leave a scrape's work as it was: every
    figure reads a tally, what is under way, or the spool. Counted from the rows, it grew
    with every year of the gateway's life: 1.8 s a scrape after three years of a large
    hospital's work."""
    state = GatewayState(tmp_path / "state.db")
    try:
        play(state, tmp_path / "spool", random.Random(5), 80)  # today's work
        add_history(state, 0, 500)
        before = scrape_steps(state, monkeypatch)
        add_history(state, 500, 4500)
        after = scrape_steps(state, monkeypatch)
        assert sum(state.tally("jobs").values()) > 5000
    finally:
        state.close()
    assert before > 0
    assert after <= before * 1.1 + 2, (before, after)


def test_a_scrape_does_not_wait_for_the_gateways_own_work(tmp_path: Path) -> None:
    """A scrape while the gateway holds its state (a study being routed, a result being
    recorded) answers at once, with what was committed before."""
    state = GatewayState(tmp_path / "state.db")
    state.record_instance(received("1.2.1.0", "1.2.1", tmp_path, 10), 0.0)
    server = start_metrics_server(state, 0)
    try:
        with state.transaction() as db:
            db.execute("UPDATE studies SET state = 'routed'")  # not committed yet
            figures = samples(httpx.get(server.url, timeout=10).text)
        after = samples(httpx.get(server.url, timeout=10).text)
    finally:
        server.close()
        state.close()
    assert figures[("aifi_gateway_state_up", ())] == 1.0
    assert figures[("aifi_gateway_studies", (("state", "receiving"),))] == 1.0
    assert after[("aifi_gateway_studies", (("state", "routed"),))] == 1.0
