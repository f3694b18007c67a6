"""The clinical pillar's HTTP API: users, admission dossiers, feedback, evaluation, priorities,
and the audit log as FHIR AuditEvents. Authorised by API key like the rest of the exchange."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from aifi.exchange.audit_search import list_entries, search_page
from aifi.exchange.auth import require_role
from aifi.exchange.clock import as_utc
from aifi.exchange.deps import CallerDep, MonthsDep, ServicesDep
from aifi.exchange.errors import ArchiveMissing
from aifi.exchange.metrics import ERROR_KIND
from aifi.exchange.models import AuditEntry
from aifi.governance import AreaScore, PriorityList, ProductEvaluation
from aifi.governance.conformance.report import ConformanceReport
from aifi.governance.dossier import Dossier, Gap
from aifi.governance.drift import DriftChart, Granularity
from aifi.web.audit_fhir import (
    audit_bundle,
    audit_event,
    capability_statement,
    entry_id,
    operation_outcome,
    search_bundle,
)
from aifi.web.audit_fhir_search import SEARCH_PARAMS, SearchRefused, parse_search
from aifi.web.deps import ClinicalDep

router = APIRouter(tags=["clinical pillar"])

FHIR_JSON = "application/fhir+json"


class UserIn(BaseModel):
    organisation_id: str
    username: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,99}$")
    display_name: str = Field(min_length=1, max_length=200)
    role: str = Field(pattern=r"^(radiologist|it|operator|vendor-engineer|privacy-officer)$")
    password: str = Field(min_length=10, max_length=200)


class DossierOut(BaseModel):
    product_id: str
    state: str
    dossier: Dossier
    gaps: list[Gap]


class AdmissionIn(BaseModel):
    action: str
    note: str = ""


class FeedbackIn(BaseModel):
    agreement: str = Field(pattern=r"^(agree|partly|disagree)$")
    radiologist_positive: bool | None = None
    correction: str = Field(default="", max_length=2000)
    user: str = Field(default="", max_length=100)


class EligibleIn(BaseModel):
    product_id: str
    month: str = Field(pattern=r"^\d{4}-\d{2}$")
    studies: int = Field(ge=0)


@router.post("/users", status_code=201)
def create_user(body: UserIn, caller: CallerDep, clinical: ClinicalDep) -> dict[str, str]:
    user = clinical.create_user(
        caller, body.organisation_id, body.username, body.display_name, body.role, body.password
    )
    return {"username": user.username, "organisation_id": user.organisation_id}


@router.get("/products/{product_id}/dossier", response_model=DossierOut)
def get_dossier(product_id: str, caller: CallerDep, clinical: ClinicalDep) -> DossierOut:
    dossier, gaps, state = clinical.dossier(caller, product_id)
    return DossierOut(product_id=product_id, state=state, dossier=dossier, gaps=gaps)


@router.put("/products/{product_id}/dossier", response_model=DossierOut)
def put_dossier(
    product_id: str, body: Dossier, caller: CallerDep, clinical: ClinicalDep
) -> DossierOut:
    clinical.save_dossier(caller, product_id, body)
    return get_dossier(product_id, caller, clinical)


@router.post("/products/{product_id}/admission")
def admission(
    product_id: str, body: AdmissionIn, caller: CallerDep, clinical: ClinicalDep
) -> dict[str, str]:
    return {
        "product_id": product_id,
        "state": clinical.admission(caller, product_id, body.action, body.note),
    }


@router.get("/products/{product_id}/admission")
def admission_history(
    product_id: str, caller: CallerDep, clinical: ClinicalDep
) -> list[dict[str, Any]]:
    return [
        {
            "at": as_utc(e.at).isoformat(), "version": e.version,
            "from": e.from_state, "to": e.to_state, "action": e.action,
            "organisation": e.organisation_id, "role": e.role, "note": e.note,
        }
        for e in clinical.admission_history(caller, product_id)
    ]  # fmt: skip


@router.put("/products/{product_id}/conformance-report", status_code=201)
def attach_report(
    product_id: str, body: ConformanceReport, caller: CallerDep, clinical: ClinicalDep
) -> dict[str, Any]:
    # The HTML is rendered here from the report's data, not taken from the uploader.
    html = body.to_html()
    attachment = body.attachment("admission-report.html", html.encode())
    clinical.attach_conformance(caller, product_id, body.model_dump(mode="json"), html, attachment)
    return {"product_id": product_id, "passed": body.passed}


@router.get("/products/{product_id}/conformance-report", response_class=HTMLResponse)
def get_report(product_id: str, caller: CallerDep, clinical: ClinicalDep) -> HTMLResponse:
    return HTMLResponse(clinical.conformance_html(caller, product_id))


@router.get("/products/{product_id}/record-of-processing", response_model=None)
def record_of_processing(
    product_id: str,
    caller: CallerDep,
    clinical: ClinicalDep,
    format: Annotated[str, Query(pattern=r"^(json|md|html)$")] = "json",
    hospital: str | None = None,
) -> Any:
    record = clinical.record(caller, product_id, hospital)
    if format == "md":
        return PlainTextResponse(record.to_markdown(), media_type="text/markdown")
    if format == "html":
        return HTMLResponse(record.to_html())
    return record.model_dump(mode="json")


@router.post("/jobs/{job_id}/feedback", status_code=201)
def feedback(
    job_id: str, body: FeedbackIn, caller: CallerDep, clinical: ClinicalDep
) -> dict[str, Any]:
    row = clinical.give_feedback(
        caller, job_id, body.agreement, body.radiologist_positive, body.correction, body.user
    )
    return {"job_id": row.job_id, "agreement": row.agreement}


@router.put("/eligible", status_code=204)
def eligible(body: EligibleIn, caller: CallerDep, clinical: ClinicalDep) -> Response:
    clinical.record_eligible(caller, body.product_id, body.month, body.studies)
    return Response(status_code=204)


@router.get("/evaluation", response_model=list[ProductEvaluation])
def evaluation(
    caller: CallerDep,
    clinical: ClinicalDep,
    months: MonthsDep,
    by_version: Annotated[
        bool,
        Query(description="a row per product version (the version that ran each job)"),
    ] = False,
) -> list[ProductEvaluation]:
    """The figures of the jobs requested in the months asked for (all time by default), with
    the eligible counts reported for those months; per product version if asked."""
    return clinical.evaluation(caller, months, by_version=by_version)


@router.get("/evaluation/drift", response_model=list[DriftChart])
def drift(
    caller: CallerDep,
    clinical: ClinicalDep,
    months: MonthsDep,
    granularity: Annotated[Granularity, Query()] = Granularity.month,
) -> list[DriftChart]:
    """A p-chart per product × hospital and nationally, of the jobs that ended in the months
    asked for (all time by default)."""
    return clinical.drift(caller, granularity, months)


@router.put("/priorities/scores", status_code=204)
def score(body: AreaScore, caller: CallerDep, clinical: ClinicalDep) -> Response:
    clinical.score_area(caller, body)
    return Response(status_code=204)


@router.get("/priorities", response_model=PriorityList)
def priorities(caller: CallerDep, clinical: ClinicalDep) -> PriorityList:
    return clinical.priorities(caller)


@router.get("/audit/fhir")
def audit_fhir(
    request: Request,
    caller: CallerDep,
    services: ServicesDep,
    after_id: int = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    after_seq: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    """The access log as a FHIR R4 Bundle of AuditEvents (NEN 7513 fields mapped), a page
    at a time (`after_id`: the last entry of the page before; better, `after_seq`: the last
    entry's chain position, as ids can pass an entry still being written): the log runs to
    billions. The listing is itself logged: which entries it gave out, and to whom."""
    require_role(caller, "operator")
    if after_seq is not None:
        services.audit.chain()
    entries = list_entries(
        services.db, services.audit, caller, after_id=after_id, limit=limit,
        where="GET /audit/fhir", after_seq=after_seq,
    )  # fmt: skip
    onwards = None
    if after_seq is not None:  # from the last entry's chain position, or this one again
        last = entries[-1].chain_seq if entries else after_seq
        onwards = str(request.url.include_query_params(after_seq=last, limit=limit))
    bundle = audit_bundle(entries, _fhir_base(request), onwards)
    return Response(bundle.model_dump_json(exclude_none=True), media_type=FHIR_JSON)


@router.get("/audit/fhir/AuditEvent/{resource_id}")
def audit_fhir_read(resource_id: str, caller: CallerDep, services: ServicesDep) -> Response:
    """One AuditEvent, where a Bundle entry's `fullUrl` points. Entries still in the table
    are read here; an archived one is found by the search. The read is itself logged,
    naming the patient the entry is about."""
    require_role(caller, "operator")
    wanted = entry_id(resource_id)
    with services.db.session() as session:
        entry = session.get(AuditEntry, wanted) if wanted is not None else None
        event = audit_event(entry) if entry is not None else None
        patient = entry.patient_pseudonym if entry is not None else ""
    if event is None:
        outcome = operation_outcome(
            f"no AuditEvent {resource_id} in the exchange's table: an archived entry is found by "
            "searching (GET /audit/fhir/AuditEvent?…)",
            "not-found",
        )
        return Response(outcome.model_dump_json(), status_code=404, media_type=FHIR_JSON)
    services.audit.record(
        caller, "read", "audit", f"entry {wanted}", patient_pseudonym=patient,
        detail="by GET /audit/fhir/AuditEvent/{id}",
    )  # fmt: skip
    return Response(event.model_dump_json(exclude_none=True), media_type=FHIR_JSON)


def _fhir_base(request: Request) -> str:
    """The access log's FHIR base as the caller reached it (through the balancer, its name)."""
    return str(request.url_for("audit_fhir_metadata")).removesuffix("/metadata")


@router.get("/audit/fhir/metadata")
def audit_fhir_metadata(caller: CallerDep) -> Response:
    """The FHIR CapabilityStatement of the access log: AuditEvent search and its parameters."""
    require_role(caller, "operator")
    statement = capability_statement(SEARCH_PARAMS)
    return Response(statement.model_dump_json(exclude_none=True), media_type=FHIR_JSON)


@router.get(
    "/audit/fhir/AuditEvent",
    openapi_extra={
        "parameters": [
            {"name": name, "in": "query", "description": meaning, "schema": {"type": "string"}}
            for name, _, meaning in SEARCH_PARAMS
        ]
    },
)
def audit_fhir_search(request: Request, caller: CallerDep, services: ServicesDep) -> Response:
    """A FHIR search of the access log (IHE RESTful ATNA, ITI-81), archives included: the
    privacy officer's tooling asks who touched a patient's data, an organisation's or one
    job's, and when, and pages on by the Bundle's `next` link. The search is itself logged,
    naming the patient searched for. A parameter this server does not know is refused with
    an OperationOutcome, not ignored."""
    require_role(caller, "operator")
    try:
        asked = parse_search(request.query_params.multi_items())
    except SearchRefused as refused:
        outcome = operation_outcome(str(refused), refused.code)
        return Response(outcome.model_dump_json(), status_code=400, media_type=FHIR_JSON)
    try:
        page = search_page(
            services.db,
            services.blobs,
            services.audit,
            caller,
            asked.query,
            after=asked.after,
            limit=asked.count,
        )
    except ArchiveMissing as exc:
        request.scope[ERROR_KIND] = exc.error_kind  # counted, and paged, as a missing blob
        outcome = operation_outcome(exc.message, "exception")
        return Response(outcome.model_dump_json(), status_code=500, media_type=FHIR_JSON)
    next_url = (
        str(request.url.include_query_params(_after=page.next_after))
        if page.next_after is not None
        else None
    )
    found = (entry for _, entry in page.entries)
    bundle = search_bundle(found, _fhir_base(request), str(request.url), next_url)
    return Response(bundle.model_dump_json(exclude_none=True), media_type=FHIR_JSON)
