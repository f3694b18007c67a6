"""Drift: the product's positive rate per period on a p-chart, with an alert outside its limits.

A p-chart (Shewhart) plots the share of positive results per period against a centre line p̄
and 3-sigma control limits that depend on each period's own number of studies:

    p̄ = Σ positives / Σ studies over the baseline periods
    limits_i = p̄ ± 3 · sqrt(p̄ (1 − p̄) / n_i), clipped to [0, 1]

A period outside its limits is a signal that the case mix, the scanners or the product changed.
The baseline is the first `baseline` periods (phase I), or every period when not given. Each
period names the product versions that ran its studies, so a signal can be laid beside the
release that came before it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from aifi.exchange.clock import as_utc
from aifi.exchange.schemas import JobState
from aifi.governance.evaluation import NATIONAL, JobRecord


class Granularity(StrEnum):
    month = "month"
    week = "week"


class PeriodCount(BaseModel):
    period: str = Field(description="e.g. 2026-03 or 2026-W09")
    studies: int = Field(ge=0)
    positives: int = Field(ge=0)
    versions: list[str] = Field(
        default_factory=list,
        description="the product versions recorded for them, sorted (jobs from before versions "
        "were kept have none)",
    )


class Signal(StrEnum):
    above = "above"
    below = "below"


class ControlPoint(BaseModel):
    period: str
    studies: int
    positives: int
    rate: float
    lower_limit: float
    upper_limit: float
    signal: Signal | None
    versions: list[str] = Field(
        default_factory=list,
        description="the product versions recorded for the period's studies",
    )


class PChart(BaseModel):
    centre: float
    sigmas: float
    baseline_periods: list[str]
    points: list[ControlPoint]

    @property
    def out_of_control(self) -> list[ControlPoint]:
        return [p for p in self.points if p.signal is not None]


class DriftAlert(BaseModel):
    product_id: str
    hospital_id: str
    period: str
    rate: float
    limit: float
    centre: float
    studies: int
    signal: Signal
    versions: list[str] = Field(
        default_factory=list, description="the product versions that ran the period's studies"
    )

    @property
    def message(self) -> str:
        side = "above the upper" if self.signal == Signal.above else "below the lower"
        where = "nationally" if self.hospital_id == NATIONAL else f"at {self.hospital_id}"
        ran = f"; {versions_named(self.versions)}" if self.versions else ""
        return (
            f"product {self.product_id} {where}: positive rate {self.rate:.3f} in {self.period} "
            f"is {side} control limit {self.limit:.3f} (centre {self.centre:.3f}, "
            f"n={self.studies}{ran})"
        )


class DriftChart(BaseModel):
    product_id: str
    hospital_id: str
    chart: PChart
    alerts: list[DriftAlert]


def versions_named(versions: Sequence[str]) -> str:
    """`version 2.0`, or `versions 1.0, 2.0`."""
    return ("version " if len(versions) == 1 else "versions ") + ", ".join(versions)


def period_of(moment: datetime, granularity: Granularity | str = Granularity.month) -> str:
    """The period label of a moment in UTC: '2026-03' per month, '2026-W09' per ISO week."""
    moment = as_utc(moment)
    if Granularity(granularity) == Granularity.week:
        year, week, _day = moment.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{moment.year}-{moment.month:02d}"


def positive_counts(
    jobs: Iterable[JobRecord], granularity: Granularity | str = Granularity.month
) -> list[PeriodCount]:
    """The studies of completed jobs with a triage flag, and how many were positive, per
    period (by end); of one product at one hospital.

    A study is counted once however many of its jobs the product completed (sent again after
    the exchange's store lost its images or results, or with more images): a p-chart's n is
    studies, and one study's two calls are not two observations of the case mix. It is
    positive if any of its calls in the period was."""
    studies: dict[str, set[str]] = defaultdict(set)
    positives: dict[str, set[str]] = defaultdict(set)
    versions: dict[str, set[str]] = defaultdict(set)
    for job in jobs:
        if job.state != JobState.completed.value or job.ai_positive is None:
            continue
        if job.ended_at is None:
            continue
        period = period_of(job.ended_at, granularity)
        study = job.study_uid or job.job_id
        studies[period].add(study)
        if job.product_version:
            versions[period].add(job.product_version)
        if job.ai_positive:
            positives[period].add(study)
    return [
        PeriodCount(
            period=p,
            studies=len(studies[p]),
            positives=len(positives[p]),
            versions=sorted(versions[p]),
        )
        for p in sorted(studies)
    ]


def p_chart(
    counts: Sequence[PeriodCount], *, baseline: int | None = None, sigmas: float = 3.0
) -> PChart:
    """The p-chart of `counts` (in period order); periods without studies are left out.

    Raises
    ------
    ValueError
        When the baseline holds no study, so there is no centre line to draw.
    """
    points = [c for c in counts if c.studies > 0]
    base = points if baseline is None else points[:baseline]
    total = sum(c.studies for c in base)
    if total == 0:
        raise ValueError("p-chart: the baseline periods hold no study")
    centre = sum(c.positives for c in base) / total
    chart_points = []
    for count in points:
        half_width = sigmas * math.sqrt(centre * (1 - centre) / count.studies)
        lower, upper = max(0.0, centre - half_width), min(1.0, centre + half_width)
        rate = count.positives / count.studies
        signal = Signal.above if rate > upper else Signal.below if rate < lower else None
        chart_points.append(
            ControlPoint(
                period=count.period,
                studies=count.studies,
                positives=count.positives,
                rate=rate,
                lower_limit=lower,
                upper_limit=upper,
                signal=signal,
                versions=count.versions,
            )
        )
    return PChart(
        centre=centre, sigmas=sigmas, baseline_periods=[c.period for c in base], points=chart_points
    )


def drift_charts(
    jobs: Iterable[JobRecord],
    *,
    granularity: Granularity | str = Granularity.month,
    baseline: int | None = None,
    sigmas: float = 3.0,
) -> list[DriftChart]:
    """A p-chart per product × hospital and per product nationally, with their alerts."""
    scopes: dict[tuple[str, str], list[JobRecord]] = defaultdict(list)
    for job in jobs:
        scopes[(job.product_id, job.hospital_id)].append(job)
    counts = {scope: positive_counts(scoped, granularity) for scope, scoped in scopes.items()}
    return charts(with_national(counts), baseline=baseline, sigmas=sigmas)


def with_national(
    counts: Mapping[tuple[str, str], Sequence[PeriodCount]],
) -> dict[tuple[str, str], list[PeriodCount]]:
    """The hospitals' counts by (product, hospital), and each product's summed per period
    under (product, NATIONAL)."""
    pooled: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    ran: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for (product_id, _hospital_id), periods in counts.items():
        for count in periods:
            total = pooled[product_id][count.period]
            total[0] += count.studies
            total[1] += count.positives
            ran[product_id][count.period].update(count.versions)
    every = {scope: list(periods) for scope, periods in counts.items()}
    for product_id, sums in pooled.items():
        every[(product_id, NATIONAL)] = [
            PeriodCount(
                period=period,
                studies=studies,
                positives=positives,
                versions=sorted(ran[product_id][period]),
            )
            for period, (studies, positives) in sorted(sums.items())
        ]
    return every


def charts(
    counts: Mapping[tuple[str, str], Sequence[PeriodCount]],
    *,
    baseline: int | None = None,
    sigmas: float = 3.0,
) -> list[DriftChart]:
    """A p-chart with its alerts for each (product, hospital) scope's counts, in period order;
    scopes without a flagged study have none."""
    drawn = []
    for (product_id, hospital_id), periods in sorted(counts.items()):
        if not any(c.studies for c in periods):
            continue
        chart = p_chart(periods, baseline=baseline, sigmas=sigmas)
        alerts = [
            DriftAlert(
                product_id=product_id,
                hospital_id=hospital_id,
                period=p.period,
                rate=p.rate,
                limit=p.upper_limit if p.signal == Signal.above else p.lower_limit,
                centre=chart.centre,
                studies=p.studies,
                signal=p.signal,
                versions=p.versions,
            )
            for p in chart.out_of_control
            if p.signal is not None
        ]
        drawn.append(
            DriftChart(product_id=product_id, hospital_id=hospital_id, chart=chart, alerts=alerts)
        )
    return drawn
