"""Evaluation in practice against small cases computed by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from aifi.governance.evaluation import (
    NATIONAL,
    Agreement,
    EligibleCount,
    Feedback,
    JobRecord,
    Proportion,
    evaluate,
    percentile,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def job(
    job_id: str,
    hospital: str,
    state: str,
    seconds: float | None = None,
    positive: bool | None = None,
    delivery: str | None = None,
) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        product_id="ich",
        hospital_id=hospital,
        state=state,
        ready_at=T0,
        ended_at=None if seconds is None else T0 + timedelta(seconds=seconds),
        ai_positive=positive,
        delivery=delivery,
    )


JOBS = [
    job("a1", "h-a", "completed", 10, True, "delivered"),  # radiologist: positive  -> TP
    job("a2", "h-a", "completed", 20, True, "unfileable"),  # radiologist: negative  -> FP
    job("a3", "h-a", "completed", 30, False, "delivered"),  # radiologist: positive -> FN
    job("a4", "h-a", "completed", 40, False),  # radiologist: negative -> TN; not said
    job("a5", "h-a", "failed", 5),
    job("a6", "h-a", "cancelled", 1),
    job("b1", "h-b", "completed", 50, True, "let_go"),  # TP
    job("b2", "h-b", "completed", 60, True, "purged"),  # TP
    job("b3", "h-b", "expired"),
]
FEEDBACK = [
    Feedback(job_id="a1", agreement=Agreement.agree, radiologist_positive=True),
    Feedback(job_id="a2", agreement=Agreement.disagree, radiologist_positive=False),
    Feedback(job_id="a3", agreement=Agreement.partly, radiologist_positive=True),
    Feedback(job_id="a4", agreement=Agreement.agree, radiologist_positive=False),
    Feedback(job_id="b1", agreement=Agreement.agree, radiologist_positive=True),
    Feedback(job_id="b2", agreement=Agreement.agree, radiologist_positive=True),
]
ELIGIBLE = [EligibleCount(product_id="ich", hospital_id="h-a", studies=12)]


@pytest.fixture
def rows() -> dict[str, object]:
    return {row.hospital_id: row for row in evaluate(JOBS, FEEDBACK, ELIGIBLE)}


def test_one_row_per_hospital_then_national(rows: dict) -> None:
    assert list(rows) == ["h-a", "h-b", NATIONAL]


def test_volume_uptake_and_failure_rate(rows: dict) -> None:
    a, b, national = rows["h-a"], rows["h-b"], rows[NATIONAL]
    assert (a.volume, a.completed, a.failed) == (6, 4, 1)
    assert a.uptake.value == 0.5 and a.eligible == 12  # 6 routed of 12 eligible
    assert a.failure_rate.value == 1 / 5  # cancelled is left out of the denominator
    assert b.uptake is None and b.failure_rate.value == 1 / 3  # expired counts as failed
    # Nationally, uptake pools only the hospitals that report eligible studies.
    assert national.volume == 9 and national.uptake.value == 0.5
    assert national.failure_rate.value == 2 / 8


def test_a_job_that_ended_after_the_exchange_lost_its_images_is_not_the_products_failure(
    rows: dict,
) -> None:
    """The exchange lost images of the study from its store before the product read them: the
    job failed (or expired) through no fault of the product. Its failure rate leaves it out,
    as it leaves out a cancelled job; the job still counts as a study routed to it."""
    lost = [
        JobRecord(**{**job("a7", "h-a", "failed", 3).model_dump(), "inputs_lost": True}),
        JobRecord(**{**job("a8", "h-a", "expired").model_dump(), "inputs_lost": True}),
    ]
    counted = {r.hospital_id: r for r in evaluate(JOBS + lost, FEEDBACK, ELIGIBLE)}
    for hospital in ("h-a", NATIONAL):
        before, after = rows[hospital], counted[hospital]
        assert after.failure_rate == before.failure_rate
        assert after.failed == before.failed
        assert after.volume == before.volume + 2
        assert (before.images_lost, after.images_lost) == (0, 2)  # seen, apart
    api_job = {"id": "j", "product_id": "ich", "hospital_id": "h-a", "state": "failed"}
    assert JobRecord.from_job(api_job).inputs_lost is False
    lost_at = {**api_job, "inputs_lost_at": "2026-03-02T08:00:00Z"}
    assert JobRecord.from_job(lost_at).inputs_lost is True


def test_a_study_sent_again_is_one_study_routed(rows: dict) -> None:
    """The exchange's store lost the images of a study and its gateway sent the study again as
    a new job: two jobs, one study. Volume and uptake count it once, so that a loss at the
    exchange does not make a hospital's uptake look higher; the same UID at another hospital
    is that hospital's study."""

    def of_study(record: JobRecord, **more: object) -> JobRecord:
        return JobRecord(**{**record.model_dump(), "study_uid": "2.25.9", **more})

    again = [
        of_study(job("a9", "h-a", "failed", 3), inputs_lost=True),
        of_study(job("a10", "h-a", "completed", 9, False, "delivered")),
        of_study(job("b9", "h-b", "completed", 9)),
    ]
    counted = {r.hospital_id: r for r in evaluate(JOBS + again, FEEDBACK, ELIGIBLE)}
    assert counted["h-a"].volume == rows["h-a"].volume + 1
    assert counted["h-a"].uptake.numerator == rows["h-a"].uptake.numerator + 1
    assert counted["h-a"].completed == rows["h-a"].completed + 1  # jobs: the run is real
    assert counted["h-b"].volume == rows["h-b"].volume + 1
    assert counted[NATIONAL].volume == rows[NATIONAL].volume + 2
    api_job = {"id": "j", "product_id": "ich", "hospital_id": "h-a", "state": "failed"}
    assert JobRecord.from_job({**api_job, "study_uid": "2.25.9"}).study_uid == "2.25.9"


