"""The product version that ran each job, kept on the job so that evaluation can count a new
version apart from the one before (`aifi.governance.evaluation`, *Per version*).

A job is created for the catalogue's version; when it completes with a summary, it takes the
version the summary names, the one that produced the result, and is marked read
(`Job.version_read`). Summaries stored before the exchange kept versions, and those a replica
of an earlier release stores during a rolling upgrade, are read afterwards by a sweep, a batch
at a time, so that neither an upgrade nor a sweep rewrites a national table of jobs in one
transaction. Each batch reads only the version's JSON value, and takes it by the same rule
(`summary_version`) as a job completing now. (SQLite hands a value back cut at a NUL: a
version stored with one before summaries were checked is read up to it there.)
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import String, and_, bindparam, func, select, update

from aifi.exchange.db import Database, execute_core
from aifi.exchange.models import Job

#: The longest version a job keeps, as the catalogue allows it.
VERSION_MAX = 64
#: Summaries read per transaction by the sweep.
BATCH = 5_000
#: Jobs with a summary whose version is not read yet (a partial index holds only these).
UNREAD = and_(Job.summary.is_not(None), Job.version_read.is_(None))

#: Run on the connection (`execute_core`), once per batch with a row of values per job.
_READ = (
    update(Job)
    .where(Job.id == bindparam("job_id"))
    .values(
        product_version=func.coalesce(
            bindparam("named", type_=String(VERSION_MAX)), Job.product_version
        ),
        version_read=True,
    )
)


def summary_version(summary: Mapping[str, object]) -> str | None:
    """The product version a summary names, if it names one a job can keep: a string of 1 to
    64 printable characters (the exchange refuses other summaries now; older ones may hold
    anything, and PostgreSQL's text holds no NUL)."""
    version = summary.get("product_version")
    if not isinstance(version, str) or not 0 < len(version) <= VERSION_MAX:
        return None
    return version if version.isprintable() else None


def read_unread_versions(db: Database, batch: int = BATCH) -> int:
    """Give every job whose summary's version is not read yet that version (or keep the one
    it was created for), a batch per transaction; returns how many were read. Cheap when
    there are none. On PostgreSQL replicas sweeping at once take different rows."""
    read = 0
    while True:
        with db.session() as session:
            unread = select(Job.id, Job.summary["product_version"]).where(UNREAD).limit(batch)
            if db.is_postgresql:
                unread = unread.with_for_update(skip_locked=True, of=Job)
            rows = session.execute(unread).all()
            if rows:
                execute_core(
                    session,
                    _READ,
                    [
                        {"job_id": job_id, "named": summary_version({"product_version": named})}
                        for job_id, named in rows
                    ],
                )
        read += len(rows)
        if len(rows) < batch:
            return read
