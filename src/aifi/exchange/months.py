"""A period of whole UTC months, as the reports ask for one (`?since=2026-01&until=2026-12`).

Metering, evaluation and drift all read the jobs table, which keeps every job ever (about
eleven million a year nationally). A report for a year, a quarter or a month selects its jobs
through an index on the moment that places them in a month, so it reads that period only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement

from aifi.exchange.errors import Invalid

#: A month as the API takes it: YYYY-MM.
MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"
_MONTH = re.compile(MONTH)


def month_start(month: str, later: int = 0) -> datetime:
    """The first moment (UTC) of `month` (YYYY-MM), or of the month `later` months on."""
    year, number = (int(part) for part in month.split("-"))
    index = year * 12 + number - 1 + later
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Months:
    """From the start of `since` to the end of `until` (YYYY-MM, both included); an end left
    out is open, so `Months()` is all time."""

    since: str | None = None
    until: str | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not _MONTH.match(value):
                raise Invalid(f"{name} must be a month as YYYY-MM, not {value!r}")
        if self.since and self.until and self.since > self.until:
            raise Invalid(f"since ({self.since}) is after until ({self.until})")

    @classmethod
    def last(cls, count: int, now: datetime) -> Months:
        """The `count` months up to and including `now`'s (UTC)."""
        now = now.astimezone(UTC)
        this = f"{now.year:04d}-{now.month:02d}"
        first = month_start(this, later=1 - count)
        return cls(f"{first.year:04d}-{first.month:02d}", this)

    @classmethod
    def quarter(cls, year: int, number: int) -> Months:
        """Quarter `number` (1–4) of `year`."""
        first = 3 * (number - 1) + 1
        return cls(f"{year:04d}-{first:02d}", f"{year:04d}-{first + 2:02d}")

    @classmethod
    def shortcuts(cls, now: datetime, quarters: int = 4) -> list[tuple[str, Months]]:
        """The periods a report page offers with one click, most recent first: the last
        twelve months, this year, this quarter and the `quarters` - 1 before it, last year,
        and all time. Labels as a page shows them ("2026 Q4")."""
        now = now.astimezone(UTC)
        year, number = now.year, (now.month - 1) // 3 + 1
        found: list[tuple[str, Months]] = [
            ("last 12 months", cls.last(12, now)),
            (f"{year}", cls(f"{year:04d}-01", f"{year:04d}-12")),
        ]
        for _ in range(quarters):
            found.append((f"{year} Q{number}", cls.quarter(year, number)))
            year, number = (year, number - 1) if number > 1 else (year - 1, 4)
        found.append((f"{now.year - 1}", cls(f"{now.year - 1:04d}-01", f"{now.year - 1:04d}-12")))
        found.append(("all time", cls()))
        return found

    @property
    def start(self) -> datetime | None:
        """The period's first moment, or None when it has no start."""
        return month_start(self.since) if self.since else None

    @property
    def end(self) -> datetime | None:
        """The first moment after the period, or None when it has no end."""
        return month_start(self.until, later=1) if self.until else None

    def where(self, moment: Any) -> list[ColumnElement[bool]]:
        """Conditions that `moment` (a timestamp column) falls in the period; none for all
        time. Half-open, so a job at midnight on the 1st belongs to the new month only."""
        conditions = []
        if self.start is not None:
            conditions.append(moment >= self.start)
        if self.end is not None:
            conditions.append(moment < self.end)
        return conditions

    def where_month(self, month: Any) -> list[ColumnElement[bool]]:
        """Conditions that `month` (a YYYY-MM text column) is one of the period's."""
        conditions = []
        if self.since:
            conditions.append(month >= self.since)
        if self.until:
            conditions.append(month <= self.until)
        return conditions

    def __str__(self) -> str:
        if self.since and self.until:
            return self.since if self.since == self.until else f"{self.since} to {self.until}"
        if self.since:
            return f"from {self.since}"
        if self.until:
            return f"until {self.until}"
        return "all time"


__all__ = ["MONTH", "Months", "month_start"]
