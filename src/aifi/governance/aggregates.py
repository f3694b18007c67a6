"""Evaluation and drift counted by the database, so a national year of jobs (about eleven
million) never crosses into Python one row at a time.

What comes back is small: a tally per product × hospital (and per version, when asked), the
turnaround percentiles per group (PostgreSQL's `percentile_cont`; on SQLite the few ranked
turnarounds around each percentile), and a count per product × hospital × period with the
product versions that ran it (from the job's `product_version`, again without parsing a
summary). The figures themselves are then
made by :mod:`aifi.governance.evaluation` and :mod:`aifi.governance.drift`, from the same
definitions as rows counted in Python. The product's triage call is read from the job's own
column (`triage_flag`, see :mod:`aifi.exchange.triage`), so no summary is parsed here.
Seconds and periods are :mod:`aifi.exchange.sql_time`'s, the same on each database.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from sqlalchemy import ColumnElement, and_, distinct, func, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from aifi.exchange.clock import as_utc
from aifi.exchange.governance_models import EligibleCount, JobFeedback
from aifi.exchange.models import Job
from aifi.exchange.months import Months
from aifi.exchange.schemas import JobState
from aifi.exchange.sql_time import iso_week_label, month_label, seconds_between
from aifi.exchange.triage import CALLS
from aifi.governance.drift import Granularity, PeriodCount
from aifi.governance.evaluation import (
    DELIVERY_SAID,
    NATIONAL,
    UNDELIVERED,
    UNRECORDED,
    Agreement,
    Tally,
)
from aifi.governance.evaluation import EligibleCount as EligibleIn

_COMPLETED = JobState.completed.value
_FAILED = (JobState.failed.value, JobState.expired.value)
_QUANTILES = {"p50": 0.5, "p95": 0.95}
#: Failed or expired, but not after the exchange lost images of the study (evaluation's
#: failure rate leaves those out).
_FAILED_BY_PRODUCT = and_(Job.state.in_(_FAILED), Job.inputs_lost_at.is_(None))
#: Failed or expired after the exchange lost images of the study: counted apart.
_IMAGES_LOST = and_(Job.state.in_(_FAILED), Job.inputs_lost_at.is_not(None))
_POSITIVE = Job.triage_flag.in_([flag for flag, call in CALLS.items() if call])
_NEGATIVE = Job.triage_flag.in_([flag for flag, call in CALLS.items() if not call])
#: A tally's counts, in the order the tally query selects them.
_COUNTS = (
    "volume",
    "completed",
    "failed",
    "ended",
    "images_lost",
    "undelivered",
    "delivery_said",
    "feedback",
    "agree",
    "partly",
    "disagree",
    "true_positives",
    "false_negatives",
    "false_positives",
)


#: A tally's scope: product, hospital (or NATIONAL), and version (None: all versions).
Scope = tuple[str, str, str | None]


def tallies(
    session: Session, months: Months = Months(), *, by_version: bool = False
) -> list[Tally]:
    """A tally per product × hospital and per product nationally (hospital NATIONAL), of the
    jobs requested in `months` (by `created_at`, as volume counts them); `by_version`: per
    product version too."""
    verdict = JobFeedback.radiologist_positive
    count = func.count
    statement = (
        select(
            *_groups(by_version, national=False),
            func.min(Job.created_at),
            func.max(Job.created_at),
            count(distinct(Job.study_uid)),
            count().filter(Job.state == _COMPLETED),
            count().filter(_FAILED_BY_PRODUCT),
            count().filter(or_(Job.state == _COMPLETED, _FAILED_BY_PRODUCT)),
            count().filter(_IMAGES_LOST),
            count().filter(Job.state == _COMPLETED, Job.delivery.in_(sorted(UNDELIVERED))),
            count().filter(Job.state == _COMPLETED, Job.delivery.in_(sorted(DELIVERY_SAID))),
            count(JobFeedback.job_id),
            *(count().filter(JobFeedback.agreement == a.value) for a in Agreement),
            count().filter(verdict.is_(True), _POSITIVE),
            count().filter(verdict.is_(True), _NEGATIVE),
            count().filter(verdict.is_(False), _POSITIVE),
        )
        .outerjoin(JobFeedback, JobFeedback.job_id == Job.id)
        .where(*months.where(Job.created_at))
        .group_by(*_groups(by_version, national=False))
    )
    local: dict[Scope, Tally] = {}
    for row in session.execute(statement):
        scope = _scope(row, by_version, national=False)
        first, last, *figures = row[len(_groups(by_version, national=False)) :]
        local[scope] = Tally(
            *scope,
            **dict(zip(_COUNTS, figures, strict=True)),
            first_requested_at=as_utc(first),
            last_requested_at=as_utc(last),
        )
    national: dict[Scope, Tally] = {}
    for (product_id, _hospital_id, version), counted in local.items():
        pooled = national.setdefault(
            (product_id, NATIONAL, version), Tally(product_id, NATIONAL, version)
        )
        for field in _COUNTS:
            setattr(pooled, field, getattr(pooled, field) + getattr(counted, field))
        firsts = (pooled.first_requested_at, counted.first_requested_at)
        lasts = (pooled.last_requested_at, counted.last_requested_at)
        pooled.first_requested_at = min(filter(None, firsts), default=None)
        pooled.last_requested_at = max(filter(None, lasts), default=None)
    for scoped, national_scope in ((local, False), (national, True)):
        turnarounds = _turnarounds(session, months, by_version, national=national_scope)
        for scope, (p50, p95) in turnarounds.items():
            scoped[scope].turnaround_p50_seconds, scoped[scope].turnaround_p95_seconds = p50, p95
    return [*local.values(), *national.values()]


def _groups(by_version: bool, *, national: bool) -> list[Any]:
    """The columns a tally's rows are grouped by."""
    groups: list[Any] = [Job.product_id]
    if not national:
        groups.append(Job.hospital_id)
    if by_version:
        groups.append(Job.product_version)  # null: not kept (UNRECORDED)
    return groups


