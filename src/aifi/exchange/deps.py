"""FastAPI dependencies: the services of this app and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from aifi.exchange.audit import Actor
from aifi.exchange.auth import KEY_PREFIX, authenticate, hash_api_key
from aifi.exchange.services import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_caller(
    services: Annotated[Services, Depends(get_services)],
    authorization: Annotated[str | None, Header()] = None,
) -> Actor:
    """The caller; a key verified in the last seconds is answered without leaving the loop.

    Dependencies are coroutines so that FastAPI does not hand each one to a worker thread; only
    a key the cache does not know costs a thread (and a database lookup).
    """
    if authorization and authorization.startswith("Bearer "):
        key = authorization.removeprefix("Bearer ").strip()
        if key.startswith(KEY_PREFIX) and (known := services.keys.get(hash_api_key(key))):
            return known
    return await run_in_threadpool(authenticate, services.db, authorization, services.keys)


ServicesDep = Annotated[Services, Depends(get_services)]
CallerDep = Annotated[Actor, Depends(get_caller)]
LeaseHeader = Annotated[str | None, Header(alias="X-Lease-Token")]
