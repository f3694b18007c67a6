"""/products: the catalogue of AI products and their manifests."""

from __future__ import annotations

from fastapi import APIRouter

from aifi.exchange.catalogue import product_out
from aifi.exchange.deps import CallerDep, ServicesDep
from aifi.exchange.schemas import ProductManifest, ProductOut

router = APIRouter(prefix="/products", tags=["products"])


@router.post("", status_code=201, response_model=ProductOut)
def register_product(
    manifest: ProductManifest, caller: CallerDep, services: ServicesDep
) -> ProductOut:
    return product_out(services.catalogue.register_product(caller, manifest))


@router.get("", response_model=list[ProductOut])
def list_products(caller: CallerDep, services: ServicesDep) -> list[ProductOut]:
    return [product_out(p) for p in services.catalogue.visible_products(caller)]


@router.get("/{product_id}", response_model=ProductOut)
def get_product(product_id: str, caller: CallerDep, services: ServicesDep) -> ProductOut:
    return product_out(services.catalogue.visible_product(caller, product_id))