def _scope(row: Any, by_version: bool, *, national: bool) -> Scope:
    """The scope of a row that starts with `_groups`' columns."""
    hospital = NATIONAL if national else row[1]
    version = None
    if by_version:
        version = row[1 if national else 2]
        version = UNRECORDED if version is None else version
    return (row[0], hospital, version)


def _turnarounds(
    session: Session, months: Months, by_version: bool, *, national: bool
) -> dict[Scope, tuple[float, float]]:
    """p50 and p95 of ready → completed per product × hospital (or per product; and per
    version, `by_version`), by linear interpolation between order statistics, as
    :func:`aifi.governance.evaluation.percentile` does and PostgreSQL's `percentile_cont` is
    defined."""
    groups = _groups(by_version, national=national)
    completed = (
        Job.state == _COMPLETED,
        Job.ready_at.is_not(None),
        Job.ended_at.is_not(None),
        *months.where(Job.created_at),
    )
    seconds = seconds_between(Job.ready_at, Job.ended_at)
    if session.get_bind().dialect.name == "postgresql":
        quantiles = func.percentile_cont(postgresql.array(list(_QUANTILES.values())))
        statement = (
            select(*groups, quantiles.within_group(seconds).label("quantiles"))
            .where(*completed)
            .group_by(*groups)
        )
        return {
            _scope(row, by_version, national=national): (
                float(row.quantiles[0]),
                float(row.quantiles[1]),
            )
            for row in session.execute(statement)
        }
    return _turnarounds_by_rank(
        session, groups, completed, seconds, by_version=by_version, national=national
    )


