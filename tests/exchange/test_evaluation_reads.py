"""The clinical pillar's evaluation and drift read what they need of every job from the
database, and take the product's triage flag out of its summary there: on each backend, the
flag reaches the figures as the product gave it."""

from __future__ import annotations

from typing import Any

from aifi.exchange.audit import Actor
from aifi.governance import NATIONAL
from aifi.governance.service import ClinicalService
from aifi.results.summary import AlgorithmSummary, ResultSummary, Triage, TriageFlag

OPERATOR = Actor(organisation_id="operator", role="operator")


def complete(exchange: Any, parties: dict[str, Any], make_ct: Any, summary: Any) -> str:
    hospital, vendor = parties["hospital_a"], parties["vendor_a"]
    job = exchange.ready_job(hospital, "product-a", make_ct(slices=1))
    claim = exchange.claim(vendor, start=True)
    assert claim is not None and claim["job"]["id"] == job["id"]
    done = exchange.client.put(
        f"/jobs/{job['id']}/results/summary.json",
        json=summary,
        params={"complete": "true"},
        headers={"X-Lease-Token": claim["lease_token"], **vendor.headers},
    )
    assert done.status_code == 201, done.text
    return str(job["id"])


def test_the_triage_flag_in_each_summary_reaches_evaluation_and_drift(
    exchange: Any, parties: dict[str, Any], make_ct: Any
) -> None:
    flags = ["positive", "positive", "negative", "none", None]
    for flag in flags:
        summary = ResultSummary(
            product_id="product-a",
            product_version="1.0.0",
            algorithm=AlgorithmSummary(name="a", version="1.0.0", manufacturer="vendor-a"),
            triage=Triage(flag=TriageFlag(flag or "none")),
        ).model_dump(mode="json", exclude=set() if flag else {"triage"})
        complete(exchange, parties, make_ct, summary)
    services = exchange.client.app.state.services
    clinical = ClinicalService(services.db, services.catalogue, services.audit, services.settings)

    [chart] = [c for c in clinical.drift(OPERATOR) if c.hospital_id == "hospital-a"]
    [point] = chart.chart.points
    # The positive rate is over the studies the product flagged: "none" and no triage are not.
    assert (point.studies, point.positives) == (3, 2)

    rows = {(r.hospital_id, r.product_id): r for r in clinical.evaluation(OPERATOR)}
    for hospital in ("hospital-a", NATIONAL):
        row = rows[(hospital, "product-a")]
        assert (row.volume, row.completed, row.failed) == (len(flags), len(flags), 0)
        assert row.turnaround_p50_seconds is not None and row.turnaround_p50_seconds >= 0
