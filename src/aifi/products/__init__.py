"""Reference AI products, built on the vendor SDK. Reference algorithms: not for clinical use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aifi.vendor import Handler


@dataclass(frozen=True)
class ReferenceProduct:
    """A product's manifest (for the exchange's catalogue), its handler and the version the
    handler runs (for the worker)."""

    manifest: Callable[[str], dict[str, Any]]  # vendor id -> manifest
    handler: Handler
    version: str


def reference_products() -> dict[str, ReferenceProduct]:
    """Every reference product by id (imported lazily: each may pull in numpy, highdicom)."""
    from aifi.products import brain_volumetry, ich_triage, lung_nodules, tissue_volume

    return {
        module.PRODUCT_ID: ReferenceProduct(module.manifest, module.run, module.VERSION)
        for module in (tissue_volume, brain_volumetry, lung_nodules, ich_triage)
    }
