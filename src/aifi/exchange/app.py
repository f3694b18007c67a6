"""The exchange's FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool

import aifi
from aifi.exchange.audit import ANCHOR_SECONDS, Actor, AuditAnchors
from aifi.exchange.audit_archive import AuditArchiver
from aifi.exchange.auth import Unauthorised
from aifi.exchange.deps import bearer, get_caller
from aifi.exchange.errors import ExchangeError, Invalid
from aifi.exchange.metrics import ERROR_KIND, ExchangeMetrics, MetricsMiddleware, TaskRounds
from aifi.exchange.refused_changes import refused_change
from aifi.exchange.refused_keys import FLUSH_SECONDS, RefusedKeys
from aifi.exchange.replica_changes import ReplicaChanges
from aifi.exchange.retention import Retention
from aifi.exchange.routers import (
    audit,
    data,
    jobs,
    metering,
    organisations,
    products,
    subscriptions,
)
from aifi.exchange.services import Services, build_services
from aifi.exchange.settings import ExchangeSettings
from aifi.exchange.threads import limit_request_threads

log = logging.getLogger(__name__)

#: How often held jobs are checked for a lease that ran out.
LEASE_SWEEP_SECONDS = 1.0
#: How often audit entries stored since the last round are linked into the hash chain.
AUDIT_LINK_SECONDS = 0.5


#: Something that adds routes to the exchange's app (the web pages and the clinical pillar's
#: API, :func:`aifi.web.mount`): passed in, so the exchange never imports what builds on it.
Extension = Callable[[FastAPI, Services], None]


def create_app(
    settings: ExchangeSettings | None = None,
    services: Services | None = None,
    extensions: Sequence[Extension] = (),
) -> FastAPI:
    """An exchange on `settings` (from the environment when omitted)."""
    services = services or build_services(settings or ExchangeSettings())
    metrics = ExchangeMetrics(services.db)
    retention = Retention(
        services.db, services.blobs, services.audit, services.settings, metrics=metrics
    )
    archiver = AuditArchiver(
        services.db, services.blobs, services.audit, services.settings, metrics=metrics
    )
    anchors = AuditAnchors(services.db)
    refused_keys = RefusedKeys(services.audit)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.notifier.bind(asyncio.get_running_loop())
        limit_request_threads(services.settings.request_threads)
        listener = None
        if services.db.is_postgresql:
            listener = ReplicaChanges(services.db.url, services.notifier)
            listener.start()
        sweep = services.settings.retention_sweep_seconds
        background: list[tuple[str, float, Callable[[], object]]] = [
            ("lease_expiry", LEASE_SWEEP_SECONDS, services.jobs.expire_leases),
            ("unfinished_expiry", sweep, services.jobs.expire_unfinished),
            ("retention", sweep, retention.sweep),
            ("audit_archive", sweep, archiver.sweep),
            ("triage_flags", sweep, services.jobs.read_triage_flags),
            ("product_versions", sweep, services.jobs.read_product_versions),
            ("audit_chain", AUDIT_LINK_SECONDS, services.audit.chain),
            ("audit_anchor", ANCHOR_SECONDS, anchors.write),
            ("refused_keys", FLUSH_SECONDS, refused_keys.flush),
        ]
        sweepers = [
            asyncio.create_task(_every(seconds, task, metrics.rounds(name), services.db.answers))
            for name, seconds, task in background
        ]
        # The scrape's one read that grows with the history, taken before Prometheus asks.
        warming = asyncio.create_task(_warm(metrics))
        with contextlib.suppress(Exception):  # where the chain stood at start, for the journal
            await run_in_threadpool(anchors.write)
        try:
            yield
        finally:
            for sweeper in (*sweepers, warming):
                sweeper.cancel()
            for sweeper in (*sweepers, warming):
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            if listener is not None:
                listener.stop()
            # A replica that stops leaves no refused keys only counted, nor an entry of its
            # own waiting to be linked (the chain's link is made whatever became of the other).
            with contextlib.suppress(Exception):
                await run_in_threadpool(refused_keys.flush, True)
            with contextlib.suppress(Exception):
                await run_in_threadpool(services.audit.chain)
                await run_in_threadpool(anchors.write)  # the chain's end, for the journal
            # Its connections closed, not left to the garbage collector: an exchange served
            # in-process (the demo, `ExchangeThread`) stops without holding its files open.
            services.db.dispose()

    app = FastAPI(
        title="AIFI exchange",
        version=aifi.__version__,
        description="The national hub between hospital gateways and AI products.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.metrics = metrics
    app.state.retention = retention
    app.state.archiver = archiver
    app.state.anchors = anchors
    app.state.refused_keys = refused_keys
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ExchangeError)
    async def _exchange_error(request: Request, exc: ExchangeError) -> JSONResponse:
        caller = getattr(request.state, "caller", None)
        # A 5xx (a full store) is the exchange's trouble, not a refusal of the caller.
        # Reads and changes alike: a read refused before or outside `AuditLog.reading` (a
        # role the route asks for, a query only hospitals may use) is a probe on record too.
        refusal = exc.status < 500 and not exc.audited
        if refusal and caller is not None:
            await run_in_threadpool(audit_refused, services, request, caller, exc.message)
        elif isinstance(exc, Unauthorised):  # no caller: the key is the refusal
            entries = refused_keys.refused(f"{request.method} {_route(request)}", exc)
            if entries:  # not one only counted: no thread for those
                await run_in_threadpool(refused_keys.store, entries)
        if exc.error_kind is not None:
            request.scope[ERROR_KIND] = exc.error_kind
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        # A database restart or failover, a busy SQLite file, an exhausted pool: transient.
        # 503 tells the gateway and the vendor SDK to retry; nothing was half-applied, since
        # every change is one transaction. A database whose disk is full is not transient:
        # 507, as for a full blob store, so that the operator is paged (BlobStoreFull).
        if database_full(exc):
            log.error("the database has no room to write: %s", exc)
            return JSONResponse(
                {"detail": "the exchange's database has no room to write; nothing was stored"},
                status_code=507,
                headers={"Retry-After": "60"},
            )
        return JSONResponse(
            {"detail": "the exchange's database is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    async def _database_refused(request: Request, exc: Exception) -> Response:
        # A server that cannot write now though it answers: one in recovery, which the
        # database URL still leads to during a switchover (the old primary come back as a
        # standby before DNS or the floating address moved). Retried as a database that is
        # down; any other internal error is the exchange's own, as it would be unhandled.
        if database_read_only(exc):
            return await _database_unavailable(request, exc)
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return PlainTextResponse("Internal Server Error", status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI refuses a body (or query) it cannot parse or validate before the route
        # runs: a body that is not JSON even before the caller's key is read. Such a refusal
        # is logged as the route's own would be, once the key is known to be a caller's; a
        # key that is none is refused as such (401), as it is when the body does parse.
        caller = getattr(request.state, "caller", None)
        if caller is None and _takes_key(getattr(request.scope.get("route"), "dependant", None)):
            try:
                caller = await get_caller(request, services, await bearer(request))
            except Unauthorised as refused:
                return await _exchange_error(request, refused)
            except Exception:  # the database down: the caller still learns what was wrong
                log.warning("the caller of an invalid request was not found", exc_info=True)
        if caller is not None:
            invalid = Invalid(f"invalid request: {_invalid_fields(exc)}")
            await run_in_threadpool(audit_refused, services, request, caller, invalid.message)
        return await request_validation_exception_handler(request, exc)

    for transient in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(transient, _database_unavailable)
    app.add_exception_handler(InternalError, _database_refused)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": aifi.__version__}

    # Routes are matched in order, one by one: the busiest (a job and its data) come first.
    for module in (jobs, data, organisations, products, subscriptions, metering, audit):
        app.include_router(module.router)
    for extend in extensions:
        extend(app, services)
    return app


def audit_refused(services: Services, request: Request, caller: Actor, message: str) -> None:
    """Store a refusal the services did not store themselves (see
    :mod:`aifi.exchange.refused_changes`), or a request refused before its route ran; the
    caller gets its answer even if this fails. The web pages store theirs so too."""
    entry = refused_change(request.method, _route(request), request.path_params, message)
    try:
        services.audit.record(
            caller,
            entry.action,
            entry.object_type,
            entry.object_id,
            outcome="refused",
            detail=entry.detail,
        )
    except Exception:
        log.exception("could not store a refused change in the access log: %s", entry)


def _route(request: Request) -> str:
    """The request's route template (``/jobs/{job_id}``), else its path."""
    return str(getattr(request.scope.get("route"), "path", request.url.path))


