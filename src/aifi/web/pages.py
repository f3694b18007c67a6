"""The pages: one router, each handler thin — read through the exchange's services (which wall
tenants and audit every access), render a template."""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from aifi.exchange import backlog
from aifi.exchange.audit import check_chain, newest_anchor
from aifi.exchange.audit_search import (
    PAGE_SECONDS,
    AuditQuery,
    SearchPage,
    log_listing,
    search_page,
)
from aifi.exchange.catalogue import product_out
from aifi.exchange.clock import utcnow
from aifi.exchange.deps import ServicesDep
from aifi.exchange.errors import ArchiveMissing, ExchangeError, Invalid, NotFound
from aifi.exchange.jobs import job_out
from aifi.exchange.metrics import ERROR_KIND
from aifi.exchange.models import AuditEntry, Job, Organisation
from aifi.exchange.months import Months
from aifi.exchange.schemas import ENDED_STATES, JobState, OrganisationKind
from aifi.exchange.services import Services
from aifi.governance import AreaScore, allowed_actions
from aifi.governance.templating import duration
from aifi.results.delivery import NOT_DELIVERED_BECAUSE, Delivery
from aifi.results.key_image import render_result_key_image
from aifi.web import p_charts
from aifi.web.deps import ClinicalDep
from aifi.web.session import UserDep, WebUser

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["duration"] = duration
router = APIRouter(prefix="/ui", include_in_schema=False)

AGREEMENTS = ("agree", "partly", "disagree")
#: What became of a completed job's results at the hospital, in the job page's words.
DELIVERY_SAID = {
    Delivery.delivered: "results delivered to the PACS",
    **{kind: f"results not delivered: {why}" for kind, why in NOT_DELIVERED_BECAUSE.items()},
}
#: Jobs a live list shows, latest first.
LIVE_JOBS = 200
#: The national overview counts the jobs that ended this many days back.
OVERVIEW_DAYS = 30
#: States of jobs still under way, counted whatever their age.
UNDER_WAY = tuple(state.value for state in JobState if state not in ENDED_STATES)


def page(
    request: Request, name: str, user: WebUser | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"user": user, **context}, status_code=status_code
    )


# login -------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", None, error=None)


@router.post("/login", response_model=None)
def login(
    request: Request,
    clinical: ClinicalDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
) -> Response:
    found = clinical.login(username, password)
    if found is None:
        response = page(request, "login.html", None, error="Unknown user or wrong password.")
        response.status_code = 401
        return response
    user, actor = found
    request.session["user"] = {
        "username": user.username,
        "display_name": user.display_name,
        "user_role": user.role,
        "organisation_id": actor.organisation_id,
        "organisation_role": actor.role,
    }
    return RedirectResponse("/ui/", status_code=303)


@router.post("/logout")
def logout(request: Request) -> RedirectResponse:
    request.session.clear()
    return RedirectResponse("/ui/login", status_code=303)


# home: one per kind of organisation -------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home(request: Request, user: UserDep, services: ServicesDep) -> HTMLResponse:
    actor = user.actor
    if user.organisation_role == OrganisationKind.operator:
        return _national_overview(request, user, services)
    jobs = services.jobs.list(actor, limit=LIVE_JOBS, newest_first=True)
    if user.organisation_role == OrganisationKind.hospital:
        return page(
            request, "hospital_home.html", user, jobs=[job_out(j, user.actor) for j in jobs]
        )
    own = [
        product_out(p)
        for p in services.catalogue.list_products()
        if p.vendor_id == user.organisation_id
    ]
    return page(
        request, "vendor_home.html", user, products=own,
        jobs=[job_out(j, user.actor) for j in jobs],
    )  # fmt: skip


