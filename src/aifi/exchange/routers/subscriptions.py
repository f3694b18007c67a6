"""/subscriptions: which hospital may send studies to which product."""

from __future__ import annotations

from fastapi import APIRouter, Response

from aifi.exchange.deps import CallerDep, ServicesDep
from aifi.exchange.schemas import OrganisationKind, RoutesIn, SubscriptionIn, SubscriptionOut

router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])


@router.post("", status_code=201, response_model=SubscriptionOut)
def subscribe(body: SubscriptionIn, caller: CallerDep, services: ServicesDep) -> SubscriptionOut:
    return SubscriptionOut.model_validate(services.catalogue.subscribe(caller, body.product_id))


@router.get("", response_model=list[SubscriptionOut])
def list_subscriptions(caller: CallerDep, services: ServicesDep) -> list[SubscriptionOut]:
    """A hospital's subscriptions; a vendor's, which hospitals take its products, without
    their routing rules (a hospital's modalities and what it sends are not the vendor's to
    read, as the record of processing is not)."""
    listed = [
        SubscriptionOut.model_validate(s) for s in services.catalogue.list_subscriptions(caller)
    ]
    if caller.role == OrganisationKind.vendor:
        return [s.model_copy(update={"routes": None}) for s in listed]
    return listed


@router.put("/{product_id}/routes", response_model=SubscriptionOut)
def report_routes(
    product_id: str, body: RoutesIn, caller: CallerDep, services: ServicesDep
) -> SubscriptionOut:
    """The gateway reports which of its studies go to the product (for the record of
    processing a hospital's DPIA needs)."""
    return SubscriptionOut.model_validate(
        services.catalogue.report_routes(caller, product_id, body.routes)
    )


@router.delete("/{product_id}", status_code=204)
def unsubscribe(product_id: str, caller: CallerDep, services: ServicesDep) -> Response:
    services.catalogue.unsubscribe(caller, product_id)
    return Response(status_code=204)
