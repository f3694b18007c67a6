"""/audit: the operator reads the access log and checks its hash chain."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from aifi.exchange.audit import in_chain_order, unlinked_count, verify_chain
from aifi.exchange.auth import require_role
from aifi.exchange.deps import CallerDep, ServicesDep
from aifi.exchange.models import AuditEntry
from aifi.exchange.schemas import AuditOut

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=list[AuditOut])
def list_audit(
    caller: CallerDep,
    services: ServicesDep,
    after_id: int = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[AuditOut]:
    require_role(caller, "operator")
    services.audit.chain()  # the operator sees entries linked, hashes and all
    with services.db.session() as session:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.id > after_id).order_by(AuditEntry.id).limit(limit)
        )
        return [AuditOut.model_validate(r) for r in rows]


@router.get("/verify")
def verify_audit(caller: CallerDep, services: ServicesDep) -> dict[str, object]:
    require_role(caller, "operator")
    services.audit.chain()
    with services.db.session() as session:
        entries = list(session.scalars(in_chain_order()))
        problems = verify_chain(entries)
        unlinked = unlinked_count(session)
    return {"entries": len(entries), "unlinked": unlinked, "ok": not problems, "problems": problems}
