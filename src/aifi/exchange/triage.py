"""What the exchange reads of a result summary into the job's own columns: the product's
triage call, and the product version that produced the result.

Evaluation (sensitivity, PPV, and each figure per version) and drift (the positive rate)
count these over every job of a year, so each job keeps them in columns of its own
(`Job.triage_flag`, `Job.product_version`) rather than have eleven million summaries parsed
per page. The job gets them as it completes; a job completed by a replica of an earlier
release (during a rolling upgrade) gets them from the next sweep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, update

from aifi.exchange.db import Database
from aifi.exchange.models import Job

#: The flags of :class:`aifi.results.summary.TriageFlag` that make a call; any other flag, or
#: none, is kept as "none". Spelled out so the exchange need not import the results package.
CALLS = {"positive": True, "negative": False}
NO_CALL = "none"
#: The longest product version a job keeps, as the catalogue allows it.
VERSION_MAX = 64


def triage_flag(summary: Mapping[str, object]) -> str:
    """The flag as the job keeps it: positive, negative, or none (also for no triage, or a
    flag the summary schema does not know)."""
    triage = summary.get("triage")
    flag = triage.get("flag") if isinstance(triage, Mapping) else None
    return flag if isinstance(flag, str) and flag in CALLS else NO_CALL


def triage_call(summary: Mapping[str, object] | None) -> bool | None:
    """True for a positive flag, False for a negative one, None for no call or no summary."""
    return None if summary is None else CALLS.get(triage_flag(summary))


def summary_version(summary: Mapping[str, object]) -> str | None:
    """The product version a summary names, if it names one a job can keep (the summary
    schema requires it; older summaries may not)."""
    version = summary.get("product_version")
    return version if isinstance(version, str) and 0 < len(version) <= VERSION_MAX else None


def read_unread_flags(db: Database) -> int:
    """Give every job that has a summary but no flag yet its flag and its summary's version,
    read by the database; returns how many. Cheap when there are none: a partial index holds
    only such jobs."""
    flag = Job.summary[("triage", "flag")].as_string()
    read = case(*((flag == call, call) for call in CALLS), else_=NO_CALL)
    with db.session() as session:
        result = session.execute(
            update(Job)
            .where(Job.triage_flag.is_(None), Job.summary.is_not(None))
            .values(triage_flag=read, product_version=read_version())
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)


def read_version() -> ColumnElement[Any]:
    """The version as the database reads it from the job's summary (`summary_version`'s rule),
    else the one the job already has."""
    named = Job.summary["product_version"].as_string()
    fits = and_(func.length(named) > 0, func.length(named) <= VERSION_MAX)
    return case((fits, named), else_=Job.product_version)
