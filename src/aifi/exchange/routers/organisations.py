"""/organisations: hospitals, vendors and the operator, with their API keys."""

from __future__ import annotations

from fastapi import APIRouter

from aifi.exchange.deps import CallerDep, ServicesDep
from aifi.exchange.schemas import OrganisationCreated, OrganisationIn, OrganisationOut

router = APIRouter(prefix="/organisations", tags=["organisations"])


@router.post("", status_code=201, response_model=OrganisationCreated)
def create_organisation(
    body: OrganisationIn, caller: CallerDep, services: ServicesDep
) -> OrganisationCreated:
    org, key = services.catalogue.create_organisation(caller, body)
    return OrganisationCreated(organisation=OrganisationOut.model_validate(org), api_key=key)


@router.get("", response_model=list[OrganisationOut])
def list_organisations(caller: CallerDep, services: ServicesDep) -> list[OrganisationOut]:
    return [
        OrganisationOut.model_validate(o) for o in services.catalogue.list_organisations(caller)
    ]


@router.post("/{organisation_id}/keys", status_code=201)
def rotate_key(organisation_id: str, caller: CallerDep, services: ServicesDep) -> dict[str, str]:
    return {"api_key": services.catalogue.rotate_key(caller, organisation_id)}
