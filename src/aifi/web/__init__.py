"""Server-rendered pages and the clinical pillar's API, added to the exchange's app.

`mount(app, services)` is an exchange extension (see :data:`aifi.exchange.app.Extension`): the
exchange runs without it, and `aifi exchange` and the demo add it. It brings the admission,
feedback, evaluation and priority routes (JSON, for API keys) and the web pages at /ui (HTML,
for people who log in).
"""

from __future__ import annotations

import secrets

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.middleware.sessions import SessionMiddleware

from aifi.exchange.services import Services
from aifi.governance.service import ClinicalService
from aifi.web import api, pages
from aifi.web.session import LoginRequired


def mount(app: FastAPI, services: Services) -> None:
    """Add the clinical pillar's API and the web pages to an exchange app."""
    app.state.clinical = ClinicalService(
        services.db, services.catalogue, services.audit, services.settings
    )
    secret = services.settings.session_secret or secrets.token_urlsafe(32)
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie="aifi_session",
        same_site="strict",
        https_only=False,
        max_age=8 * 3600,
    )

    @app.exception_handler(LoginRequired)
    async def _login(_request: Request, _exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse("/ui/login", status_code=303)

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    app.include_router(api.router)
    app.include_router(pages.router)
