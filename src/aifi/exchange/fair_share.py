"""Hospitals take turns at a vendor's queue, so one hospital's backlog holds up no other.

A gateway that was cut off for a day sends the day's studies at once when it comes back; a
hospital may send a year's studies for a retrospective run. Claimed oldest first, such a
backlog of a thousand studies would make every other hospital's routine studies wait behind
it for hours. So within a priority (STAT still goes first), a vendor's jobs are claimed by
their *place in the queue*, set when a job opens to vendors (start-time fair queueing):

- a hospital with nothing waiting starts at the head of the queue, the lowest place waiting;
- a hospital with jobs waiting gets the place after its last one.

Each hospital's own jobs keep their order, and a hospital with one study waiting waits for at
most one job of every other hospital with studies waiting. A job whose lease ran out goes back
to the head: it had already had its turn. With nothing waiting every job opens at the head, so
jobs go oldest first as before.

Places are counted per vendor and priority, over the vendor's open products: the queue a
vendor's workers claim from. They are computed in the statement that opens the job (no extra
round trip), and read through `ix_jobs_queue` (the head) and `ix_jobs_waiting` (a hospital's
last); both are seeks, so a place costs the same with ten jobs waiting or ten thousand.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal_column, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import BigInteger

from aifi.exchange.catalogue import OPEN_PRODUCT_STATES
from aifi.exchange.models import Job, Product
from aifi.exchange.schemas import JobState

_waiting = aliased(Job, name="waiting")

#: A literal, not a bound value: `ix_jobs_waiting` holds only waiting jobs, and PostgreSQL uses
#: such an index only when it can see the condition in the statement it plans once and reuses.
WAITING_STATE: ColumnElement[str] = literal_column(f"'{JobState.requested.value}'")
#: `LIMIT 1` as a literal too: with the limit a parameter, a plan PostgreSQL makes once for
#: any value may sort every waiting job to find the first.
ONE: ColumnElement[int] = literal_column("1")


class greatest(GenericFunction[int]):  # noqa: N801 - named as SQL names it
    """The larger of its arguments: `GREATEST` on PostgreSQL, the many-argument `max` on
    SQLite."""

    type = BigInteger()
    inherit_cache = True


@compiles(greatest, "sqlite")
def _greatest_on_sqlite(element: greatest, compiler: Any, **kw: Any) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"


def _waiting_with_this_job(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """Jobs waiting for the same vendor at the same priority as the job being placed."""
    return and_(
        _waiting.vendor_id == Job.vendor_id,
        _waiting.priority_rank == Job.priority_rank,
        _waiting.state == WAITING_STATE,
        # `= true`, not `IS true`: PostgreSQL seeks an index by the first, not the second.
        _waiting.inputs_complete == true(),
        *conditions,
    )


#: The lowest place waiting: the next a worker claims.
_HEAD = (
    select(_waiting.queue_place)
    .join(Product, Product.id == _waiting.product_id)
    .where(_waiting_with_this_job(Product.status.in_(OPEN_PRODUCT_STATES)))
    .order_by(_waiting.queue_place)
    .limit(ONE)
    .scalar_subquery()
)

#: The place after the hospital's last job waiting.
_AFTER_OWN = (
    select(_waiting.queue_place + 1)
    .where(_waiting_with_this_job(_waiting.hospital_id == Job.hospital_id))
    .order_by(_waiting.queue_place.desc())
    .limit(ONE)
    .scalar_subquery()
)

#: The place of a job opening to vendors, as the value of the `UPDATE` that opens it.
OPENING_PLACE = greatest(func.coalesce(_HEAD, 0), func.coalesce(_AFTER_OWN, 0))

#: The place of a job put back in the queue: the head, or 0 with nothing waiting.
REQUEUED_PLACE = func.coalesce(_HEAD, 0)
