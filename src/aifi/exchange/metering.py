"""Usage per hospital × product × month: what the business case is computed from."""

from __future__ import annotations

from collections import defaultdict

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
    """Completed and failed jobs counted by the month they ended in (YYYY-MM, UTC)."""
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
    counts: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    with db.session() as session:
        for hospital, name, product, state, ended_at, size in session.execute(query):
            if ended_at is None:
                continue
            month = as_utc(ended_at).strftime("%Y-%m")
            if (since and month < since) or (until and month > until):
                continue
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
