"""An exchange on a temporary folder, driven through its HTTP API (FastAPI's TestClient).

Every exchange test runs on each backend the exchange supports: the embedded default (SQLite
and a local blob folder), PostgreSQL, and PostgreSQL with an S3 object store — real servers
on loopback (see scale.servers), so "same code, other backends" is checked, not assumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aifi.exchange.app import create_app
from aifi.exchange.settings import ExchangeSettings
from scale.exchange_api import (
    BACKENDS,
    CT,
    OPERATOR_KEY,
    Exchange,
    Org,
    backend_settings,
    pseudonymised_ct,
)

__all__ = ["CT", "OPERATOR_KEY", "Exchange", "Org", "pseudonymised_ct"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[ExchangeSettings]:
    chosen = backend_settings(backend, tmp_path, request.config)
    yield chosen.settings
    chosen.close()


@pytest.fixture
def exchange(settings: ExchangeSettings) -> Iterator[Exchange]:
    with TestClient(create_app(settings)) as client:
        yield Exchange(client)


@pytest.fixture
def make_ct(tmp_path: Path) -> Any:
    counter = iter(range(10_000))

    def make(**kwargs: Any) -> list[Path]:
        return pseudonymised_ct(tmp_path / f"ct{next(counter)}", **kwargs)

    return make


@pytest.fixture
def parties(exchange: Exchange) -> dict[str, Org]:
    """Two hospitals, two vendors, one product each, hospital A subscribed to vendor A's."""
    orgs = {
        "hospital_a": exchange.org("hospital-a", "hospital"),
        "hospital_b": exchange.org("hospital-b", "hospital"),
        "vendor_a": exchange.org("vendor-a", "vendor"),
        "vendor_b": exchange.org("vendor-b", "vendor"),
    }
    exchange.product(orgs["vendor_a"], "product-a")
    exchange.product(orgs["vendor_b"], "product-b")
    exchange.subscribe(orgs["hospital_a"], "product-a")
    return orgs
