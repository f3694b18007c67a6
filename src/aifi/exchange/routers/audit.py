"""/audit: the operator reads the access log and checks its hash chain."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from aifi.exchange.audit import check_chain, newest_anchor, unlinked_count
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
    """The whole chain checked, a batch at a time, in flat memory. On a long log this takes a
    while (half a minute per million entries measured): `aifi audit verify` does the same on
    the database directly, with a progress bar. Archived runs are passed by their records;
    `aifi audit verify --archives` reads their files too."""
    require_role(caller, "operator")
    services.audit.chain()
    check = check_chain(services.db)
    with services.db.session() as session:
        unlinked = unlinked_count(session)
    return {
        "entries": check.entries,
        "unlinked": unlinked,
        "newest_anchor": str(anchor) if (anchor := newest_anchor(services.db)) else None,
        "archives": check.archives,
        "archived_entries": check.archived_entries,
        "ok": check.ok,
        "problems": check.problems,
        "problem_count": check.problem_count,
    }
