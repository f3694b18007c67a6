"""The version a job keeps when its summary was stored by a replica of the previous release
(during a rolling upgrade) or before the exchange kept versions: the sweep reads it, by the
same rule as a job completing now, a batch at a time, on each backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from aifi.exchange.models import Job
from aifi.exchange.versions import read_unread_versions, summary_version

T = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def row(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"job-{n}",
        "hospital_id": "hospital-a",
        "product_id": "product-a",
        "vendor_id": "vendor-a",
        "idempotency_key": f"k{n}",
        "study_uid": f"2.25.{n}",
        "state": "completed",
        "created_at": T,
        "ready_at": T,
        "ended_at": T + timedelta(minutes=1),
        "updated_at": T,
        **extra,
    }


def kept(exchange: Any) -> dict[str, tuple[str | None, bool | None]]:
    services = exchange.client.app.state.services
    with services.db.session() as session:
        rows = session.execute(select(Job.id, Job.product_version, Job.version_read)).all()
    return {job_id: (version, read) for job_id, version, read in rows}


def stored(exchange: Any, rows: list[dict[str, Any]]) -> Any:
    services = exchange.client.app.state.services
    with services.db.session() as session:
        session.execute(insert(Job), rows)
    return services


def test_a_job_completed_by_a_replica_of_the_previous_release_gets_its_summarys_version(
    exchange: Any, parties: dict[str, Any]
) -> None:
    """The previous release writes the summary and its triage flag, not the version: the
    sweep reads it, whether a new replica created the job (for the catalogue's 2.0) or an
    old one did (no version)."""
    old_worker = {"product_version": "1.0", "triage": {"flag": "positive"}}
    services = stored(
        exchange,
        [
            row(1, summary=old_worker, triage_flag="positive", product_version="2.0"),
            row(2, summary=old_worker, triage_flag="positive"),
            # Failed under 2.0: no summary, nothing to read, the version it was created for.
            row(3, state="failed", product_version="2.0"),
        ],
    )
    assert services.jobs.read_product_versions() == 2
    assert kept(exchange) == {
        "job-1": ("1.0", True),
        "job-2": ("1.0", True),
        "job-3": ("2.0", None),
    }
    assert services.jobs.read_product_versions() == 0  # each is read once


#: What summaries stored before versions were checked may name, and what a job keeps of it
#: when it was created for 1.0: the same rule as `summary_version`, on each database.
NAMED: dict[str, tuple[Any, str]] = {
    "a-version": ("2.1.0", "2.1.0"),
    "the-longest": ("v" * 64, "v" * 64),
    "too-long": ("v" * 65, "1.0"),
    "empty": ("", "1.0"),
    "a-line-break": ("2.0\n", "1.0"),
    "a-number": (2, "1.0"),
    "true": (True, "1.0"),
    "null": (None, "1.0"),
    "an-object": ({"major": 2}, "1.0"),
}


@pytest.mark.parametrize("batch", [3, 5_000])
def test_the_sweep_reads_a_version_as_a_completing_job_does(
    exchange: Any, parties: dict[str, Any], batch: int
) -> None:
    """Batch by batch (three at a time here, as a national table would be read), every
    summary is read, and a value no job can keep leaves the version the job was created for;
    a summary naming none at all too."""
    summaries = {name: {"product_version": named} for name, (named, _) in NAMED.items()}
    summaries["none-named"] = {"triage": {"flag": "none"}}
    services = stored(
        exchange,
        [
            row(n, id=name, idempotency_key=name, summary=summary, product_version="1.0")
            for n, (name, summary) in enumerate(summaries.items())
        ],
    )
    assert read_unread_versions(services.db, batch=batch) == len(summaries)
    versions = {job: version for job, (version, _read) in kept(exchange).items()}
    assert versions == {**{name: want for name, (_, want) in NAMED.items()}, "none-named": "1.0"}
    assert versions == {job: summary_version(s) or "1.0" for job, s in summaries.items()}
    assert read_unread_versions(services.db, batch=batch) == 0