def _national_overview(request: Request, user: WebUser, services: Services) -> HTMLResponse:
    """Jobs under way, and jobs ended in the last `OVERVIEW_DAYS` per hospital and product,
    counted in the database: the table keeps every job ever (about ten million a year). Beside
    each hospital, what it has waiting now: jobs no vendor has claimed, outcomes its gateway
    has not collected."""
    since = utcnow() - timedelta(days=OVERVIEW_DAYS)
    with services.db.session() as session:
        hospitals = list(
            session.scalars(
                select(Organisation)
                .where(Organisation.kind == OrganisationKind.hospital.value)
                .order_by(Organisation.id)
            )
        )
        # The last days' ends first, then grouped: asked in one statement, SQLite (without
        # statistics) read every job in the grouping's order instead, 0.65 s against 1 ms
        # with a million.
        recent = (
            select(Job.hospital_id, Job.product_id, Job.state)
            .where(Job.ended_at >= since)
            .cte("recent")
            .prefix_with("MATERIALIZED", dialect="sqlite")  # SQLite 3.35 or later
        )
        groups = (recent.c.hospital_id, recent.c.product_id, recent.c.state)
        ended = session.execute(select(*groups, func.count()).group_by(*groups)).all()
        under_way = session.execute(
            select(Job.state, func.count())
            # Always so under way: it reads those jobs only (ix_jobs_ended at NULL).
            .where(Job.ended_at.is_(None), Job.state.in_(UNDER_WAY))
            .group_by(Job.state)
        ).all()
        held = backlog.by_hospital(session, utcnow())
    grid: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    states: Counter[str] = Counter()
    for hospital_id, product_id, state, count in ended:
        grid[(hospital_id, product_id)][state] += count
        states[state] += count
    for state, count in under_way:
        states[state] += count
    return page(
        request, "operator_home.html", user,
        hospitals=hospitals, products=services.catalogue.list_products(), grid=grid,
        states=states, days=OVERVIEW_DAYS, held=held,
        not_collecting=backlog.NOT_COLLECTING_SECONDS,
    )  # fmt: skip


# catalogue and admission ------------------------------------------------------------------


@router.get("/catalogue", response_class=HTMLResponse)
def catalogue(request: Request, user: UserDep, services: ServicesDep) -> HTMLResponse:
    products = [product_out(p) for p in services.catalogue.list_products()]
    if user.organisation_role == OrganisationKind.vendor:
        products = [p for p in products if p.vendor == user.organisation_id]
    elif user.organisation_role == OrganisationKind.hospital:
        products = [p for p in products if p.status == "admitted"]
    return page(request, "catalogue.html", user, products=products)


@router.get("/products/{product_id}", response_class=HTMLResponse)
def product_page(
    request: Request, product_id: str, user: UserDep, services: ServicesDep, clinical: ClinicalDep
) -> HTMLResponse:
    product = _product_or_404(services, user, product_id)
    dossier, gaps, state = clinical.dossier(user.actor, product_id)
    history = clinical.admission_history(user.actor, product_id)
    record = None
    if user.organisation_role != OrganisationKind.vendor:
        record = clinical.record(user.actor, product_id).to_html()
    actions = [a.value for a in allowed_actions(state, user.organisation_role)]
    return page(
        request, "product.html", user, product=product, dossier=dossier, gaps=gaps,
        state=state, history=history, record=record, actions=actions,
    )  # fmt: skip


@router.post("/products/{product_id}/admission")
def admission(
    product_id: str,
    user: UserDep,
    services: ServicesDep,
    clinical: ClinicalDep,
    action: Annotated[str, Form()],
    note: Annotated[str, Form()] = "",
) -> Response:
    _product_or_404(services, None if user.organisation_role != "vendor" else user, product_id)
    try:
        clinical.admission(user.actor, product_id, action, note)
    except ExchangeError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    return RedirectResponse(f"/ui/products/{product_id}", status_code=303)


