"""Time in SQL, the same on each database the exchange runs on: the seconds between two
moments, and a moment's month or ISO week as a label. Timestamps are UTC on both; the labels
are the UTC ones whatever the PostgreSQL server's time zone. SQLite's date functions count
milliseconds, so its seconds are exact to the millisecond.

Reports that group a year of jobs by month or week (metering, evaluation, drift) group in
the database with these, rather than read every job into Python.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement


class seconds_between(FunctionElement[float]):  # noqa: N801 - an SQL function, named as one
    """`end - start` in seconds, as a number."""

    type = Float()
    inherit_cache = True


@compiles(seconds_between, "postgresql")
def _seconds_on_postgresql(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    # In double precision: a numeric sorts several times slower, and microseconds still fit.
    return f"CAST(EXTRACT(EPOCH FROM ({end}) - ({start})) AS DOUBLE PRECISION)"


@compiles(seconds_between, "sqlite")
def _seconds_on_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


class month_label(FunctionElement[str]):  # noqa: N801 - an SQL function, named as one
    """A moment's month as :func:`aifi.governance.drift.period_of` labels it: '2026-03'."""

    type = String()
    inherit_cache = True


class iso_week_label(FunctionElement[str]):  # noqa: N801 - an SQL function, named as one
    """A moment's ISO week as :func:`aifi.governance.drift.period_of` labels it: '2026-W09'."""

    type = String()
    inherit_cache = True


@compiles(month_label, "postgresql")
def _month_on_postgresql(element: month_label, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC', 'YYYY-MM')"


@compiles(month_label, "sqlite")
def _month_on_sqlite(element: month_label, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('%Y-%m', {compiler.process(element.clauses, **kw)})"


@compiles(iso_week_label, "postgresql")
def _week_on_postgresql(element: iso_week_label, compiler: SQLCompiler, **kw: Any) -> str:
    moment = compiler.process(element.clauses, **kw)
    return f"to_char(({moment}) AT TIME ZONE 'UTC', 'IYYY-\"W\"IW')"


@compiles(iso_week_label, "sqlite")
def _week_on_sqlite(element: iso_week_label, compiler: SQLCompiler, **kw: Any) -> str:
    # An ISO week belongs to the year of its Thursday and is numbered by that Thursday's
    # day of the year (SQLite before 3.46 has no %G or %V).
    thursday = f"date({compiler.process(element.clauses, **kw)}, '-3 days', 'weekday 4')"
    return (
        f"(strftime('%Y', {thursday}) || '-W' || "
        f"printf('%02d', (CAST(strftime('%j', {thursday}) AS INTEGER) - 1) / 7 + 1))"
    )
