"""Hospitals take turns at a vendor's queue: one hospital's backlog holds up no other's studies
(aifi.exchange.fair_share), on every backend."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pydicom
import pytest
from sqlalchemy import event

from aifi.exchange import jobs as jobs_module
from aifi.exchange.clock import utcnow
from scale.exchange_api import Exchange, Org
from support.plans import plan_of

#: The tests move the exchange's clock and run its lease sweep themselves.
pytestmark = pytest.mark.usefixtures("quiet_replica")


@pytest.fixture
def hospitals(exchange: Exchange, parties: dict[str, Any]) -> dict[str, Org]:
    """Hospitals A, B and C, all sending to vendor A's product."""
    exchange.subscribe(parties["hospital_b"], "product-a")
    hospital_c = exchange.org("hospital-c", "hospital")
    exchange.subscribe(hospital_c, "product-a")
    return {"A": parties["hospital_a"], "B": parties["hospital_b"], "C": hospital_c}


def open_jobs(
    exchange: Exchange, make_ct: Any, hospital: Org, label: str, count: int, **extra: Any
) -> dict[str, str]:
    """`count` one-instance jobs of `hospital`, opened in turn; job id → label ("A0", "A1" …).

    Half open by their declared count, half by "ready": the two ways a job opens.
    """
    opened = {}
    for number in range(count):
        study = make_ct(slices=1)
        if number % 2:
            job = exchange.ready_job(hospital, "product-a", study, **extra)
        else:
            uid = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
            job = exchange.job(hospital, "product-a", uid, instances=1, **extra)
            assert exchange.upload(hospital, job["id"], study[0]).status_code == 201
        opened[job["id"]] = f"{label}{number}"
    return opened


def claim_all(exchange: Exchange, vendor: Org, names: dict[str, str], **body: Any) -> list[str]:
    """Claim until the queue is empty; the jobs' labels in the order they were claimed."""
    order = []
    while (claim := exchange.claim(vendor, **body)) is not None:
        order.append(names[claim["job"]["id"]])
    return order


def test_a_hospitals_backlog_does_not_hold_up_another_hospitals_studies(
    exchange: Exchange, parties: dict[str, Any], hospitals: dict[str, Org], make_ct: Any
) -> None:
    # A gateway back after an outage sends its backlog; B's studies arrive just after.
    names = open_jobs(exchange, make_ct, hospitals["A"], "A", 6)
    names |= open_jobs(exchange, make_ct, hospitals["B"], "B", 3)

    order = claim_all(exchange, parties["vendor_a"], names)

    # Oldest first, B's first study would wait for all six of A's; now they take turns, and
    # each hospital's own studies keep their order.
    assert order == ["A0", "B0", "A1", "B1", "A2", "B2", "A3", "A4", "A5"]


def test_a_hospital_that_starts_sending_joins_at_the_head_not_before_it(
    exchange: Exchange, parties: dict[str, Any], hospitals: dict[str, Org], make_ct: Any
) -> None:
    vendor = parties["vendor_a"]
    names = open_jobs(exchange, make_ct, hospitals["A"], "A", 6)
    first = [names[exchange.claim(vendor)["job"]["id"]] for _ in range(3)]  # type: ignore[index]
    names |= open_jobs(exchange, make_ct, hospitals["C"], "C", 2)

    # C's first study waits for the one job of A's whose turn it already is, not for none
    # (C did not queue meanwhile) and not for all three.
    assert first + claim_all(exchange, vendor, names) == [
        "A0", "A1", "A2", "A3", "C0", "A4", "C1", "A5"
    ]  # fmt: skip


def test_a_job_whose_lease_ran_out_goes_back_to_the_head_of_the_queue(
    exchange: Exchange,
    parties: dict[str, Any],
    hospitals: dict[str, Org],
    make_ct: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vendor = parties["vendor_a"]
    later = [utcnow()]
    monkeypatch.setattr(jobs_module, "utcnow", lambda: later[0])
    names = open_jobs(exchange, make_ct, hospitals["A"], "A", 3)
    claims = [exchange.claim(vendor, lease_seconds=30) for _ in range(3)]
    assert [names[c["job"]["id"]] for c in claims] == ["A0", "A1", "A2"]  # type: ignore[index]
    for claim in claims[:2]:
        assert claim is not None
        exchange.client.post(
            f"/jobs/{claim['job']['id']}/fail",
            json={"lease_token": claim["lease_token"], "reason": "not for this test"},
            headers=vendor.headers,
        ).raise_for_status()
    # The queue emptied; B sends three. Then A2's worker dies and its lease runs out.
    names |= open_jobs(exchange, make_ct, hospitals["B"], "B", 3)
    later[0] += timedelta(seconds=31)
    assert exchange.client.app.state.services.jobs.expire_leases() == 1

    # A2 had its turn already: it goes first, not behind B's (its place in the queue from
    # before would have put it third).
    assert claim_all(exchange, vendor, names) == ["A2", "B0", "B1", "B2"]


def test_stat_studies_still_go_before_every_hospitals_routine_ones(
    exchange: Exchange, parties: dict[str, Any], hospitals: dict[str, Org], make_ct: Any
) -> None:
    names = open_jobs(exchange, make_ct, hospitals["A"], "A", 3)
    names |= open_jobs(exchange, make_ct, hospitals["B"], "B", 2)
    names |= open_jobs(exchange, make_ct, hospitals["A"], "S", 2, priority="stat")

    assert claim_all(exchange, parties["vendor_a"], names) == [
        "S0", "S1", "A0", "B0", "A1", "B1", "A2"
    ]  # fmt: skip


def test_a_place_in_the_queue_is_found_by_index_however_long_the_queue(
    exchange: Exchange, parties: dict[str, Any], hospitals: dict[str, Org], make_ct: Any
) -> None:
    """The statement that opens a job, as the driver got it, explained by the database: the
    queue's head and the hospital's last job are read by index, not by reading every waiting
    job (a backlog of thousands would make each opening slower)."""
    db = exchange.client.app.state.services.db
    sent: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        # An opening reads the hospital's last place (`… DESC`); the replica's lease sweep,
        # which may run meanwhile, puts jobs back at the head only.
        if statement.startswith("UPDATE jobs SET") and "waiting.queue_place DESC" in statement:
            sent.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", keep)
    try:
        open_jobs(exchange, make_ct, hospitals["A"], "A", 2)
    finally:
        event.remove(db.engine, "before_cursor_execute", keep)
    assert len(sent) == 2  # one for each way of opening
    for statement, parameters in sent:
        plan = plan_of(db, statement, parameters)
        assert "ix_jobs_queue" in plan and "ix_jobs_waiting" in plan, plan
