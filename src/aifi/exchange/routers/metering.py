"""/metering: completed jobs, and the studies they analysed, per hospital × product × month, for
the business case."""

from __future__ import annotations

from fastapi import APIRouter

from aifi.exchange.deps import CallerDep, MonthsDep, ServicesDep
from aifi.exchange.metering import metering_rows
from aifi.exchange.schemas import Metering

router = APIRouter(prefix="/metering", tags=["metering"])


@router.get("", response_model=Metering)
def get_metering(caller: CallerDep, services: ServicesDep, months: MonthsDep) -> Metering:
    rows = metering_rows(services.db, caller, months)
    services.audit.record(caller, "search", "metering", f"{len(rows)} rows")
    return Metering(rows=rows)
