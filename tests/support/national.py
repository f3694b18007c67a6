"""The national path on one machine for tests: a real exchange (uvicorn) and a vendor worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from aifi.products import tissue_volume
from aifi.vendor import Handler, VendorClient, Worker
from aifi.web import mount
from support.peers import OrthancPeer, free_port, start_orthanc

OPERATOR_KEY = "aifi_gateway-test-operator-key-0123456789"
HOSPITAL = "hospital-1"
VENDOR = "aifi-reference"


@dataclass
class National:
    exchange: ExchangeThread
    hospital_key: str
    vendor_key: str
    workers: list[threading.Thread] = field(default_factory=list)
    #: Where the hospital's PACS keeps what it is sent (`pacs`).
    folder: Path | None = None
    _pacs: OrthancPeer | None = None
    #: Set, the national path's vendor workers stop (`stop_workers`).
    worker_stop: threading.Event = field(default_factory=threading.Event)

    def pacs(self) -> OrthancPeer:
        """The hospital's PACS: a real Orthanc that takes results from the gateway's AE title
        (`AIFI_GW`), started when a test first needs it and stopped with the national path.
        A gateway always has one to deliver to."""
        if self._pacs is None:
            assert self.folder is not None, "a national path made by `national_path`"
            self._pacs = start_orthanc(
                self.folder / "hospital-pacs", {"gateway": ("AIFI_GW", 11112)}
            )
        return self._pacs

    def close(self) -> None:
        if self._pacs is not None:
            self._pacs.kill()

    def stop_workers(self) -> None:
        """The vendor workers stopped now, for a test that takes the exchange away: a claim
        of theirs cut off by it may have been taken, and rides out its back-off."""
        self.worker_stop.set()
        for thread in self.workers:
            thread.join(timeout=60)

    def api(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.exchange.url,
            headers={"Authorization": f"Bearer {key or self.hospital_key}"},
            timeout=60,
        )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def gateway_gauge(gateway: Gateway, name: str) -> float:
    """A gauge's one value, as Prometheus scrapes it from the gateway's exporter."""
    assert gateway.metrics is not None, "start the gateway with metrics_port"
    (value,) = (
        sample.value
        for family in text_string_to_metric_families(
            httpx.get(gateway.metrics.url, timeout=60).text
        )
        for sample in family.samples
        if sample.name == name
    )
    return value


def _org(client: httpx.Client, org_id: str, kind: str) -> str:
    response = client.post("/organisations", json={"id": org_id, "name": org_id, "kind": kind})
    response.raise_for_status()
    return str(response.json()["api_key"])


def gateway_config(
    folder: Path, national: National, gateway_port: int, pacs_port: int, quiet_seconds: float = 0.5
) -> Path:
    """Write a gateway YAML as a hospital engineer would, and return its path."""
    config = {
        "hospital": HOSPITAL,
        "workdir": str(folder / "gateway"),
        "exchange": {"url": national.exchange.url, "api_key": national.hospital_key},
        "dicom": {
            "ae_title": "AIFI_GW",
            "host": "127.0.0.1",
            "port": gateway_port,
            "quiet_seconds": quiet_seconds,
        },
        "routes": [{"product": tissue_volume.PRODUCT_ID, "modalities": ["CT"]}],
        "pacs": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_port}],
        "poll_wait_seconds": 2,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def started_gateway(folder: Path, national: National, **settings: Any) -> Iterator[Gateway]:
    """A started gateway on a free port delivering to the national path's PACS
    (`National.pacs`), with a 0.3 s quiet timer, `settings` laid over `gateway_config`'s."""
    path = gateway_config(folder, national, free_port(), national.pacs().dicom_port, 0.3)
    config = yaml.safe_load(path.read_text())
    config.update(**settings)
    path.write_text(yaml.safe_dump(config))
    gateway = Gateway(load_config(path))
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@contextmanager
def national_path(
    tmp_path: Path, product: Handler = tissue_volume.run, version: str | None = None
) -> Iterator[National]:
    """The exchange and one worker running `product` (the reference product's code unless a
    test gives a vendor's own) as the reference product (as its `version`, if the worker
    names one)."""
    settings = ExchangeSettings(data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY)
    with ExchangeThread(settings, extensions=[mount]) as exchange:
        operator = httpx.Client(  # as patient as `National.api`: the suite loads both cores
            base_url=exchange.url,
            headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
            timeout=60,
        )
        hospital_key = _org(operator, HOSPITAL, "hospital")
        vendor_key = _org(operator, VENDOR, "vendor")
        vendor = VendorClient(exchange.url, vendor_key)
        vendor.register_product(tissue_volume.manifest(VENDOR))
        httpx.post(
            exchange.url + "/subscriptions",
            json={"product_id": tissue_volume.PRODUCT_ID},
            headers={"Authorization": f"Bearer {hospital_key}"},
            timeout=60,
        ).raise_for_status()
        stop = threading.Event()  # `National.worker_stop`
        worker = Worker(
            vendor,
            product,
            product_ids=[tissue_volume.PRODUCT_ID],
            lease_seconds=30,
            workdir=tmp_path,
            product_versions={tissue_volume.PRODUCT_ID: version} if version else None,
        )
        thread = threading.Thread(target=worker.run, args=(stop, 1.0), daemon=True)
        thread.start()
        national = National(
            exchange, hospital_key, vendor_key, [thread], tmp_path, worker_stop=stop
        )
        try:
            yield national
        finally:
            national.close()
        stop.set()
        thread.join(timeout=30)
        vendor.close()
        operator.close()
