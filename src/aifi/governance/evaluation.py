"""How each product does in daily practice, per hospital and nationally, from plain rows.

The exchange feeds three kinds of row: its jobs (state, timestamps, the product's triage flag),
the radiologists' feedback on them (agree, partly, disagree, and their own verdict), and the
gateway's count of eligible studies. Every figure has one definition for every hospital, and
proportions carry a Wilson 95 % interval with their counts, so a small hospital's 100 % and a
large one's 92 % can be told apart honestly.

Definitions
-----------
volume
    Studies routed to the product: the distinct studies of the jobs created. A study sent
    again (the exchange's store lost its images or results, the gateway started a stuck job
    over, or more images came) is one study however many jobs it took; each hospital's
    studies are its own (their pseudonymised UIDs), and the national volume is the sum.
uptake
    Studies routed / studies eligible (the gateway's count of studies matching the product's
    criteria). National uptake pools only hospitals that report an eligible count.
failure rate
    (failed + expired) / ended jobs; cancelled jobs are the hospital's choice and left out,
    and so are jobs that failed or expired after the exchange lost images of their study from
    its store (`inputs_lost_at`): the product was never given them. Those are counted apart
    (images lost), so that they are seen.
results not delivered
    Completed jobs whose results the hospital's gateway could not put in the PACS (it could
    not file them as they are, nor map them back to the patient's study, or the exchange
    purged them before it fetched them) / completed jobs whose gateway said, as it
    acknowledged them, what became of their results. Jobs the hospital let go are its choice
    and left out, as are jobs not acknowledged yet or acknowledged by a gateway too old to
    say.
turnaround
    Seconds from the job being ready (all inputs uploaded) to its completion, over completed
    jobs; p50 and p95 by linear interpolation between order statistics (numpy's default).
agreement
    Shares of feedback that agree, partly agree and disagree with the product's result.
sensitivity, PPV
    Against the radiologist's verdict, over jobs with both a verdict and a product flag:
    TP / (TP + FN) and TP / (TP + FP).

Per version
-----------
Asked for, each figure is also counted per product version: the version that produced a
job's result (its summary names it), or the one that failed it (its worker names it), else
the catalogue's version when the job was created.
A new version re-opens admission, and its figures in practice are its own: pooled with the
version before, a change for the worse would be diluted by a year of the old one. A study that
two versions read counts in the volume of each. Uptake is not counted per version: hospitals
report eligible studies per product. Jobs without a version are counted under
:data:`UNRECORDED`: created before the exchange kept versions (or by a replica of the previous
release), with neither a summary nor a failing worker naming a version a job can keep, or with
a summary the exchange's sweep has not read yet. Each version's row also says whether, and
since when, the catalogue has a record of the vendor publishing it (:func:`with_releases`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from statistics import NormalDist
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from aifi.exchange.schemas import JobState
from aifi.exchange.triage import triage_call
from aifi.results.delivery import Delivery

#: Label of the pooled rows in place of a hospital id.
NATIONAL = "national"
#: The version of a row of jobs whose version was not kept (no catalogue version is empty).
UNRECORDED = ""

#: The normal quantile of a two-sided 95 % interval.
_Z95 = NormalDist().inv_cdf(0.975)
_FAILED = frozenset({JobState.failed.value, JobState.expired.value})
_ENDED = _FAILED | {JobState.completed.value}
#: What a gateway said of a completed job's results that evaluation counts: not a let-go (the
#: hospital's choice), nor results the exchange's store lost (the study is sent again).
UNDELIVERED = frozenset({Delivery.unfileable.value, Delivery.unmapped.value, Delivery.purged.value})
DELIVERY_SAID = UNDELIVERED | {Delivery.delivered.value}


class Agreement(StrEnum):
    """The radiologist's judgement of a product's result."""

    agree = "agree"
    partly = "partly"
    disagree = "disagree"


class JobRecord(BaseModel):
    """One job as evaluation needs it (a row of the exchange's jobs table)."""

    job_id: str
    product_id: str
    hospital_id: str
    state: str
    ready_at: datetime | None = None
    ended_at: datetime | None = None
    ai_positive: bool | None = Field(
        default=None, description="The product's triage flag; None when it gives none."
    )
    delivery: str | None = Field(
        default=None,
        description="What became of its results at the hospital, as its gateway said "
        "(aifi.results.delivery); None before then.",
    )
    inputs_lost: bool = Field(
        default=False,
        description="The exchange found images of its study missing from its store: if the "
        "job failed or expired, that was the exchange's doing, not the product's.",
    )
    study_uid: str = Field(
        default="",
        description="The study's (pseudonymised) UID, by which volume counts a study sent "
        "again once; empty counts the job as a study of its own.",
    )
    product_version: str | None = Field(
        default=None,
        description="The product version that ran it (Job.product_version); None when not kept.",
    )
    created_at: datetime | None = Field(
        default=None,
        description="When the hospital requested it: the first and last request of each row, "
        "and the order of a product's versions, are read from it.",
    )

    @classmethod
    def from_job(cls, job: Mapping[str, Any]) -> JobRecord:
        """From a job as the API returns it (JobOut fields); the call comes from its summary."""
        return cls(
            job_id=str(job["id"]),
            product_id=str(job["product_id"]),
            hospital_id=str(job["hospital_id"]),
            state=str(job["state"]),
            ready_at=job.get("ready_at"),
            ended_at=job.get("ended_at"),
            ai_positive=triage_call(job.get("summary")),
            delivery=job.get("delivery"),
            inputs_lost=job.get("inputs_lost_at") is not None,
            study_uid=str(job.get("study_uid") or ""),
            product_version=job.get("product_version"),
            created_at=job.get("created_at"),
        )


class Feedback(BaseModel):
    """A radiologist's feedback on one job's result."""

    job_id: str
    agreement: Agreement
    radiologist_positive: bool | None = Field(
        default=None, description="The radiologist's verdict: is the finding there?"
    )


class EligibleCount(BaseModel):
    """How many studies at a hospital matched the product's criteria (from its gateway)."""

    product_id: str
    hospital_id: str
    studies: int = Field(ge=0)


class Proportion(BaseModel):
    """k of n, with a Wilson 95 % confidence interval (None when n is 0)."""

    numerator: int
    denominator: int
    value: float | None
    ci_low: float | None
    ci_high: float | None

    @classmethod
    def of(cls, numerator: int, denominator: int) -> Proportion:
        if denominator <= 0:
            return cls(
                numerator=numerator, denominator=denominator, value=None, ci_low=None, ci_high=None
            )
        value = numerator / denominator
        if not 0 <= numerator <= denominator:  # e.g. more studies routed than counted eligible
            return cls(
                numerator=numerator, denominator=denominator, value=value, ci_low=None, ci_high=None
            )
        # The Wilson score interval, written out: scipy's binomtest gives the same bounds at
        # about 0.5 ms a call, and a national page has thousands of proportions.
        z2 = _Z95 * _Z95
        scale = 1 + z2 / denominator
        centre = (value + z2 / (2 * denominator)) / scale
        half = _Z95 * math.sqrt(value * (1 - value) / denominator + z2 / (4 * denominator**2))
        return cls(
            numerator=numerator,
            denominator=denominator,
            value=value,
            ci_low=max(0.0, centre - half / scale),
            ci_high=min(1.0, centre + half / scale),
        )


class ProductEvaluation(BaseModel):
    """One product at one hospital (or nationally, hospital_id == NATIONAL), over all its
    versions or one of them."""

    product_id: str
    hospital_id: str
    product_version: str | None = Field(
        default=None,
        description="the version these figures are of, when counted per version (empty: "
        "jobs whose version was not kept); null: all versions",
    )
    first_requested_on: date | None = Field(
        default=None,
        description="the day (UTC) the first job counted here was requested; a day, not a "
        "moment: national rows are seen by every hospital",
    )
    last_requested_on: date | None = Field(
        default=None, description="the day (UTC) the last job counted here was requested"
    )
    in_catalogue: bool | None = Field(
        default=None,
        description="per version: whether the catalogue has a record of the vendor "
        "publishing this version (false: most often only result summaries or failing "
        "workers name it, a version never put up for review, or a name that splits one "
        "version over two rows; docs/clinical-pillar.md says when a publication left no "
        "record); null: all versions, or the version was not recorded",
    )
    published_on: date | None = Field(
        default=None,
        description="per version: the day (UTC) the vendor first published it in the catalogue",
    )
    volume: int
    eligible: int | None
    uptake: Proportion | None
    completed: int
    failed: int
    failure_rate: Proportion
    images_lost: int = Field(
        default=0,
        description="jobs that failed or expired after the exchange lost images of their "
        "study from its store: left out of failed and failure_rate, counted here so that "
        "they are seen",
    )
    undelivered: Proportion = Field(
        description="completed jobs whose results did not reach the PACS, of those whose "
        "gateway said what became of them"
    )
    turnaround_p50_seconds: float | None
    turnaround_p95_seconds: float | None
    feedback: int
    agree: Proportion
    partly: Proportion
    disagree: Proportion
    sensitivity: Proportion
    ppv: Proportion


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100) by linear interpolation; None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def turnaround_seconds(job: JobRecord) -> float | None:
    """Ready → completed, in seconds; None for a job that did not complete."""
    if job.state != JobState.completed.value or job.ready_at is None or job.ended_at is None:
        return None
    return (job.ended_at - job.ready_at).total_seconds()


