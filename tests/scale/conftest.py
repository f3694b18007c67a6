"""Fixtures for scale-out tests: real PostgreSQL, an S3 store, exchanges on each backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aifi.exchange.app import create_app
from scale.exchange_api import BACKENDS, Exchange, Org, backend_settings, pseudonymised_ct
from scale.servers import PostgresServer, S3Server, shared_postgres, shared_s3

ExchangeFactory = Callable[..., Exchange]


@pytest.fixture
def postgres(request: pytest.FixtureRequest) -> PostgresServer:
    return shared_postgres(request.config)


@pytest.fixture
def s3(request: pytest.FixtureRequest) -> S3Server:
    return shared_s3(request.config)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def exchange_on(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ExchangeFactory]:
    """Start an exchange on this test's backend with extra settings (e.g. retention)."""
    opened: list[tuple[Any, Any]] = []

    def start(**extra: Any) -> Exchange:
        chosen = backend_settings(backend, tmp_path / f"x{len(opened)}", request.config, **extra)
        client = TestClient(create_app(chosen.settings))
        client.__enter__()
        opened.append((client, chosen))
        return Exchange(client)

    yield start
    for client, chosen in reversed(opened):
        client.__exit__(None, None, None)
        chosen.close()


@pytest.fixture
def make_ct(tmp_path: Path) -> Any:
    counter = iter(range(10_000))

    def make(**kwargs: Any) -> list[Path]:
        return pseudonymised_ct(tmp_path / f"ct{next(counter)}", **kwargs)

    return make


def set_up_parties(exchange: Exchange) -> dict[str, Org]:
    """One hospital subscribed to one vendor's product."""
    orgs = {
        "hospital": exchange.org("hospital-a", "hospital"),
        "vendor": exchange.org("vendor-a", "vendor"),
    }
    exchange.product(orgs["vendor"], "product-a")
    exchange.subscribe(orgs["hospital"], "product-a")
    return orgs


def lease_headers(vendor: Org, claim: dict[str, Any]) -> dict[str, str]:
    return {"X-Lease-Token": claim["lease_token"], **vendor.headers}


def finish_job(exchange: Exchange, vendor: Org, claim: dict[str, Any], folder: Path) -> bytes:
    """Do a vendor's work on a claimed job: fetch inputs, make a real SR, upload, complete."""
    from aifi.products.tissue_volume import run as tissue_volume
    from aifi.vendor import JobContext

    job_id = claim["job"]["id"]
    headers = lease_headers(vendor, claim)
    inputs = folder / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for item in exchange.client.get(f"/jobs/{job_id}/inputs", headers=headers).json():
        uid = item["sop_instance_uid"]
        body = exchange.client.get(f"/jobs/{job_id}/inputs/{uid}", headers=headers)
        assert body.status_code == 200, body.text
        (inputs / f"{uid}.dcm").write_bytes(body.content)
    output = folder / "out"
    output.mkdir(parents=True, exist_ok=True)
    result = tissue_volume(JobContext(job={}, inputs=sorted(inputs.iterdir()), output_dir=output))
    sr = result.files[0].path.read_bytes()
    put = exchange.client.put(f"/jobs/{job_id}/results/sr.dcm", content=sr, headers=headers)
    assert put.status_code == 201, put.text
    done = exchange.client.post(
        f"/jobs/{job_id}/complete",
        json={"lease_token": claim["lease_token"]},
        headers=vendor.headers,
    )
    assert done.status_code == 200, done.text
    return sr
