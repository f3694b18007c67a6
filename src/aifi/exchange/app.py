"""The exchange's FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

import aifi
from aifi.exchange.errors import ExchangeError
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

#: How often held jobs are checked for a lease that ran out.
LEASE_SWEEP_SECONDS = 1.0


def create_app(
    settings: ExchangeSettings | None = None, services: Services | None = None
) -> FastAPI:
    """An exchange on `settings` (from the environment when omitted)."""
    services = services or build_services(settings or ExchangeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.notifier.bind(asyncio.get_running_loop())
        sweeper = asyncio.create_task(_sweep_leases(services))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    app = FastAPI(
        title="AIFI exchange",
        version=aifi.__version__,
        description="The national hub between hospital gateways and AI products.",
        lifespan=lifespan,
    )
    app.state.services = services

    @app.exception_handler(ExchangeError)
    async def _exchange_error(_request: Request, exc: ExchangeError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": aifi.__version__}

    for module in (organisations, products, subscriptions, jobs, data, metering, audit):
        app.include_router(module.router)
    return app


async def _sweep_leases(services: Services) -> None:
    while True:
        await asyncio.sleep(LEASE_SWEEP_SECONDS)
        with contextlib.suppress(Exception):
            await run_in_threadpool(services.jobs.expire_leases)
