"""What became of a completed job's results at the hospital, as its gateway says when it
acknowledges the job: kept on the job for the hospital, its vendor and the operator, counted
for the operator's monitoring, written in the access log, and never changed once said.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, get_args

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from aifi.results.delivery import NOT_DELIVERED_BECAUSE, Delivery, NotDelivered
from scale.exchange_api import OPERATOR_KEY

OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


def _completed(exchange: Any, parties: dict[str, Any], study: list[Path], folder: Path) -> str:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job, claim, made = exchange.worked_on(hospital, vendor, study, folder)
    put = exchange.client.put(
        f"/jobs/{job['id']}/results/sr.dcm",
        params={"complete": "true"},
        content=made.files[0].path.read_bytes(),
        headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
    )
    assert put.status_code == 201, put.text
    return str(job["id"])


def _failed(exchange: Any, parties: dict[str, Any], study: list[Path]) -> str:
    job = exchange.ready_job(parties["hospital_a"], "product-a", study)
    claim = exchange.claim(parties["vendor_a"])
    assert claim is not None and claim["job"]["id"] == job["id"]
    failed = exchange.client.post(
        f"/jobs/{job['id']}/fail",
        json={"lease_token": claim["lease_token"], "reason": "no brain in field of view"},
        headers=parties["vendor_a"].headers,
    )
    assert failed.status_code == 200
    return str(job["id"])


def _undelivered_counts(exchange: Any) -> dict[tuple[str, str], float]:
    """The replica's counts by product and reason, as Prometheus reads them."""
    text = exchange.client.get("/metrics").text
    return {
        (sample.labels["product"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "aifi_exchange_undelivered_results"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def _counted(exchange: Any) -> dict[tuple[str, str], float]:
    return {key: value for key, value in _undelivered_counts(exchange).items() if value}


def test_an_acknowledgement_says_which_results_did_not_reach_the_pacs_and_why(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    unfileable, purged, delivered = (
        _completed(exchange, parties, make_ct(slices=1), tmp_path / f"out{n}") for n in range(3)
    )
    failed = _failed(exchange, parties, make_ct(slices=1))
    ids = [unfileable, purged, delivered, failed]
    said = {unfileable: "unfileable", purged: "purged", failed: "let_go"}

    acked = exchange.client.post(
        "/jobs/acknowledge", json={"job_ids": ids, "not_delivered": said}, headers=hospital.headers
    )

    assert acked.status_code == 200, acked.text
    expected = {unfileable: "unfileable", purged: "purged", delivered: "delivered", failed: None}
    assert {j["id"]: j["delivery"] for j in acked.json()} == expected
    for org in (hospital, vendor):  # the vendor learns its results did not reach the PACS
        seen = exchange.client.get(f"/jobs/{unfileable}", headers=org.headers).json()
        assert seen["delivery"] == "unfileable"
    # A failed job has no results: what the gateway said of it is not kept, nor counted.
    assert _counted(exchange) == {("product-a", "unfileable"): 1.0, ("product-a", "purged"): 1.0}
    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=OPERATOR).json()
    acks = {
        e["object_id"]: e["detail"]
        for e in audit
        if e["object_type"] == "job" and str(e["detail"]).startswith("acknowledged")
    }
    assert acks == {
        unfileable: "acknowledged; results not delivered: unfileable",
        purged: "acknowledged; results not delivered: purged",
        delivered: "acknowledged",
        failed: "acknowledged",
    }

    # What was said stands: an acknowledgement again changes nothing and counts nothing.
    again = exchange.client.post(
        "/jobs/acknowledge",
        json={"job_ids": [delivered, unfileable], "not_delivered": {delivered: "purged"}},
        headers=hospital.headers,
    )
    assert again.status_code == 200
    assert [j["delivery"] for j in again.json()] == ["delivered", "unfileable"]
    assert _counted(exchange) == {("product-a", "unfileable"): 1.0, ("product-a", "purged"): 1.0}


def test_an_acknowledgement_that_says_nothing_of_the_results_is_not_taken_as_delivered(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    """A gateway too old to say, and the one-job endpoint, leave it unknown; one that says
    (even that nothing went wrong) has every completed job it does not name delivered."""
    hospital = parties["hospital_a"]
    one, old, new = (
        _completed(exchange, parties, make_ct(slices=1), tmp_path / name)
        for name in ("one", "old", "new")
    )
    before = exchange.client.get(f"/jobs/{one}", headers=hospital.headers).json()
    assert before["delivery"] is None  # nothing said yet

    single = exchange.client.post(f"/jobs/{one}/acknowledge", headers=hospital.headers)
    unsaid = exchange.client.post(
        "/jobs/acknowledge", json={"job_ids": [old]}, headers=hospital.headers
    )
    said = exchange.client.post(
        "/jobs/acknowledge", json={"job_ids": [new], "not_delivered": {}}, headers=hospital.headers
    )

    assert single.json()["delivery"] is None and single.json()["acknowledged_at"]
    assert unsaid.json()[0]["delivery"] is None
    assert said.json()[0]["delivery"] == "delivered"
    assert _counted(exchange) == {}


def test_every_product_s_undelivered_results_are_exported_from_zero(
    exchange: Any, parties: dict[str, Any]
) -> None:
    """Before any count, and for a product registered after the replica started: an alert
    on increase() sees the first count only if a sample came before it."""
    exchange.product(parties["vendor_b"], "product-late")
    counts = _undelivered_counts(exchange)
    for product in ("product-a", "product-b", "product-late"):
        for reason in ("unfileable", "unmapped", "purged", "let_go", "lost"):
            assert counts[(product, reason)] == 0.0


def test_an_acknowledgement_that_misstates_delivery_is_refused_whole(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    hospital = parties["hospital_a"]
    job = _completed(exchange, parties, make_ct(slices=1), tmp_path / "out")
    stranger = "not-in-this-acknowledgement"

    for not_delivered, says in (
        ({stranger: "purged"}, f"not_delivered names jobs not in job_ids: {stranger}"),
        ({job: "delivered"}, "'unfileable', 'unmapped', 'purged', 'let_go' or 'lost'"),
        ({job: "lost in the post"}, "'unfileable', 'unmapped', 'purged', 'let_go' or 'lost'"),
    ):
        refused = exchange.client.post(
            "/jobs/acknowledge",
            json={"job_ids": [job], "not_delivered": not_delivered},
            headers=hospital.headers,
        )
        assert refused.status_code == 422
        assert says in refused.text

    seen = exchange.client.get(f"/jobs/{job}", headers=hospital.headers).json()
    assert seen["acknowledged_at"] is None and seen["delivery"] is None


def test_what_a_gateway_may_say_is_every_way_results_can_miss_the_pacs() -> None:
    """The request's spelled-out values and the shared vocabulary stay one list."""
    missed = {kind.value for kind in Delivery} - {Delivery.delivered.value}
    assert set(get_args(NotDelivered)) == missed
    assert {kind.value for kind in NOT_DELIVERED_BECAUSE} == missed


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite has one writer at a time
def test_two_acknowledgements_at_once_leave_the_first_and_one_entry(
    exchange: Any, parties: dict[str, Any], make_ct: Any, tmp_path: Path
) -> None:
    """A gateway that retried an acknowledgement whose answer was slow sends it twice at once.
    On PostgreSQL the second waits at the job's row for the first: it must then find the job
    acknowledged, audit and count nothing, and answer the job as the first left it."""
    hospital = parties["hospital_a"]
    job_id = _completed(exchange, parties, make_ct(slices=1), tmp_path / "job")
    engine = exchange.client.app.state.services.db.engine
    both_read = threading.Barrier(2, timeout=30)

    def meet(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE jobs SET acknowledged_at"):
            both_read.wait()  # each has found the job unacknowledged

    bodies = [
        {"job_ids": [job_id], "not_delivered": {job_id: "unfileable"}},
        {"job_ids": [job_id], "not_delivered": {job_id: "unfileable"}},
    ]
    answers: list[Any] = [None, None]

    def acknowledge(n: int) -> None:
        answers[n] = exchange.client.post(
            "/jobs/acknowledge", json=bodies[n], headers=hospital.headers
        )

    event.listen(engine, "before_cursor_execute", meet)
    try:
        threads = [threading.Thread(target=acknowledge, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        event.remove(engine, "before_cursor_execute", meet)
    assert [answer.status_code for answer in answers] == [200, 200]
    seen = [answer.json()[0] for answer in answers]
    assert seen[0]["acknowledged_at"] == seen[1]["acknowledged_at"] is not None
    assert [job["delivery"] for job in seen] == ["unfileable", "unfileable"]
    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=OPERATOR).json()
    acknowledged = [
        e for e in audit if e["object_id"] == job_id and e["detail"].startswith("acknowledged")
    ]
    assert len(acknowledged) == 1, acknowledged
    assert _counted(exchange) == {("product-a", "unfileable"): 1.0}