@dataclass(slots=True)
class Tally:
    """The counts behind one row of figures: one product at one hospital, or nationally.

    Counted from rows here (:func:`tally`) or by the database
    (:mod:`aifi.governance.aggregates`); either way the figures come from :func:`evaluations`,
    so each definition is written once.
    """

    product_id: str
    hospital_id: str
    #: The version counted (UNRECORDED: not kept); None: all versions.
    product_version: str | None = None
    volume: int = 0
    completed: int = 0
    failed: int = 0
    ended: int = 0
    images_lost: int = 0
    undelivered: int = 0
    delivery_said: int = 0
    feedback: int = 0
    agree: int = 0
    partly: int = 0
    disagree: int = 0
    true_positives: int = 0
    false_negatives: int = 0
    false_positives: int = 0
    turnaround_p50_seconds: float | None = None
    turnaround_p95_seconds: float | None = None
    first_requested_at: datetime | None = None
    last_requested_at: datetime | None = None


def evaluate(
    jobs: Iterable[JobRecord],
    feedback: Iterable[Feedback] = (),
    eligible: Iterable[EligibleCount] = (),
    *,
    by_version: bool = False,
) -> list[ProductEvaluation]:
    """Per product × hospital, then each product nationally (`by_version`: per product
    version too); ordered as :func:`evaluations` orders them."""
    by_job = {f.job_id: f for f in feedback}
    groups: dict[tuple[str, str, str | None], list[JobRecord]] = defaultdict(list)
    for job in jobs:
        version = (job.product_version or UNRECORDED) if by_version else None
        groups[(job.product_id, job.hospital_id, version)].append(job)
        groups[(job.product_id, NATIONAL, version)].append(job)
    return evaluations(
        [tally(p, h, scoped, by_job, version=v) for (p, h, v), scoped in groups.items()], eligible
    )