@router.get("/products/{product_id}/conformance", response_class=HTMLResponse)
def conformance_report(
    product_id: str, user: UserDep, services: ServicesDep, clinical: ClinicalDep
) -> HTMLResponse:
    _product_or_404(services, user, product_id)
    try:
        return HTMLResponse(clinical.conformance_html(user.actor, product_id))
    except NotFound as exc:
        raise HTTPException(404, exc.message) from exc


def _product_or_404(services: Any, user: WebUser | None, product_id: str) -> Any:
    try:
        product = product_out(services.catalogue.get_product(product_id))
    except NotFound as exc:
        raise HTTPException(404, exc.message) from exc
    if (
        user is not None
        and user.organisation_role == OrganisationKind.vendor
        and product.vendor != user.organisation_id
    ):
        raise HTTPException(404, f"no product {product_id!r}")
    return product


# jobs, results, feedback ------------------------------------------------------------------


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, user: UserDep, services: ServicesDep) -> HTMLResponse:
    jobs = [
        job_out(j, user.actor)
        for j in services.jobs.list(user.actor, limit=LIVE_JOBS, newest_first=True)
    ]
    return page(request, "jobs.html", user, jobs=jobs)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, job_id: str, user: UserDep, services: ServicesDep, clinical: ClinicalDep
) -> HTMLResponse:
    try:
        job = job_out(services.jobs.get(user.actor, job_id), user.actor)
    except NotFound as exc:
        raise HTTPException(404, exc.message) from exc
    results: list[Any] = []
    feedback = None
    if user.organisation_role == OrganisationKind.hospital and job.state == "completed":
        results = services.transfers.list_results(user.actor, job_id, None)
        feedback = clinical.feedback_for(user.actor, job_id)
    has_seg = any(r.kind == "seg" and r.purged_at is None for r in results)
    return page(
        request, "job.html", user, job=job, results=results, feedback=feedback,
        has_seg=has_seg, agreements=AGREEMENTS, delivery_said=DELIVERY_SAID,
    )  # fmt: skip


@router.get("/jobs/{job_id}/key-image.png")
async def key_image(job_id: str, user: UserDep, services: ServicesDep) -> Response:
    """Drawn from the pseudonymised SEG and inputs, for the job's own hospital only."""
    if user.organisation_role != OrganisationKind.hospital:
        raise HTTPException(403, "key images are for the hospital that sent the study")
    png = await run_in_threadpool(_render_key_image, services, user, job_id)
    if png is None:
        raise HTTPException(404, f"job {job_id} has no segmentation to show")
    return Response(png, media_type="image/png")


def _render_key_image(services: Any, user: WebUser, job_id: str) -> bytes | None:
    """The key image, or None when there is none to draw: no SEG, or its SEG or inputs no
    longer held (purged by retention, or missing from the store). Drawn from pixels, it is on
    record as a read of the job's results, naming the patient pseudonym."""
    try:
        job = services.jobs.get(user.actor, job_id, audit=False)  # the page read it
        results = services.transfers.list_results(user.actor, job_id, None)
        inputs = {
            i.sop_instance_uid: i for i in services.transfers.list_inputs(user.actor, job_id, None)
        }
    except ExchangeError:
        return None
    paths = [
        services.blobs.local_path(r.blob_key)
        for r in results
        if r.kind == "seg" and r.purged_at is None
    ]  # fmt: skip
    paths = [p for p in paths if p is not None]

    def source(uid: str) -> Path | None:
        row = inputs.get(uid)
        return services.blobs.local_path(row.blob_key) if row is not None else None

    target = io.BytesIO()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        try:
            out = render_result_key_image(paths, source, Path(folder) / "key.png")
        except FileNotFoundError:  # taken by retention meanwhile, or lost from the store
            return None
        if out is None:
            return None
        target.write(out.read_bytes())
    services.audit.record(
        user.actor, "read", "result", f"{job_id}/key-image.png",
        patient_pseudonym=job.patient_pseudonym, detail="key image drawn from the SEG",
    )  # fmt: skip
    return target.getvalue()


