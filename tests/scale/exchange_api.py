"""Speaking the exchange's HTTP API in tests, as a hospital, a vendor or the operator would,
on any backend the exchange supports (shared by tests/exchange and tests/scale)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from aifi.dicom.deid import DEIDENTIFICATION_METHOD_PREFIX
from aifi.exchange.blobs import LocalBlobStore
from aifi.exchange.settings import ExchangeSettings
from aifi.products.tissue_volume import run as tissue_volume
from aifi.vendor import JobContext
from scale.servers import PostgresServer, shared_postgres, shared_s3

BACKENDS = ["sqlite", "postgresql", "postgresql-s3"]

OPERATOR_KEY = "aifi_test-operator-key-0123456789abcdef"
CT = "1.2.840.10008.5.1.4.1.1.2"
#: The least a ResultSummary holds, for the test products' jobs.
SUMMARY = {
    "product_id": "product-a",
    "product_version": "1.0",
    "algorithm": {"name": "Tissue volume", "version": "1.0", "manufacturer": "Vendor A"},
    "triage": {"flag": "positive", "priority": "high"},
}


def sr_for(inputs: list[Path], folder: Path) -> Path:
    """A real TID 1500 result for `inputs`, made by the reference product."""
    folder.mkdir(parents=True, exist_ok=True)
    result = tissue_volume(JobContext(job={}, inputs=inputs, output_dir=folder))
    return result.files[0].path


@dataclass
class Org:
    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class Exchange:
    """A test client with helpers that speak the API as a hospital, vendor or operator would."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.operator = Org("operator", OPERATOR_KEY)

    def org(self, org_id: str, kind: str) -> Org:
        response = self.client.post(
            "/organisations",
            json={"id": org_id, "name": org_id.title(), "kind": kind},
            headers=self.operator.headers,
        )
        assert response.status_code == 201, response.text
        return Org(org_id, response.json()["api_key"])

    def product(self, vendor: Org, product_id: str, **extra: Any) -> dict[str, Any]:
        manifest = {
            "id": product_id,
            "vendor": vendor.id,
            "name": f"Product {product_id}",
            "version": "1.0",
            "clinical_area": "quantification",
            "accepts": {"modalities": ["CT"]},
            **extra,
        }
        response = self.client.post("/products", json=manifest, headers=vendor.headers)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def subscribe(self, hospital: Org, product_id: str) -> None:
        response = self.client.post(
            "/subscriptions", json={"product_id": product_id}, headers=hospital.headers
        )
        assert response.status_code == 201, response.text

    def job(
        self, hospital: Org, product_id: str, study_uid: str, key: str = "", **extra: Any
    ) -> dict[str, Any]:
        body = {
            "product_id": product_id,
            "study_uid": study_uid,
            "patient_pseudonym": "PTEST",
            "idempotency_key": key or f"{study_uid}:{product_id}",
            **extra,
        }
        response = self.client.post("/jobs", json=body, headers=hospital.headers)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    def upload(self, hospital: Org, job_id: str, path: Path) -> Any:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        return self.client.put(
            f"/jobs/{job_id}/inputs/{uid}", content=path.read_bytes(), headers=hospital.headers
        )

    def ready_job(
        self, hospital: Org, product_id: str, study: list[Path], **extra: Any
    ) -> dict[str, Any]:
        study_uid = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
        job = self.job(hospital, product_id, study_uid, **extra)
        for path in study:
            assert self.upload(hospital, job["id"], path).status_code == 201
        response = self.client.post(
            f"/jobs/{job['id']}/ready", json={"instances": len(study)}, headers=hospital.headers
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def claim(self, vendor: Org, **body: Any) -> dict[str, Any] | None:
        response = self.client.post("/jobs/claim", json=body, headers=vendor.headers)
        if response.status_code == 204:
            return None
        assert response.status_code == 200, response.text
        return dict(response.json())

    def worked_on(
        self, hospital: Org, vendor: Org, study: list[Path], folder: Path
    ) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """A job of `study` (for product-a), claimed by `vendor`, and what the reference
        product made of it in `folder`: the job, the claim, the ProductResult."""
        from aifi.products.tissue_volume import run
        from aifi.vendor import JobContext

        job = self.ready_job(hospital, "product-a", study)
        claim = self.claim(vendor)
        assert claim is not None and claim["job"]["id"] == job["id"]
        folder.mkdir(parents=True)
        return job, claim, run(JobContext(job={}, inputs=study, output_dir=folder))


def blobs_under(blobs: Any, folder: str) -> list[str]:
    """The keys a blob store holds under `folder`, whichever store it is."""
    if isinstance(blobs, LocalBlobStore):
        top = blobs.local_path(folder)
        assert top is not None
        if not top.is_dir():
            return []
        return sorted(str(path.relative_to(blobs.root.resolve())) for path in top.rglob("*"))
    answer = blobs.client.list_objects_v2(Bucket=blobs.bucket, Prefix=blobs.object_key(folder))
    return sorted(item["Key"] for item in answer.get("Contents", []))


def pseudonymised_ct(
    folder: Path,
    *,
    slices: int = 3,
    study_uid: str | None = None,
    marked: bool = True,
    size: int = 16,
) -> list[Path]:
    """A small CT series already marked de-identified, as the gateway would upload it."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(prefix="2.25.")
    series_uid = generate_uid(prefix="2.25.")
    frame_uid = generate_uid(prefix="2.25.")
    paths = []
    for index in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT
        meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "PTEST"
        ds.PatientID = "PTEST"
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.Manufacturer = "AIFI"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, float(index) * 2.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        pixels = np.full((size, size), -1000, dtype=np.int16)
        pixels[4:12, 4:12] = 40  # 64 voxels of soft tissue per slice
        ds.PixelData = pixels.tobytes()
        if marked:
            ds.PatientIdentityRemoved = "YES"
            ds.DeidentificationMethod = DEIDENTIFICATION_METHOD_PREFIX + " (test)"
        path = folder / f"{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class BackendSettings:
    """Settings for one backend, and how to clean up after it."""

    settings: ExchangeSettings
    postgres: PostgresServer | None = None

    def close(self) -> None:
        if self.postgres is not None and self.settings.database_url:
            self.postgres.drop_database(self.settings.database_url)


def backend_settings(
    backend: str, folder: Path, config: pytest.Config, **extra: Any
) -> BackendSettings:
    """An exchange's settings on `backend` (a fresh database and bucket for each call)."""
    data_dir = folder / "exchange"
    if backend == "sqlite":
        return BackendSettings(
            ExchangeSettings(data_dir=data_dir, operator_key=OPERATOR_KEY, **extra)
        )
    postgres = shared_postgres(config)
    database_url = postgres.create_database("exchange")
    blob_url = None
    if backend == "postgresql-s3":
        blob_url = shared_s3(config).blob_url(spool=str(folder / "spool"))
    settings = ExchangeSettings(
        data_dir=data_dir,
        operator_key=OPERATOR_KEY,
        database_url=database_url,
        blob_url=blob_url,
        **extra,
    )
    return BackendSettings(settings, postgres)
