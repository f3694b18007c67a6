"""/metering: completed jobs per hospital × product × month, for the business case."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from aifi.exchange.deps import CallerDep, ServicesDep
from aifi.exchange.metering import metering_rows
from aifi.exchange.schemas import Metering

router = APIRouter(prefix="/metering", tags=["metering"])
MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"


@router.get("", response_model=Metering)
def get_metering(
    caller: CallerDep,
    services: ServicesDep,
    since: Annotated[str | None, Query(pattern=MONTH)] = None,
    until: Annotated[str | None, Query(pattern=MONTH)] = None,
) -> Metering:
    rows = metering_rows(services.db, caller, since, until)
    services.audit.record(caller, "search", "metering", f"{len(rows)} rows")
    return Metering(rows=rows)