def evaluations(
    tallies: Iterable[Tally], eligible: Iterable[EligibleCount] = ()
) -> list[ProductEvaluation]:
    """The figures of each tally: hospitals by product and hospital, then each product's
    national row (hospital_id == NATIONAL), whose uptake pools only the hospitals that report
    an eligible count. Per version, each product's versions follow one another in the order
    they were first requested, and have no uptake (eligible studies are counted per
    product)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for reported in eligible:
        counts[(reported.product_id, reported.hospital_id)] += reported.studies
    every = list(tallies)
    local = sorted((t for t in every if t.hospital_id != NATIONAL), key=_order)
    rows = [_evaluation(t, _eligible_of(t, counts)) for t in local]
    for national in sorted((t for t in every if t.hospital_id == NATIONAL), key=_order):
        row = _evaluation(national, None)
        reporting = {h for (p, h) in counts if p == national.product_id}
        if reporting and national.product_version is None:
            routed = sum(
                t.volume
                for t in local
                if t.product_id == national.product_id
                and t.hospital_id in reporting
                and t.product_version is None
            )
            row.eligible = sum(n for (p, _h), n in counts.items() if p == national.product_id)
            row.uptake = Proportion.of(routed, row.eligible)
        rows.append(row)
    return rows


def with_releases(
    rows: Iterable[ProductEvaluation], published: Mapping[tuple[str, str], datetime]
) -> list[ProductEvaluation]:
    """`rows` per version, each saying whether, and when first, the vendor published its
    version in the catalogue (`published`: the first moment of each product's versions)."""
    said = []
    for row in rows:
        if row.product_version:  # neither all versions nor not recorded
            first = published.get((row.product_id, row.product_version))
            row = row.model_copy(update={"in_catalogue": first is not None,
                                         "published_on": _day(first)})  # fmt: skip
        said.append(row)
    return said


def _order(counted: Tally) -> tuple[Any, ...]:
    """Products, hospitals, then a product's versions in the order each was first requested
    (ties: by name)."""
    first = counted.first_requested_at
    return (
        counted.product_id,
        counted.hospital_id,
        first is None,
        first or datetime.min,
        counted.product_version or "",
    )


def _eligible_of(counted: Tally, counts: Mapping[tuple[str, str], int]) -> int | None:
    if counted.product_version is not None:
        return None  # counted per product, not per version
    return counts.get((counted.product_id, counted.hospital_id))


def tally(
    product_id: str,
    hospital_id: str,
    jobs: Sequence[JobRecord],
    feedback: Mapping[str, Feedback],
    *,
    version: str | None = None,
) -> Tally:
    """Count `jobs` (one product's, at one hospital or all; of one `version`, or of all when
    None) with their feedback."""
    times = [t for j in jobs if (t := turnaround_seconds(j)) is not None]
    notes = [feedback[j.job_id] for j in jobs if j.job_id in feedback]
    requested = [j.created_at for j in jobs if j.created_at is not None]
    counted = Tally(
        product_id=product_id,
        hospital_id=hospital_id,
        product_version=version,
        volume=len({(j.hospital_id, j.study_uid or j.job_id) for j in jobs}),
        completed=sum(1 for j in jobs if j.state == JobState.completed.value),
        failed=sum(1 for j in jobs if j.state in _FAILED and not j.inputs_lost),
        ended=sum(1 for j in jobs if j.state in _ENDED and not _images_lost(j)),
        images_lost=sum(1 for j in jobs if _images_lost(j)),
        undelivered=sum(1 for j in jobs if _completed_as(j, UNDELIVERED)),
        delivery_said=sum(1 for j in jobs if _completed_as(j, DELIVERY_SAID)),
        feedback=len(notes),
        agree=sum(1 for f in notes if f.agreement == Agreement.agree),
        partly=sum(1 for f in notes if f.agreement == Agreement.partly),
        disagree=sum(1 for f in notes if f.agreement == Agreement.disagree),
        turnaround_p50_seconds=percentile(times, 50),
        turnaround_p95_seconds=percentile(times, 95),
        first_requested_at=min(requested, default=None),
        last_requested_at=max(requested, default=None),
    )
    for job in jobs:
        note = feedback.get(job.job_id)
        if note is None or note.radiologist_positive is None or job.ai_positive is None:
            continue
        if note.radiologist_positive and job.ai_positive:
            counted.true_positives += 1
        elif note.radiologist_positive:
            counted.false_negatives += 1
        elif job.ai_positive:
            counted.false_positives += 1
    return counted


def _images_lost(job: JobRecord) -> bool:
    """The job failed or expired because the exchange lost images of its study: not the
    product's failure, nor one of its ends."""
    return job.state in _FAILED and job.inputs_lost


def _completed_as(job: JobRecord, said: frozenset[str]) -> bool:
    return job.state == JobState.completed.value and job.delivery in said


def _day(moment: datetime | None) -> date | None:
    return None if moment is None else moment.astimezone(UTC).date()


def _evaluation(counted: Tally, eligible: int | None) -> ProductEvaluation:
    tp, fn, fp = counted.true_positives, counted.false_negatives, counted.false_positives
    return ProductEvaluation(
        product_id=counted.product_id,
        hospital_id=counted.hospital_id,
        product_version=counted.product_version,
        first_requested_on=_day(counted.first_requested_at),
        last_requested_on=_day(counted.last_requested_at),
        volume=counted.volume,
        eligible=eligible,
        uptake=None if eligible is None else Proportion.of(counted.volume, eligible),
        completed=counted.completed,
        failed=counted.failed,
        failure_rate=Proportion.of(counted.failed, counted.ended),
        images_lost=counted.images_lost,
        undelivered=Proportion.of(counted.undelivered, counted.delivery_said),
        turnaround_p50_seconds=counted.turnaround_p50_seconds,
        turnaround_p95_seconds=counted.turnaround_p95_seconds,
        feedback=counted.feedback,
        agree=Proportion.of(counted.agree, counted.feedback),
        partly=Proportion.of(counted.partly, counted.feedback),
        disagree=Proportion.of(counted.disagree, counted.feedback),
        sensitivity=Proportion.of(tp, tp + fn),
        ppv=Proportion.of(tp, tp + fp),
    )
