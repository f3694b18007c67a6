"""The positive rate on a p-chart: limits by hand, and an alert when a period leaves them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aifi.governance.drift import (
    PeriodCount,
    Signal,
    drift_charts,
    p_chart,
    period_of,
    positive_counts,
)
from aifi.governance.evaluation import NATIONAL, JobRecord


def counts(*pairs: tuple[int, int]) -> list[PeriodCount]:
    return [
        PeriodCount(period=f"2026-{month:02d}", studies=n, positives=k)
        for month, (n, k) in enumerate(pairs, start=1)
    ]


def test_limits_by_hand() -> None:
    # Baseline: 40 positives in 400 studies -> p = 0.1; sigma for n = 100 is 0.03.
    chart = p_chart(counts((100, 10), (100, 12), (100, 8), (100, 10)))
    assert chart.centre == pytest.approx(0.1)
    for point in chart.points:
        assert point.lower_limit == pytest.approx(0.01)
        assert point.upper_limit == pytest.approx(0.19)
    assert chart.out_of_control == []
    # A smaller period gets wider limits: n = 25 -> sigma 0.06 -> [0, 0.28] (clipped at 0).
    small = p_chart(counts((100, 10), (100, 12), (100, 8), (100, 10), (25, 3)), baseline=4)
    assert small.points[-1].lower_limit == 0.0
    assert small.points[-1].upper_limit == pytest.approx(0.28)


def test_a_period_outside_its_limits_signals() -> None:
    chart = p_chart(
        counts((100, 10), (100, 12), (100, 8), (100, 10), (100, 25), (100, 0)), baseline=4
    )
    assert chart.baseline_periods == ["2026-01", "2026-02", "2026-03", "2026-04"]
    assert [(p.period, p.signal) for p in chart.out_of_control] == [
        ("2026-05", Signal.above),  # 0.25 > 0.19
        ("2026-06", Signal.below),  # 0.00 < 0.01
    ]


def test_a_baseline_without_studies_is_refused() -> None:
    with pytest.raises(ValueError, match="baseline periods hold no study"):
        p_chart(counts((0, 0)))


def test_periods() -> None:
    moment = datetime(2026, 3, 2, tzinfo=UTC)
    assert period_of(moment) == "2026-03"
    assert period_of(moment, "week") == "2026-W10"


def jobs_over_months(hospital: str, monthly: list[tuple[int, int]]) -> list[JobRecord]:
    rows = []
    for month, (n, k) in enumerate(monthly, start=1):
        for index in range(n):
            rows.append(
                JobRecord(
                    job_id=f"{hospital}-{month}-{index}",
                    product_id="ich",
                    hospital_id=hospital,
                    state="completed",
                    ended_at=datetime(2026, month, 10, tzinfo=UTC),
                    ai_positive=index < k,
                )
            )
    return rows


def test_drift_alerts_per_hospital_and_nationally() -> None:
    steady = jobs_over_months("h-a", [(100, 10)] * 5)
    drifting = jobs_over_months("h-b", [(100, 10), (100, 10), (100, 10), (100, 10), (100, 30)])
    failed = JobRecord(job_id="x", product_id="ich", hospital_id="h-a", state="failed")
    assert positive_counts(steady + [failed])[0] == PeriodCount(
        period="2026-01", studies=100, positives=10
    )
    charts = {c.hospital_id: c for c in drift_charts(steady + drifting, baseline=4)}
    assert charts["h-a"].alerts == []
    [alert] = charts["h-b"].alerts
    assert (alert.period, alert.signal, alert.rate) == ("2026-05", Signal.above, 0.3)
    assert alert.message == (
        "product ich at h-b: positive rate 0.300 in 2026-05 is above the upper control limit "
        "0.190 (centre 0.100, n=100)"
    )
    # Nationally month 5 is 40 of 200 = 0.2, above 0.1 + 3 * sqrt(0.09 / 200) = 0.1636.
    [national] = charts[NATIONAL].alerts
    assert national.period == "2026-05" and national.limit == pytest.approx(0.16364, abs=1e-5)


def test_a_study_analysed_twice_in_a_period_is_one_study_positive_if_either_call_was() -> None:
    """Sent again (its images or results lost at the exchange, more images), a study is run
    twice: the chart's n is studies, as the evaluation's volume."""
    ended = datetime(2026, 3, 10, tzinfo=UTC)

    def run(job_id: str, study: str, positive: bool, month: int = 3) -> JobRecord:
        return JobRecord(
            job_id=job_id, product_id="ich", hospital_id="h-a", study_uid=study,
            state="completed", ended_at=ended.replace(month=month), ai_positive=positive,
        )  # fmt: skip

    jobs = [
        run("1", "s-1", False),
        run("2", "s-1", True),  # the same study again: one study, positive
        run("3", "s-2", False),
        run("4", "s-2", False),
        run("5", "s-3", True, month=4),
        run("6", "s-3", True, month=5),  # ended in another month: that month's study too
    ]
    assert positive_counts(jobs) == [
        PeriodCount(period="2026-03", studies=2, positives=1),
        PeriodCount(period="2026-04", studies=1, positives=1),
        PeriodCount(period="2026-05", studies=1, positives=1),
    ]


def test_each_period_names_the_versions_that_ran_it_and_an_alert_says_them() -> None:
    """A release is the first suspect of a signal: each period names the product versions
    recorded for its studies (a job from before versions were kept names none), the nation's
    those of every hospital, and an alert says them."""

    def run(n: int, hospital: str, month: int, version: str | None, positive: bool) -> JobRecord:
        return JobRecord(
            job_id=f"{hospital}-{n}", product_id="ich", hospital_id=hospital,
            study_uid=f"{hospital}-{n}", state="completed", product_version=version,
            ended_at=datetime(2026, month, 10, tzinfo=UTC), ai_positive=positive,
        )  # fmt: skip

    jobs = [
        run(n, "h-a", month, version, positive=n % 10 == 0)
        for month, version in ((1, None), (2, "1.0"), (3, "1.0"), (4, "1.0"))
        for n in range(100)
    ]
    # In May h-a runs 2.0, which calls a third positive; h-b still runs 1.0.
    jobs += [run(n, "h-a", 5, "2.0", positive=n % 3 == 0) for n in range(100)]
    jobs += [run(n, "h-b", 5, "1.0", positive=n % 10 == 0) for n in range(100)]
    charts = {c.hospital_id: c for c in drift_charts(jobs, baseline=4)}
    assert [p.versions for p in charts["h-a"].chart.points] == [
        [], ["1.0"], ["1.0"], ["1.0"], ["2.0"],
    ]  # fmt: skip
    assert charts[NATIONAL].chart.points[-1].versions == ["1.0", "2.0"]
    [alert] = charts["h-a"].alerts
    assert alert.versions == ["2.0"] and alert.message.endswith("n=100; version 2.0)")
    assert positive_counts(jobs[:100])[0].versions == []  # none recorded: none named
