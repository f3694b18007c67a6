"""Time in UTC, the only time the exchange stores."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Every stored time is UTC: SQLite hands it back naive, so say so; PostgreSQL hands it
    back in the server's time zone, so convert (a month or a day is then the UTC one)."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
