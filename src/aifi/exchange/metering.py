"""Usage per hospital × product × month: what the business case is computed from."""

from __future__ import annotations

from sqlalchemy import distinct, func, select

from aifi.exchange.audit import Actor
from aifi.exchange.db import Database
from aifi.exchange.jobs import visible_to
from aifi.exchange.models import Job, Organisation
from aifi.exchange.months import Months
from aifi.exchange.schemas import JobState, MeteringRow
from aifi.exchange.sql_time import month_label


def metering_rows(db: Database, actor: Actor, months: Months) -> list[MeteringRow]:
    """Completed and failed jobs counted by the month they ended in (YYYY-MM, UTC), for
    the jobs that ended in `months`, and the studies the completed ones were of: a study
    sent again (its results lost by the exchange's store, its job started over, more images
    come) is one study analysed in a month however many jobs it took there, which is what
    a business case's volume means.

    The database selects the months asked for (through the index on `ended_at`) and counts
    them: the jobs table keeps every job ever, about eleven million a year nationally, and
    what comes back is one row per hospital × product × month.
    """
    month = month_label(Job.ended_at)
    completed = Job.state == JobState.completed.value
    failed = Job.state.in_((JobState.failed.value, JobState.expired.value))
    groups = (Job.hospital_id, Organisation.name, Job.product_id, month)
    query = visible_to(
        select(
            *groups,
            func.count().filter(completed),
            func.count(distinct(Job.study_uid)).filter(completed),
            func.count().filter(failed),
            func.coalesce(func.sum(Job.input_bytes).filter(completed), 0),
        )
        .join(Organisation, Organisation.id == Job.hospital_id)
        .where(Job.ended_at.is_not(None), *months.where(Job.ended_at)),
        actor,
    )
    with db.session() as session:
        rows = session.execute(query.group_by(*groups)).all()
    # Ordered here, not by the database: a server's collation may order ids otherwise.
    return [
        MeteringRow(
            hospital=hospital,
            hospital_name=name,
            product=product,
            month=ended_in,
            jobs_completed=done,
            studies_completed=studies,
            jobs_failed=failed_jobs,
            input_bytes=int(size),
        )
        for hospital, name, product, ended_in, done, studies, failed_jobs, size in sorted(rows)
    ]
