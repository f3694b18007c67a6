"""Large transfers run on threads of their own: a slow object store never holds back the
requests a replica answers meanwhile."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydicom
from fastapi.testclient import TestClient

from aifi.exchange.app import create_app
from aifi.exchange.services import build_services
from aifi.exchange.settings import ExchangeSettings
from scale.conftest import set_up_parties
from scale.exchange_api import Exchange


def test_large_uploads_on_their_way_to_the_store_leave_requests_answered(
    settings: ExchangeSettings, make_ct: Any
) -> None:
    """Three large instances are being stored at once on a replica with two request
    threads; a hospital's listing is answered meanwhile, and all three are then accepted."""
    settings = settings.model_copy(update={"request_threads": 2, "transfer_threads": 4})
    services = build_services(settings)
    storing = threading.Semaphore(0)
    release = threading.Event()
    commit = services.blobs.commit

    def slow_commit(temp: Any, key: str) -> None:
        if temp.size > 1 << 20:  # a large instance: held until the listing was answered
            storing.release()
            assert release.wait(60)
        commit(temp, key)

    services.blobs.commit = slow_commit  # type: ignore[method-assign]
    with TestClient(create_app(settings, services=services)) as client:
        exchange = Exchange(client)
        hospital = set_up_parties(exchange)["hospital"]
        study = make_ct(slices=3, size=1024)
        assert all(path.stat().st_size > 1 << 20 for path in study)
        study_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
        job = exchange.job(hospital, "product-a", study_uid, instances=3)
        with ThreadPoolExecutor(len(study)) as pool:
            uploads = [pool.submit(exchange.upload, hospital, job["id"], path) for path in study]
            try:
                for number in range(1, len(study) + 1):
                    assert storing.acquire(timeout=30), f"only {number - 1} large uploads storing"
                listed = client.get("/jobs", headers=hospital.headers)
            finally:
                release.set()
            assert [upload.result().status_code for upload in uploads] == [201] * 3
        assert listed.status_code == 200
        assert [seen["id"] for seen in listed.json()] == [job["id"]]
        opened = client.get(f"/jobs/{job['id']}", headers=hospital.headers).json()
        assert opened["inputs_complete"] and opened["instances"] == 3
