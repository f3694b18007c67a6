"""/organisations: hospitals, vendors and the operator, with their API keys."""

from __future__ import annotations

from fastapi import APIRouter

from aifi.exchange.deps import CallerDep, ServicesDep
from aifi.exchange.schemas import (
    ApiKeyOut,
    OrganisationCreated,
    OrganisationIn,
    OrganisationOut,
    RotatedKey,
)

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


@router.post("/{organisation_id}/keys", status_code=201, response_model=RotatedKey)
def rotate_key(organisation_id: str, caller: CallerDep, services: ServicesDep) -> RotatedKey:
    """A new key, shown once, with its id as the key listing shows it: the operator (or the
    organisation) who revokes the old keys afterwards can tell which listed key is the new
    one, which the labels alone do not tell after a second rotation."""
    key, key_id = services.catalogue.rotate_key(caller, organisation_id)
    return RotatedKey(api_key=key, id=key_id)


@router.get("/{organisation_id}/keys", response_model=list[ApiKeyOut])
def list_keys(organisation_id: str, caller: CallerDep, services: ServicesDep) -> list[ApiKeyOut]:
    """The organisation's keys, oldest first, revoked ones too, never the keys themselves:
    the operator's for any organisation, an organisation's for its own (404 to any other)."""
    return [
        ApiKeyOut.model_validate(key)
        for key in services.catalogue.list_keys(caller, organisation_id)
    ]


@router.delete("/{organisation_id}/keys/{key_id}", response_model=ApiKeyOut)
def revoke_key(
    organisation_id: str, key_id: int, caller: CallerDep, services: ServicesDep
) -> ApiKeyOut:
    """Revoke a key: answered with the key, its `revoked_at` set; again alike when it was
    revoked already. DELETE, as `DELETE /subscriptions/{product}` ends a subscription: the key
    goes out of use though its row stays on record, and DELETE is idempotent as this is.
    409 for the organisation's last live key (rotate first); 404 for another's key."""
    return ApiKeyOut.model_validate(services.catalogue.revoke_key(caller, organisation_id, key_id))