@router.post("/jobs/{job_id}/feedback")
def feedback(
    job_id: str,
    user: UserDep,
    clinical: ClinicalDep,
    agreement: Annotated[str, Form()],
    radiologist_positive: Annotated[str, Form()] = "",
    correction: Annotated[str, Form()] = "",
) -> Response:
    if agreement not in AGREEMENTS:
        raise HTTPException(422, f"agreement must be one of {', '.join(AGREEMENTS)}")
    verdict = {"yes": True, "no": False}.get(radiologist_positive)
    try:
        clinical.give_feedback(user.actor, job_id, agreement, verdict, correction, user.username)
    except ExchangeError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


# evaluation, priorities, audit ------------------------------------------------------------


#: The evaluation page opens on a year of practice: the last twelve months, this one included.
EVALUATION_MONTHS = 12


@router.get("/evaluation", response_class=HTMLResponse)
def evaluation(
    request: Request,
    user: UserDep,
    clinical: ClinicalDep,
    since: str | None = None,
    until: str | None = None,
    by_version: bool = False,
) -> HTMLResponse:
    """`since`/`until` as YYYY-MM (the form's month fields); neither given: the last twelve
    months; both left empty: all time. `by_version`: a row per product version."""
    try:
        if since is None and until is None:
            months = Months.last(EVALUATION_MONTHS, utcnow())
        else:
            months = Months(since or None, until or None)
    except Invalid as exc:
        return page(
            request,
            "evaluation.html",
            user,
            status_code=422,
            error=exc.message,
            # The months as typed, to correct; no figures under a period that was refused.
            typed={"since": since or "", "until": until or ""},
            by_version=by_version,
            months=Months(),
            shortcuts=Months.shortcuts(utcnow()),
            rows=[],
            alerts=[],
            charts=[],
        )
    rows = clinical.evaluation(user.actor, months, by_version=by_version)
    charts = clinical.drift(user.actor, months=months)
    alerts = [alert for chart in charts for alert in chart.alerts]
    hospital_user = user.organisation_role == OrganisationKind.hospital
    drawings = sorted(
        (p_charts.draw(c) for c in charts if p_charts.worth_showing(c, hospital_user)),
        key=lambda d: (-d.alerts, d.title),
    )
    return page(
        request,
        "evaluation.html",
        user,
        error=None,
        months=months,
        by_version=by_version,
        shortcuts=Months.shortcuts(utcnow()),
        rows=rows,
        alerts=alerts,
        charts=drawings,
    )


@router.get("/priorities", response_class=HTMLResponse)
def priorities(request: Request, user: UserDep, clinical: ClinicalDep) -> HTMLResponse:
    ranked = clinical.priorities(user.actor)
    return page(request, "priorities.html", user, ranked=ranked)


@router.post("/priorities")
def score_area(
    user: UserDep,
    clinical: ClinicalDep,
    area: Annotated[str, Form()],
    volume: Annotated[int, Form()],
    benefit: Annotated[int, Form()],
    urgency: Annotated[int, Form()],
    readiness: Annotated[int, Form()],
) -> Response:
    try:
        score = AreaScore(
            hospital_id=user.organisation_id, area=area, volume=volume, benefit=benefit,
            urgency=urgency, readiness=readiness,
        )  # fmt: skip
        clinical.score_area(user.actor, score)
    except ExchangeError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return RedirectResponse("/ui/priorities", status_code=303)


#: Entries a search on the audit page shows at a time.
AUDIT_FOUND_PAGE = 200


