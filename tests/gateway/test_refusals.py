"""What the gateway does when the exchange refuses a job or cannot be reached: the job ends
with the exchange's reason, or waits and retries — it is never lost silently."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from aifi.gateway.config import load_config
from aifi.gateway.exchange_client import GatewayClient
from aifi.gateway.metrics import gateway_registry
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.vendor import VendorClient
from support.hospital import Hospital
from support.national import VENDOR, National, gateway_config
from support.peers import free_port, storescu

pytestmark = pytest.mark.peer


def routed_to(config_path: Path, products: list[str], url: str | None = None) -> Path:
    config = yaml.safe_load(config_path.read_text())
    config["routes"] = [{"product": p, "modalities": ["CT"]} for p in products]
    if url:
        config["exchange"]["url"] = url
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def send_study(tmp_path: Path, port: int) -> None:
    folder = tmp_path / "study"
    write_study("ct-head", folder, seed=11, size="small")
    storescu(sorted(folder.rglob("*.dcm")), port)


def test_a_job_for_an_unsubscribed_product_ends_with_the_exchanges_reason(
    national: National, tmp_path: Path
) -> None:
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product({**tissue_volume.manifest(VENDOR), "id": "not-subscribed"})
    vendor.close()
    port = free_port()
    path = routed_to(gateway_config(tmp_path, national, port, 1), ["not-subscribed"])
    gateway = Gateway(load_config(path))
    gateway.start()
    try:
        send_study(tmp_path, port)
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] == ["refused"], timeout=60
        ), gateway.jobs()
        [job] = gateway.jobs()
        assert "not subscribed to product 'not-subscribed'" in job["reason"]
    finally:
        gateway.stop()


def test_an_unreachable_exchange_keeps_the_job_pending_with_the_reason(
    national: National, tmp_path: Path
) -> None:
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"
    path = routed_to(
        gateway_config(tmp_path, national, port, 1), [tissue_volume.PRODUCT_ID], url=dead
    )
    config = load_config(path)
    # Each request gives up at its first refusal: the client's own retries (15 s per request
    # to a dead exchange) are not what is under test here, the job's retry later is.
    gateway = Gateway(config, client=GatewayClient.connecting(config.exchange, retries=0))
    gateway.start()
    try:
        send_study(tmp_path, port)

        def retrying() -> bool:
            jobs: list[dict[str, Any]] = gateway.jobs()
            return bool(jobs) and jobs[0]["attempts"] >= 1

        assert gateway.wait_until(retrying, timeout=60), gateway.jobs()
        [job] = gateway.jobs()
        assert job["state"] == "pending" and "unreachable" in job["reason"]
        assert job["next_attempt_at"] > job["created_at"]
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/products/"), ("POST", "/jobs")], ids=["product", "create"]
)
def test_an_api_key_the_exchange_no_longer_takes_keeps_the_job_waiting_and_says_so(
    hospital: Hospital, caplog: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    """The key revoked at the exchange (rotated, expired): the exchange answers 401 to the
    product's entry or to the job's creation. That says nothing of the job: it waits, counted
    as an upload retrying (which `GatewayBacklog` watches), its reason and the journal saying
    what to do; once the current key is in place it goes."""
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    passing = hospital.network.handle_request

    def key_revoked(request: httpx.Request) -> httpx.Response:
        if request.method == method and request.url.path.startswith(path):
            request.headers["Authorization"] = "Bearer aifi_a-key-the-exchange-revoked"
        return passing(request)

    hospital.network.handle_request = key_revoked  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="aifi.gateway.service")
    for attempt in (1, 2):
        assert hospital.send_due(job["next_attempt_at"]) == [job["id"]]
        [job] = hospital.jobs()
        assert (job["state"], job["attempts"]) == ("pending", attempt), job["reason"]
        assert "the exchange does not accept the gateway's API key" in job["reason"]
        assert "401 unauthorised" in job["reason"]
    said = [r for r in caplog.records if "API key" in r.getMessage()]
    assert said and all(record.levelno == logging.ERROR for record in said)
    assert "put the hospital's current key in exchange.api_key_file" in said[0].getMessage()
    registry = gateway_registry(hospital.gateway.state)
    assert registry.get_sample_value("aifi_gateway_jobs_retrying", {"step": "upload"}) == 1.0
    assert hospital.exchange_jobs() == []  # nothing made with the refused key

    hospital.network.handle_request = passing  # type: ignore[method-assign]
    assert hospital.send_due(job["next_attempt_at"]) == [job["id"]]
    [job] = hospital.jobs()
    assert job["state"] == "submitted", job["reason"]
    assert registry.get_sample_value("aifi_gateway_jobs_retrying", {"step": "upload"}) == 0.0