def test_results_not_delivered(rows: dict) -> None:
    """Of the completed jobs whose gateway said what became of their results: a job let go
    is the hospital's choice, and a job it said nothing of is not counted either way."""
    a, b, national = rows["h-a"], rows["h-b"], rows[NATIONAL]
    assert (a.undelivered.numerator, a.undelivered.denominator) == (1, 3)
    assert (b.undelivered.numerator, b.undelivered.denominator) == (1, 1)
    assert (national.undelivered.numerator, national.undelivered.denominator) == (2, 4)


def test_turnaround_percentiles(rows: dict) -> None:
    a, national = rows["h-a"], rows[NATIONAL]
    assert a.turnaround_p50_seconds == 25.0  # halfway between 20 and 30
    assert a.turnaround_p95_seconds == pytest.approx(38.5)  # 30 + 0.85 * (40 - 30)
    assert national.turnaround_p50_seconds == 35.0  # of 10, 20, 30, 40, 50, 60
    assert percentile([], 95) is None


def test_agreement_sensitivity_and_ppv(rows: dict) -> None:
    a, b, national = rows["h-a"], rows["h-b"], rows[NATIONAL]
    assert (a.agree.value, a.partly.value, a.disagree.value) == (0.5, 0.25, 0.25)
    assert (a.sensitivity.numerator, a.sensitivity.denominator) == (1, 2)
    assert (a.ppv.numerator, a.ppv.denominator) == (1, 2)
    assert b.sensitivity.value == 1.0 and b.ppv.value == 1.0
    assert national.sensitivity.value == 3 / 4 and national.ppv.value == 3 / 4


def test_proportions_carry_a_wilson_interval() -> None:
    k, n, z = 3, 4, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    interval = Proportion.of(k, n)
    assert interval.ci_low == pytest.approx(centre - half)
    assert interval.ci_high == pytest.approx(centre + half)
    empty = Proportion.of(0, 0)
    assert empty.value is None and empty.ci_low is None


def test_the_wilson_interval_is_scipys_for_every_count() -> None:
    """Written out for speed; scipy's binomtest is the reference, edges (0 of n, n of n, one
    study) included."""
    from scipy.stats import binomtest

    for n in (1, 2, 3, 7, 20, 101, 5000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            reference = binomtest(k, n).proportion_ci(method="wilson")
            interval = Proportion.of(k, n)
            assert interval.ci_low == pytest.approx(reference.low, abs=1e-12), (k, n)
            assert interval.ci_high == pytest.approx(reference.high, abs=1e-12), (k, n)


def test_job_record_from_the_api_reads_the_triage_flag() -> None:
    api_job = {
        "id": "j1",
        "product_id": "ich",
        "hospital_id": "h-a",
        "state": "completed",
        "ready_at": "2026-03-02T08:00:00Z",
        "ended_at": "2026-03-02T08:00:42Z",
        "summary": {"triage": {"flag": "positive", "priority": "high"}},
    }
    record = JobRecord.from_job(api_job)
    assert record.ai_positive is True
    assert record.ended_at is not None and record.ready_at is not None
    assert (record.ended_at - record.ready_at).total_seconds() == 42
    assert JobRecord.from_job({**api_job, "summary": None}).ai_positive is None
    negative = {**api_job, "summary": {"triage": {"flag": "negative"}}}
    assert JobRecord.from_job(negative).ai_positive is False
