"""The product's triage call, read from a result summary as the exchange stores it.

Evaluation (sensitivity, PPV) and drift (the positive rate) count this call over every job of
a year, so each job keeps it in a column of its own (`Job.triage_flag`) rather than have
eleven million summaries parsed per page. The job gets it as it completes; a job completed by
a replica of an earlier release (during a rolling upgrade) gets it from the next sweep.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import case, update

from aifi.exchange.db import Database
from aifi.exchange.models import Job

#: The flags of :class:`aifi.results.summary.TriageFlag` that make a call; any other flag, or
#: none, is kept as "none". Spelled out so the exchange need not import the results package.
CALLS = {"positive": True, "negative": False}
NO_CALL = "none"


def triage_flag(summary: Mapping[str, object]) -> str:
    """The flag as the job keeps it: positive, negative, or none (also for no triage, or a
    flag the summary schema does not know)."""
    triage = summary.get("triage")
    flag = triage.get("flag") if isinstance(triage, Mapping) else None
    return flag if isinstance(flag, str) and flag in CALLS else NO_CALL


def triage_call(summary: Mapping[str, object] | None) -> bool | None:
    """True for a positive flag, False for a negative one, None for no call or no summary."""
    return None if summary is None else CALLS.get(triage_flag(summary))


def read_unread_flags(db: Database) -> int:
    """Give every job that has a summary but no flag yet its flag, read by the database;
    returns how many. Cheap when there are none: a partial index holds only such jobs."""
    flag = Job.summary[("triage", "flag")].as_string()
    read = case(*((flag == call, call) for call in CALLS), else_=NO_CALL)
    with db.session() as session:
        result = session.execute(
            update(Job)
            .where(Job.triage_flag.is_(None), Job.summary.is_not(None))
            .values(triage_flag=read)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)
