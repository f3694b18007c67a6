"""An instance uploaded again: the job keeps one copy, and its row describes the bytes stored.

Each upload stores its blob under a key of its own and the blob of the copy it replaced goes
after it commits, so two uploads of one instance racing each other (a modality re-sending a
corrected image while the first is still on its way) cannot leave the row of one beside the
bytes of the other.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
from fastapi.testclient import TestClient

from aifi.exchange.app import create_app
from aifi.exchange.blob_keys import input_folder
from aifi.exchange.services import build_services
from aifi.exchange.settings import ExchangeSettings
from scale.exchange_api import Exchange, blobs_under


def corrected(path: Path, folder: Path) -> Path:
    """The same instance (same SOP Instance UID) with other bytes, as a corrected re-send."""
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "corrected"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / path.name
    ds.save_as(out, enforce_file_format=True)
    return out


def _job(exchange: Exchange, study: list[Path]) -> tuple[Any, dict[str, Any]]:
    hospital = exchange.org("hospital-a", "hospital")
    exchange.product(exchange.org("vendor-a", "vendor"), "product-a")
    exchange.subscribe(hospital, "product-a")
    uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    return hospital, exchange.job(hospital, "product-a", uid, instances=2)


def _held_copy(exchange: Exchange, hospital: Any, job_id: str, sop_uid: str) -> tuple[str, str]:
    """The sha256 the job lists for the instance, and that of the bytes it gives out."""
    listed = exchange.client.get(f"/jobs/{job_id}/inputs", headers=hospital.headers).json()
    (row,) = [item for item in listed if item["sop_instance_uid"] == sop_uid]
    body = exchange.client.get(f"/jobs/{job_id}/inputs/{sop_uid}", headers=hospital.headers)
    assert body.status_code == 200
    return row["sha256"], hashlib.sha256(body.content).hexdigest()


def test_an_instance_sent_again_keeps_one_copy(
    settings: ExchangeSettings, make_ct: Any, tmp_path: Path
) -> None:
    services = build_services(settings)
    with TestClient(create_app(settings, services=services)) as client:
        exchange = Exchange(client)
        study = make_ct(slices=2)
        hospital, job = _job(exchange, study)
        sop_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).SOPInstanceUID)
        for path in (study[0], study[0], corrected(study[0], tmp_path / "c")):
            assert exchange.upload(hospital, job["id"], path).status_code == 201
        listed, given = _held_copy(exchange, hospital, job["id"], sop_uid)
        assert (
            listed
            == given
            == hashlib.sha256((tmp_path / "c" / study[0].name).read_bytes()).hexdigest()
        )
        assert len(blobs_under(services.blobs, input_folder(job["id"]))) == 1


def test_racing_uploads_of_one_instance_leave_its_row_and_its_bytes_agreeing(
    settings: ExchangeSettings, make_ct: Any, tmp_path: Path
) -> None:
    """The first upload stores its bytes, then waits at its turn at the job until a second
    upload of the instance, with other bytes, has stored and recorded its own: the first
    records last, so the job must give out the first upload's bytes."""
    services = build_services(settings)
    first_at_turn = threading.Event()
    second_answered = threading.Event()
    waited: list[bool] = []
    take_turn = services.jobs.take_input_turn

    def slow_first_turn(session: Any, job: Any) -> Any:
        if not first_at_turn.is_set():
            first_at_turn.set()
            waited.append(second_answered.wait(timeout=20))
        return take_turn(session, job)

    services.jobs.take_input_turn = slow_first_turn  # type: ignore[method-assign]
    with TestClient(create_app(settings, services=services)) as client:
        exchange = Exchange(client)
        study = make_ct(slices=2)
        hospital, job = _job(exchange, study)
        original, again = study[0], corrected(study[0], tmp_path / "c")
        sop_uid = str(pydicom.dcmread(original, stop_before_pixels=True).SOPInstanceUID)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(exchange.upload, hospital, job["id"], original)
            assert first_at_turn.wait(timeout=20)
            second = exchange.upload(hospital, job["id"], again)
            second_answered.set()
            assert first.result().status_code == 201 and second.status_code == 201
        assert waited == [True], "the second upload waited for the first"
        listed, given = _held_copy(exchange, hospital, job["id"], sop_uid)
        assert listed == given == hashlib.sha256(original.read_bytes()).hexdigest()
        assert len(blobs_under(services.blobs, input_folder(job["id"]))) == 1
