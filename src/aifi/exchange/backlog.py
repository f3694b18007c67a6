"""What each hospital has waiting at the exchange now: its jobs no vendor has claimed yet, and
its outcomes its gateway has not collected.

The national operator reads both on the metrics (`aifi_exchange_hospital_*`, the
`HospitalNotCollecting` alert) and on the overview page. A vendor's queue is shared by every
hospital, so its length alone does not say whose studies it holds up; and a gateway that
stopped collecting (down, cut off, its disk full) would otherwise show only when retention
purges its results a month later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from aifi.exchange.clock import as_utc
from aifi.exchange.fair_share import WAITING_STATE
from aifi.exchange.models import Job
from aifi.exchange.schemas import ENDED_STATES

#: Outcomes uncollected this long mean the gateway has stopped collecting (a gateway collects
#: within seconds of a job's end); the `HospitalNotCollecting` alert uses the same figure.
NOT_COLLECTING_SECONDS = 1800.0


@dataclass(frozen=True)
class HospitalBacklog:
    #: Jobs ready for a vendor and not yet claimed.
    waiting: int = 0
    #: Ended jobs the hospital has not acknowledged.
    uncollected: int = 0
    #: Seconds since the oldest of those ended (0 with none).
    uncollected_for: float = 0.0


def by_hospital(session: Session, now: datetime) -> dict[str, HospitalBacklog]:
    """Each hospital with anything waiting or uncollected (others are left out)."""
    waiting = {
        hospital_id: count
        for hospital_id, count in session.execute(
            select(Job.hospital_id, func.count())
            # As fair_share reads them: through `ix_jobs_waiting`, which holds waiting jobs only.
            .where(Job.state == WAITING_STATE, Job.inputs_complete == true())
            .group_by(Job.hospital_id)
        )
    }
    uncollected = {
        hospital_id: (count, oldest)
        for hospital_id, count, oldest in session.execute(
            select(Job.hospital_id, func.count(), func.min(Job.ended_at))
            .where(Job.state.in_([s.value for s in ENDED_STATES]), Job.acknowledged_at.is_(None))
            .group_by(Job.hospital_id)
        )
    }
    held = {}
    for hospital_id in sorted(waiting.keys() | uncollected.keys()):
        count, oldest = uncollected.get(hospital_id, (0, None))
        ended_for = (now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
        held[hospital_id] = HospitalBacklog(
            waiting=waiting.get(hospital_id, 0),
            uncollected=count,
            uncollected_for=max(0.0, ended_for),
        )
    return held
