"""FastAPI dependencies: the services of this app and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from aifi.exchange.audit import Actor
from aifi.exchange.auth import authenticate
from aifi.exchange.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_caller(
    services: Annotated[Services, Depends(get_services)],
    authorization: Annotated[str | None, Header()] = None,
) -> Actor:
    return authenticate(services.db, authorization, services.keys)


ServicesDep = Annotated[Services, Depends(get_services)]
CallerDep = Annotated[Actor, Depends(get_caller)]
LeaseHeader = Annotated[str | None, Header(alias="X-Lease-Token")]
