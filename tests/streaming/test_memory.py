"""Studies are streamed through the exchange: memory does not grow with the size of an upload."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from aifi.dicom.deid import DEIDENTIFICATION_METHOD_PREFIX
from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings

OPERATOR_KEY = "aifi_streaming-test-operator-key-012345678"
CHUNK = 256 * 1024


def big_instance(path: Path, frames: int, study_uid: str) -> None:
    """A multi-frame pseudonymised CT-like instance of about frames × 512 KB."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.Modality = "CT"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD_PREFIX
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b""
    ds.save_as(path, enforce_file_format=True)
    # Append the pixel data element by hand, frame by frame, so the test itself stays small.
    frame = np.arange(512 * 512, dtype=np.uint16).tobytes()
    length = len(frame) * frames
    with path.open("r+b") as out:
        data = out.read()
        tail = data.rfind(b"\xe0\x7f\x10\x00")
        out.seek(tail)
        out.truncate()
        out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little"))
        for _ in range(frames):
            out.write(frame)


def chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while block := source.read(CHUNK):
            yield block


def test_upload_and_download_of_a_large_instance_stay_flat(tmp_path: Path) -> None:
    settings = ExchangeSettings(data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY)
    study_uid = generate_uid(prefix="2.25.")
    path = tmp_path / "big.dcm"
    big_instance(path, frames=256, study_uid=study_uid)  # about 134 MB
    size = path.stat().st_size
    with ExchangeThread(settings) as exchange:
        operator = httpx.Client(
            base_url=exchange.url, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}, timeout=60
        )
        keys = {}
        for org, kind in (("h", "hospital"), ("v", "vendor")):
            response = operator.post("/organisations", json={"id": org, "name": org, "kind": kind})
            keys[org] = response.json()["api_key"]
        hospital = httpx.Client(
            base_url=exchange.url, headers={"Authorization": f"Bearer {keys['h']}"}, timeout=120
        )
        vendor = {"Authorization": f"Bearer {keys['v']}"}
        manifest = {"id": "p", "vendor": "v", "name": "p", "version": "1", "clinical_area": "x"}
        httpx.post(
            exchange.url + "/products", json=manifest, headers=vendor, timeout=60
        ).raise_for_status()
        hospital.post("/subscriptions", json={"product_id": "p"}).raise_for_status()
        job = hospital.post(
            "/jobs", json={"product_id": "p", "study_uid": study_uid, "idempotency_key": "k"}
        ).json()
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)

        tracemalloc.start()
        try:
            put = hospital.put(f"/jobs/{job['id']}/inputs/{uid}", content=chunks(path))
            assert put.status_code == 201, put.text
            received = 0
            with hospital.stream("GET", f"/jobs/{job['id']}/inputs/{uid}") as response:
                for block in response.iter_bytes(CHUNK):
                    received += len(block)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert put.json()["size"] == size and received == size
        # Both directions together held a small, fixed number of chunks, not the instance.
        assert peak < 32 * 1024 * 1024, (
            f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB instance"
        )
        hospital.close()
        operator.close()
