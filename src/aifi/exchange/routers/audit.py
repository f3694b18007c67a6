"""/audit: the operator reads the access log and checks its hash chain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from aifi.exchange.audit import check_chain, newest_anchor, unlinked_count
from aifi.exchange.audit_search import AuditQuery, list_entries, search_page
from aifi.exchange.auth import require_role
from aifi.exchange.deps import CallerDep, ServicesDep
from aifi.exchange.schemas import AuditFound, AuditOut, AuditSearchPage

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=list[AuditOut])
def list_audit(
    caller: CallerDep,
    services: ServicesDep,
    after_id: int = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    after_seq: Annotated[int | None, Query(ge=0)] = None,
) -> list[AuditOut]:
    """The entries after `after_id`, oldest first; with `after_seq`, those after that chain
    position, in chain order (page on it: a page by ids can pass an entry still being
    written). The listing is itself logged: which entries it gave out, and to whom."""
    require_role(caller, "operator")
    services.audit.chain()  # the operator sees entries linked, hashes and all
    entries = list_entries(
        services.db, services.audit, caller, after_id=after_id, limit=limit,
        where="GET /audit", after_seq=after_seq,
    )  # fmt: skip
    return [AuditOut.model_validate(entry) for entry in entries]


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


@router.get("/search", response_model=AuditSearchPage)
def search_audit(
    caller: CallerDep,
    services: ServicesDep,
    patient: Annotated[str | None, Query(description="A patient pseudonym.")] = None,
    organisation: Annotated[str | None, Query(description="An organisation's id.")] = None,
    object_id: Annotated[
        str | None,
        Query(alias="object", description="An object; a job's id finds its inputs, results."),
    ] = None,
    since: Annotated[datetime | None, Query(description="From this moment on.")] = None,
    until: Annotated[datetime | None, Query(description="Before this moment.")] = None,
    after: Annotated[int, Query(ge=0, description="`next_after` of the page before.")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> AuditSearchPage:
    """Who touched a patient's data, an organisation's, or one job's, and when: the answer a
    privacy officer asks the operator for (NEN 7513), from the table and the archive files
    alike, oldest first, a page at a time. Pages follow the chain's positions, so an
    archiving round between two pages neither skips nor repeats an entry. The search is
    itself logged, naming the patient searched for."""
    require_role(caller, "operator")
    query = AuditQuery(patient, organisation, object_id, since=since, until=until)
    if refusal := query.refusal():
        raise HTTPException(422, refusal)
    found = search_page(
        services.db, services.blobs, services.audit, caller, query, after=after, limit=limit
    )
    return AuditSearchPage(
        entries=[AuditFound.of(kept, entry) for kept, entry in found.entries],
        next_after=found.next_after,
        stopped=found.stopped,
    )