def _turnarounds_by_rank(
    session: Session,
    groups: list[Any],
    completed: tuple[ColumnElement[bool], ...],
    seconds: seconds_between,
    *,
    by_version: bool,
    national: bool,
) -> dict[Scope, tuple[float, float]]:
    """Where the database has no `percentile_cont` (SQLite): it ranks each group's
    turnarounds and hands back only the few ranks around each percentile's position, and
    Python interpolates between the two it needs."""
    labelled = [group.label(f"group_{n}") for n, group in enumerate(groups)]
    ranked = (
        select(
            *labelled,
            seconds.label("seconds"),
            (func.row_number().over(partition_by=groups, order_by=seconds) - 1).label("rank"),
            func.count().over(partition_by=groups).label("n"),
        )
        .where(*completed)
        .subquery()
    )
    # The ranks within two of each position: both its neighbours, also when it is whole.
    near = or_(
        *(
            and_(ranked.c.rank > (ranked.c.n - 1) * q - 2, ranked.c.rank < (ranked.c.n - 1) * q + 2)
            for q in _QUANTILES.values()
        )
    )
    keys = [ranked.c[f"group_{n}"] for n in range(len(groups))]
    statement = select(*keys, ranked.c.n, ranked.c.rank, ranked.c.seconds).where(near)
    picked: dict[Scope, dict[int, float]] = defaultdict(dict)
    sizes: dict[Scope, int] = {}
    for row in session.execute(statement):
        scope = _scope(row, by_version, national=national)
        n, rank, value = row[-3:]
        picked[scope][int(rank)] = float(value)
        sizes[scope] = int(n)
    return {
        scope: (
            _interpolate(values, sizes[scope], _QUANTILES["p50"]),
            _interpolate(values, sizes[scope], _QUANTILES["p95"]),
        )
        for scope, values in picked.items()
    }


def _interpolate(values: dict[int, float], n: int, q: float) -> float:
    """The q-quantile of n sorted values of which those near its position are given."""
    position = (n - 1) * q
    below = math.floor(position)
    above = min(below + 1, n - 1)
    fraction = position - below
    return values[below] + (values[above] - values[below]) * fraction


def eligible(session: Session, months: Months = Months()) -> list[EligibleIn]:
    """Each hospital's eligible studies per product, summed over the months of `months` it
    reported."""
    statement = (
        select(EligibleCount.product_id, EligibleCount.hospital_id, func.sum(EligibleCount.studies))
        .where(*months.where_month(EligibleCount.month))
        .group_by(EligibleCount.product_id, EligibleCount.hospital_id)
    )
    return [
        EligibleIn(product_id=product_id, hospital_id=hospital_id, studies=int(studies))
        for product_id, hospital_id, studies in session.execute(statement)
    ]


def period_counts(
    session: Session,
    granularity: Granularity | str = Granularity.month,
    months: Months = Months(),
) -> dict[tuple[str, str], list[PeriodCount]]:
    """The studies of completed jobs with a triage flag, how many were positive, and the
    product versions that ran them, per product × hospital and period (by end), as
    :func:`aifi.governance.drift.positive_counts` counts them; of the jobs that ended in
    `months`."""
    week = Granularity(granularity) == Granularity.week
    period = iso_week_label(Job.ended_at) if week else month_label(Job.ended_at)
    postgresql = session.get_bind().dialect.name == "postgresql"
    # Each period's versions in the same pass: a list on PostgreSQL, a JSON array on SQLite.
    versions = (func.array_agg if postgresql else func.json_group_array)(
        distinct(Job.product_version)
    )
    statement = (
        select(
            Job.product_id,
            Job.hospital_id,
            period,
            func.count(distinct(Job.study_uid)),
            func.count(distinct(Job.study_uid)).filter(_POSITIVE),
            versions,
        )
        .where(
            Job.state == _COMPLETED,
            Job.ended_at.is_not(None),
            Job.triage_flag.in_(CALLS),
            *months.where(Job.ended_at),
        )
        .group_by(Job.product_id, Job.hospital_id, period)
    )
    counts: dict[tuple[str, str], list[PeriodCount]] = defaultdict(list)
    rows = [(*row[:5], _versions(row[5], postgresql)) for row in session.execute(statement)]
    # In period order, sorted here: a server's collation may order labels otherwise.
    for product_id, hospital_id, label, studies, positives, ran in sorted(rows):
        counts[(product_id, hospital_id)].append(
            PeriodCount(period=label, studies=studies, positives=positives, versions=ran)
        )
    return dict(counts)


def _versions(aggregated: Any, postgresql: bool) -> list[str]:
    """A period's recorded versions as `period_counts` aggregates them, sorted."""
    named = aggregated if postgresql else json.loads(aggregated)
    return sorted({str(v) for v in named if v is not None})


__all__ = ["eligible", "period_counts", "tallies"]
