"""Server-rendered pages and the clinical pillar's API, added to the exchange's app.

`mount(app, services)` is an exchange extension (see :data:`aifi.exchange.app.Extension`): the
exchange runs without it, and `aifi exchange` and the demo add it. It brings the admission,
feedback, evaluation and priority routes (JSON, for API keys) and the web pages at /ui (HTML,
for people who log in).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from aifi.exchange.app import audit_refused
from aifi.exchange.errors import ExchangeError
from aifi.exchange.services import Services
from aifi.governance.service import ClinicalService
from aifi.web import api, pages
from aifi.web.session import LoginRequired, WebUser


def mount(app: FastAPI, services: Services) -> None:
    """Add the clinical pillar's API and the web pages to an exchange app."""
    app.state.clinical = ClinicalService(
        services.db, services.catalogue, services.audit, services.settings
    )
    secret = services.settings.session_secret or secrets.token_urlsafe(32)
    app.add_middleware(
        OnlyUnder,
        prefix=pages.router.prefix,
        middleware=SessionMiddleware,
        options={
            "secret_key": secret,
            "session_cookie": "aifi_session",
            "same_site": "strict",
            "https_only": False,
            "max_age": 8 * 3600,
        },
    )

    @app.exception_handler(LoginRequired)
    async def _login(_request: Request, _exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse("/ui/login", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException) -> Response:
        # A page refusing someone logged in (another hospital's job, an operator asking for
        # pixels) is a probe on record, as the API's refusals are; one the services stored
        # already (the page passes their refusal on) is not stored twice.
        user = _logged_in(request)
        stored = isinstance(exc.__cause__, ExchangeError) and exc.__cause__.audited
        if user is not None and exc.status_code < 500 and not stored:
            await run_in_threadpool(audit_refused, services, request, user.actor, str(exc.detail))
        return await http_exception_handler(request, exc)

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    app.include_router(api.router)
    app.include_router(pages.router)


def _logged_in(request: Request) -> WebUser | None:
    """Who is logged in, for a request to a page (route matched, under /ui) only."""
    if request.scope.get("route") is None or "session" not in request.scope:
        return None
    data = request.session.get("user")
    return WebUser(**data) if data else None


class OnlyUnder:
    """Run `middleware` for requests under `prefix` only, and let the others past it.

    Only the pages keep a login session; the API's requests (nearly all of them, and the
    busiest) carry an API key and need no cookie parsed or session signed.
    """

    def __init__(self, app: ASGIApp, prefix: str, middleware: Any, options: dict[str, Any]) -> None:
        self._app = app
        self._prefix = prefix
        self._wrapped: ASGIApp = middleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path == self._prefix or path.startswith(self._prefix + "/"):
            await self._wrapped(scope, receive, send)
        else:
            await self._app(scope, receive, send)
