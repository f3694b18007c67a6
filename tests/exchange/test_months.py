"""A report's period of whole UTC months."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from aifi.exchange.errors import Invalid
from aifi.exchange.months import Months


def test_the_last_twelve_months_end_with_this_one_in_utc() -> None:
    assert Months.last(12, datetime(2026, 1, 15, tzinfo=UTC)) == Months("2025-02", "2026-01")
    assert Months.last(1, datetime(2026, 12, 31, 23, 0, tzinfo=UTC)) == Months("2026-12", "2026-12")
    # Half past midnight on New Year's Day in Amsterdam is still December in UTC.
    amsterdam = timezone(timedelta(hours=1))
    assert Months.last(3, datetime(2026, 1, 1, 0, 30, tzinfo=amsterdam)) == Months(
        "2025-10", "2025-12"
    )


def test_a_period_runs_from_its_first_month_s_start_to_its_last_month_s_end() -> None:
    months = Months("2026-02", "2026-03")
    assert (months.start, months.end) == (
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 4, 1, tzinfo=UTC),
    )
    assert Months(until="2026-12").end == datetime(2027, 1, 1, tzinfo=UTC)
    assert [str(m) for m in (Months(), Months("2026-01"), Months(until="2026-01"))] == [
        "all time",
        "from 2026-01",
        "until 2026-01",
    ]


@pytest.mark.parametrize(
    ("since", "until", "reason"),
    [
        ("2026-05", "2026-03", "since (2026-05) is after until (2026-03)"),
        ("2026-13", None, "since must be a month as YYYY-MM, not '2026-13'"),
        (None, "2026-1", "until must be a month as YYYY-MM, not '2026-1'"),
    ],
)
def test_a_period_that_cannot_be_read_says_why(
    since: str | None, until: str | None, reason: str
) -> None:
    with pytest.raises(Invalid) as refused:
        Months(since, until)
    assert refused.value.message == reason


def test_the_shortcuts_are_the_recent_quarters_and_years_in_utc() -> None:
    # 00:30 on 1 January in Amsterdam is still December in UTC: the shortcuts follow UTC.
    now = datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    shortcuts = Months.shortcuts(now)
    assert [label for label, _ in shortcuts] == [
        "last 12 months", "2026", "2026 Q4", "2026 Q3", "2026 Q2", "2026 Q1", "2025", "all time",
    ]  # fmt: skip
    periods = dict(shortcuts)
    assert str(periods["2026 Q4"]) == "2026-10 to 2026-12"
    assert str(periods["2026 Q1"]) == "2026-01 to 2026-03"
    assert str(periods["last 12 months"]) == "2026-01 to 2026-12"
    assert periods["all time"] == Months()
    early = dict(Months.shortcuts(datetime(2026, 2, 10, tzinfo=UTC)))
    assert [label for label in early if "Q" in label] == [
        "2026 Q1",
        "2025 Q4",
        "2025 Q3",
        "2025 Q2",
    ]
    assert str(early["2025 Q4"]) == "2025-10 to 2025-12"
