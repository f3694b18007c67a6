"""What a database would do with a statement, as its driver got it: to ask whether an index
serves a query, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from typing import Any

from aifi.exchange.db import Database


def plan_of(db: Database, statement: str, parameters: Any) -> str:
    """The database's plan for `statement`, as one line of text naming the indexes it uses.

    On PostgreSQL sequential scans are turned off first: a test's tables are so small that
    reading them whole is cheapest, and the question is whether the index can serve.
    """
    with db.engine.connect() as connection:
        if db.is_postgresql:
            connection.exec_driver_sql("SET enable_seqscan = off")
            plan = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        else:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
        connection.rollback()
    return " ".join(str(row[-1]) for row in plan)