def _takes_key(dependant: Dependant | None) -> bool:
    """Whether a route (its dependencies, theirs...) asks for the caller's API key."""
    if dependant is None:
        return False
    return dependant.call is get_caller or any(_takes_key(d) for d in dependant.dependencies)


def _invalid_fields(exc: RequestValidationError, named: int = 3) -> str:
    """What FastAPI found wrong, for the access log: where and what (``body.12: JSON decode
    error``), never the value sent (a body's values may be a patient's)."""
    errors = list(exc.errors())
    found = "; ".join(
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', '')}"
        for error in errors[:named]
    )
    return found + (f"; and {len(errors) - named} more" if len(errors) > named else "")


def database_read_only(exc: BaseException) -> bool:
    """Whether PostgreSQL refused a write because the server is read-only: SQLSTATE 25006
    (read_only_sql_transaction), as a standby answers every write."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == "25006"


def database_full(exc: BaseException) -> bool:
    """Whether the database refused a write for lack of disk: PostgreSQL's SQLSTATE 53100
    (disk_full), SQLite's SQLITE_FULL."""
    cause = getattr(exc, "orig", None)
    return (
        getattr(cause, "sqlstate", None) == "53100"
        or getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    )


async def _warm(metrics: ExchangeMetrics) -> None:
    """Count the jobs that ended long ago; if the database cannot answer yet, the first
    scrape counts them instead."""
    try:
        await run_in_threadpool(metrics.warm)
    except Exception:
        log.warning("the ended jobs could not be counted at start", exc_info=True)


async def _every(
    seconds: float,
    task: Callable[[], object],
    rounds: TaskRounds,
    database_answers: Callable[[], bool],
) -> None:
    """Run `task` in a worker thread every `seconds`; a failure is logged and counted, noting
    whether the database answered just after it, and waits for the next round."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(task)
        except Exception:
            log.warning("periodic %s failed", getattr(task, "__qualname__", task), exc_info=True)
            answered = await run_in_threadpool(database_answers)
            rounds.went(False, database_answered=answered)
        else:
            rounds.went(True)
