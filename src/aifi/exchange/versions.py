"""The product version that ran each job, kept on the job so that evaluation can count a new
version apart from the one before (`aifi.governance.evaluation`, *Per version*).

A job is created for the catalogue's version; when it completes with a summary, it takes the
version the summary names, the one that produced the result, and is marked read
(`Job.version_read`). Summaries stored before the exchange kept versions, and those a replica
of an earlier release stores during a rolling upgrade, are read afterwards by a sweep, a batch
at a time, so that neither an upgrade nor a sweep rewrites a national table of jobs in one
transaction. Each batch reads only the version's JSON value (whole summaries, `WHOLE` at a
time, where the database cannot take it out), and takes it by the same rule
(`summary_version`) as a job completing now. (SQLite hands a value back cut at a NUL: a
version stored with one before summaries were checked is read up to it there.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import String, and_, bindparam, func, select, update
from sqlalchemy.exc import DBAPIError

from aifi.exchange.db import Database, execute_core
from aifi.exchange.models import Job
from aifi.product_versions import VERSION_MAX, kept_version

log = logging.getLogger(__name__)

#: Summaries read per transaction by the sweep: each batch's rows are held (on PostgreSQL)
#: while their versions are read, milliseconds for summaries of a few kB.
BATCH = 1_000
#: Whole summaries read per transaction where a batch's versions could not be taken out.
WHOLE = 100
#: Jobs with a summary whose version is not read yet (a partial index holds only these).
UNREAD = and_(Job.summary.is_not(None), Job.version_read.is_(None))

#: Run on the connection (`execute_core`), once per batch with a row of values per job.
_READ = (
    update(Job)
    .where(Job.id == bindparam("job_id"), Job.version_read.is_(None))
    .values(
        product_version=func.coalesce(
            bindparam("named", type_=String(VERSION_MAX)), Job.product_version
        ),
        version_read=True,
    )
)


def summary_version(summary: Mapping[str, object]) -> str | None:
    """The product version a summary names, if it names one a job can keep."""
    return kept_version(summary.get("product_version"))


def read_unread_versions(db: Database, batch: int = BATCH) -> int:
    """Give every job whose summary's version is not read yet that version (or keep the one
    it was created for), a batch per transaction; returns how many were read. Cheap when
    there are none. On PostgreSQL replicas sweeping at once take different rows.

    A summary stored before summaries were checked may hold what the database cannot take a
    value out of (PostgreSQL: a NUL or a lone surrogate anywhere in it; SQLite: a lone
    surrogate in the version). Such a batch is read again whole, `WHOLE` summaries at a time,
    by Python's JSON parser, so that one summary never stops the sweep."""
    read = 0
    while True:
        try:
            done = _read_batch(db, batch, whole=False)
        except DBAPIError as exc:
            log.info("product versions: a batch is read whole (%s)", type(exc.orig).__name__)
            done = _read_batch(db, WHOLE, whole=True)
            read += done
            if done == WHOLE:
                continue  # the batch that failed may hold more: try the fast way again
            return read
        read += done
        if done < batch:
            return read


def _read_batch(db: Database, batch: int, *, whole: bool) -> int:
    """Read one batch: the version's JSON value alone, or (`whole`) the whole summaries."""
    with db.session() as session:
        column = Job.summary if whole else Job.summary["product_version"]
        unread = select(Job.id, column).where(UNREAD).limit(batch)
        if db.is_postgresql:
            unread = unread.with_for_update(skip_locked=True, of=Job)
        rows = session.execute(unread).all()
        if rows:
            execute_core(
                session,
                _READ,
                [{"job_id": job_id, "named": _named(value, whole)} for job_id, value in rows],
            )
        return len(rows)


def _named(value: Any, whole: bool) -> str | None:
    if whole:
        return summary_version(value) if isinstance(value, Mapping) else None
    return kept_version(value)
