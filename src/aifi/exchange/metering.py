"""Usage per hospital × product × month: what the business case is computed from."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import select

from aifi.exchange.audit import Actor
from aifi.exchange.clock import as_utc
from aifi.exchange.db import Database
from aifi.exchange.jobs import visible_to
from aifi.exchange.models import Job, Organisation
from aifi.exchange.schemas import JobState, MeteringRow


def metering_rows(
    db: Database, actor: Actor, since: str | None, until: str | None
) -> list[MeteringRow]:
    """Completed and failed jobs counted by the month they ended in (YYYY-MM, UTC).

    The months asked for are selected in the database (through the index on `ended_at`) and
    the rows read a batch at a time: the jobs table keeps every job ever, about ten million
    a year nationally.
    """
    query = visible_to(
        select(
            Job.hospital_id,
            Organisation.name,
            Job.product_id,
            Job.state,
            Job.ended_at,
            Job.input_bytes,
        )
        .join(Organisation, Organisation.id == Job.hospital_id)
        .where(Job.ended_at.is_not(None)),
        actor,
    )
    if since:
        query = query.where(Job.ended_at >= month_start(since))
    if until:
        query = query.where(Job.ended_at < month_start(until, later=1))
    counts: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    with db.session() as session:
        rows = session.execute(query.execution_options(yield_per=10_000))
        for hospital, name, product, state, ended_at, size in rows:
            if ended_at is None:  # excluded in SQL; said again for the type checker
                continue
            month = as_utc(ended_at).strftime("%Y-%m")
            bucket = counts[(hospital, name, product, month)]
            if state == JobState.completed:
                bucket[0] += 1
                bucket[2] += size or 0
            elif state in (JobState.failed, JobState.expired):
                bucket[1] += 1
    return [
        MeteringRow(
            hospital=hospital,
            hospital_name=name,
            product=product,
            month=month,
            jobs_completed=done,
            jobs_failed=failed,
            input_bytes=size,
        )
        for (hospital, name, product, month), (done, failed, size) in sorted(counts.items())
    ]


def month_start(month: str, later: int = 0) -> datetime:
    """The first moment (UTC) of `month` (YYYY-MM), or of the month `later` months on."""
    year, number = (int(part) for part in month.split("-"))
    index = year * 12 + number - 1 + later
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
