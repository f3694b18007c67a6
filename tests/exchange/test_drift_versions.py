"""Drift names each period's product versions the same way counted by the database as row by
row, on each backend, whatever the versions hold: commas, quotes, backslashes, JSON-looking
text, spaces, unicode; a period with none recorded, a study two versions ran, a version back
after a gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from aifi.exchange.audit import Actor
from aifi.exchange.models import Job
from aifi.exchange.months import Months
from aifi.exchange.triage import triage_call
from aifi.exchange.versions import summary_version
from aifi.governance import NATIONAL, JobRecord, drift_charts
from aifi.governance.service import ClinicalService

OPERATOR = Actor(organisation_id="operator", role="operator")

ODD = [
    "1,0",
    'a"b',
    "ü-β 日本",
    "a\\b",
    "[1]",
    "null",
    " spaced ",
    "🚀1",
    "x'y",
    '{"k": 1}',
    "1.0",
    "1.0.0",
    "V" * 64,
]


def jobs_with_odd_versions() -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    base = datetime(2026, 1, 5, 10, tzinfo=UTC)
    n = 0

    def add(hospital: str, ended: datetime, version: str | None, flag: str, study: str) -> None:
        nonlocal n
        summary: dict[str, Any] = {"triage": {"flag": flag}}
        if version is not None:
            summary["product_version"] = version
        jobs.append(
            {
                "id": f"job-{n:04d}",
                "hospital_id": hospital,
                "product_id": "product-a",
                "vendor_id": "vendor-a",
                "idempotency_key": f"k{n}",
                "study_uid": study,
                "state": "completed",
                "summary": summary,
                "created_at": ended - timedelta(hours=1),
                "ready_at": ended - timedelta(minutes=5),
                "ended_at": ended,
                "updated_at": ended,
                "product_version": None,
            }
        )
        n += 1

    # A period with only null versions (both hospitals).
    for k in range(4):
        add(
            "hospital-a",
            base + timedelta(days=k),
            None,
            "positive" if k % 2 else "negative",
            f"s-null-{k}",
        )
        add("hospital-b", base + timedelta(days=k), None, "negative", f"s-nullb-{k}")
    # Then odd versions, one per week, at alternating hospitals; a study run by two versions.
    for i, version in enumerate(ODD):
        when = base + timedelta(weeks=2 + i)
        hospital = ("hospital-a", "hospital-b")[i % 2]
        for k in range(3):
            add(
                hospital,
                when + timedelta(hours=k),
                version,
                ("positive", "negative")[k % 2],
                f"s-{i}-{k}",
            )
        other = ODD[(i + 5) % len(ODD)]
        add(hospital, when + timedelta(hours=5), other, "positive", f"s-{i}-0")  # same study
        add(hospital, when + timedelta(hours=6), None, "negative", f"s-{i}-nul")
    # A version that comes back after a gap.
    add("hospital-a", base + timedelta(weeks=40), ODD[0], "positive", "s-back")
    return jobs


def stored(exchange: Any, jobs: list[dict[str, Any]]) -> Any:
    services = exchange.client.app.state.services
    with services.db.session() as session:
        session.execute(insert(Job), jobs)
    services.jobs.read_triage_flags()
    services.jobs.read_product_versions()
    return services


def records(jobs: list[dict[str, Any]]) -> list[JobRecord]:
    return [
        JobRecord(
            job_id=j["id"],
            product_id=j["product_id"],
            hospital_id=j["hospital_id"],
            state=j["state"],
            ready_at=j["ready_at"],
            ended_at=j["ended_at"],
            created_at=j["created_at"],
            ai_positive=triage_call(j["summary"]),
            study_uid=j["study_uid"],
            product_version=summary_version(j["summary"]) or j["product_version"],
        )
        for j in jobs
    ]


@pytest.mark.parametrize("months", [Months(), Months("2026-02", "2026-06")], ids=["all", "feb-jun"])
def test_each_periods_versions_are_the_same_counted_either_way(
    exchange: Any, parties: dict[str, Any], months: Months
) -> None:
    jobs = jobs_with_odd_versions()
    services = stored(exchange, jobs)
    clinical = ClinicalService(services.db, services.catalogue, services.audit, services.settings)
    start = datetime.fromisoformat(f"{months.since}-01T00:00Z") if months.since else None
    end = datetime.fromisoformat(f"{months.until}-01T00:00Z") if months.until else None
    if end is not None:
        end = (end + timedelta(days=32)).replace(day=1)
    chosen = [
        j
        for j in jobs
        if (start is None or j["ended_at"] >= start) and (end is None or j["ended_at"] < end)
    ]
    for granularity in ("month", "week"):
        want = drift_charts(records(chosen), granularity=granularity)
        got = clinical.drift(OPERATOR, granularity=granularity, months=months)
        assert [c.model_dump() for c in got] == [c.model_dump() for c in want]
    weekly = {
        (c.hospital_id): c for c in clinical.drift(OPERATOR, granularity="week", months=months)
    }
    named = {v for p in weekly[NATIONAL].chart.points for v in p.versions}
    if months.since is None:
        assert named == set(ODD)
        assert weekly[NATIONAL].chart.points[0].versions == []
