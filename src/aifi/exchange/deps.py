"""FastAPI dependencies: the services of this app and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from aifi.exchange.audit import Actor
from aifi.exchange.auth import key_hash_of, verified_actor
from aifi.exchange.months import MONTH, Months
from aifi.exchange.services import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


#: `Authorization: Bearer <key>`, shown in /docs as the API's security scheme.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="api_key",
    description="The organisation's API key (`aifi_…`), given once by the national operator.",
)


async def get_caller(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Actor:
    """The caller; a key verified in the last seconds is answered without leaving the loop.
    Kept on the request too, for the access-log entry of a change refused later.

    Dependencies are coroutines so that FastAPI does not hand each one to a worker thread; only
    a key the cache does not know costs a thread (and a database lookup).
    """
    key_hash = key_hash_of(credentials.credentials if credentials is not None else None)
    known = services.keys.get(key_hash)
    if known is None:
        known = await run_in_threadpool(verified_actor, services.db, key_hash, services.keys)
    request.state.caller = known
    return known


async def get_months(
    since: Annotated[
        str | None, Query(pattern=MONTH, description="the first month (YYYY-MM, UTC) included")
    ] = None,
    until: Annotated[
        str | None, Query(pattern=MONTH, description="the last month (YYYY-MM, UTC) included")
    ] = None,
) -> Months:
    """The months a report covers; either end left out is open. `since` after `until` is
    refused (422) rather than answered with nothing."""
    return Months(since, until)


ServicesDep = Annotated[Services, Depends(get_services)]
CallerDep = Annotated[Actor, Depends(get_caller)]
MonthsDep = Annotated[Months, Depends(get_months)]
LeaseHeader = Annotated[str | None, Header(alias="X-Lease-Token")]