@router.get("/audit", response_class=HTMLResponse)
def audit(
    request: Request,
    user: UserDep,
    services: ServicesDep,
    patient: str = "",
    organisation: str = "",
    object_id: Annotated[str, Query(alias="object")] = "",
    since: str = "",
    until: str = "",
    after: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    """The log's newest entries and its check; with a patient pseudonym, an organisation or
    an object, also the privacy officer's search, in the table and the archives alike
    (`since`/`until` as YYYY-MM-DD, UTC days: from `since`, before `until`). Showing the
    newest entries is logged as a listing, the search as a search."""
    if user.organisation_role != OrganisationKind.operator:
        raise HTTPException(403, "the audit log is for the national operator")
    typed = {"patient": patient, "organisation": organisation, "object": object_id}
    typed |= {"since": since, "until": until}
    found: SearchPage | None = None
    refusal = missing = None
    if any(typed.values()):
        try:
            query = AuditQuery(
                patient.strip() or None,
                organisation.strip() or None,
                object_id.strip() or None,
                since=_utc_day("since", since),
                until=_utc_day("until", until),
            )
        except ValueError as exc:
            refusal = str(exc)
        else:
            refusal = query.refusal()
            if refusal is None:
                try:
                    found = search_page(
                        services.db, services.blobs, services.audit, user.actor, query,
                        after=after, limit=AUDIT_FOUND_PAGE,
                    )  # fmt: skip
                except ArchiveMissing as exc:
                    missing = exc.message
                    request.scope[ERROR_KIND] = exc.error_kind  # paged as a missing blob
    services.audit.chain()
    with services.db.session() as session:
        latest = list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.chain_seq.is_not(None))
                .order_by(AuditEntry.chain_seq.desc())
                .limit(300)
            )
        )
    log_listing(services.audit, user.actor, latest, where="the audit page")
    check = check_chain(services.db)  # a batch at a time: the log runs to billions
    more = urlencode({**typed, "after": found.next_after}) if found and found.next_after else None
    return page(
        request, "audit.html", user, status_code=422 if refusal else 500 if missing else 200,
        entries=latest, total=check.entries, problems=check.problems, missing=missing,
        archives=check.archives, archived=check.archived_entries,
        anchor=newest_anchor(services.db), typed=typed, refusal=refusal, found=found,
        more=more, after=after, page_seconds=PAGE_SECONDS,
    )  # fmt: skip


def _utc_day(name: str, typed: str) -> datetime | None:
    """A day typed into the search form (YYYY-MM-DD), as the moment it begins in UTC."""
    if not typed.strip():
        return None
    try:
        return datetime.combine(date.fromisoformat(typed.strip()), time(), UTC)
    except ValueError:
        raise ValueError(f"{name}: {typed!r} is not a day (YYYY-MM-DD)") from None


# business case ----------------------------------------------------------------------------

BUSINESS_EXAMPLE = "netherlands-pilot"


@router.get("/business-case", response_class=HTMLResponse)
def business_case(request: Request, user: UserDep) -> HTMLResponse:
    if user.organisation_role != OrganisationKind.operator:
        raise HTTPException(403, "the business case is the national operator's")
    return page(request, "business_case.html", user, example=BUSINESS_EXAMPLE)


@router.get("/business-case/report", response_class=HTMLResponse)
async def business_case_report(user: UserDep, services: ServicesDep) -> HTMLResponse:
    """The shipped example, its volumes replaced by what this exchange metered."""
    if user.organisation_role != OrganisationKind.operator:
        raise HTTPException(403, "the business case is the national operator's")
    html = await run_in_threadpool(_business_report, services, user)
    return HTMLResponse(html)


def _business_report(services: Any, user: WebUser) -> str:
    from aifi.business import analyse, apply_metering, load_case
    from aifi.business.html_report import render_html
    from aifi.business.metering import MeteringRow
    from aifi.exchange.metering import metering_rows

    case = load_case(BUSINESS_EXAMPLE)
    rows = [
        MeteringRow.model_validate(row.model_dump())
        for row in metering_rows(services.db, user.actor, Months())
    ]
    metering = None
    if rows:
        case, metering = apply_metering(case, rows, "this exchange's metering")
    return render_html(analyse(case, origin=BUSINESS_EXAMPLE, draws=2000, metering=metering))
