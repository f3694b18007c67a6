"""ICH triage: every phantom classified right, volumes within 10 %, valid results, STAT claims."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from scipy import ndimage

from aifi.dicom.dciodvfy import verify_iod
from aifi.dicom.deid import DEIDENTIFICATION_METHOD_PREFIX
from aifi.exchange.app import create_app
from aifi.exchange.schemas import ProductManifest
from aifi.exchange.settings import ExchangeSettings
from aifi.phantoms import GridSize, write_study
from aifi.products import brain_volumetry, ich_triage, reference_products
from aifi.products.brain_volumetry import ct_intracranial
from aifi.products.imaging import CT_IMAGE_STORAGE, load_volume
from aifi.results import check_result
from aifi.vendor import JobContext, ProductError, ProductResult, VendorClient, Worker

OPERATOR_KEY = "aifi_products-test-operator-key-0123456789"


def test_every_phantom_is_classified_right(ich_run):
    cases = ich_run.report["cases"]
    assert {case["positive"] for case in cases} == {True, False}
    for case in cases:
        assert (case["flag"] == "positive") is case["positive"], case
        assert case["priority"] == ("high" if case["positive"] else None), case
    assert ich_run.report["targets"]["classified_right"]["met"]


def test_volumes_within_ten_percent_of_truth(ich_run):
    positives = [case for case in ich_run.report["cases"] if case["positive"]]
    assert min(case["volume_truth_ml"] for case in positives) < 2.0  # small bleeds too
    assert max(case["volume_truth_ml"] for case in positives) > 30.0
    for case in positives:
        assert case["volume_ml"] == pytest.approx(case["volume_truth_ml"], rel=0.10), case
    assert ich_run.report["targets"]["volume_error_pct"]["met"]


@pytest.mark.peer
def test_every_result_object_passes_dciodvfy(ich_run, dciodvfy):
    files = ich_run.result_files()
    positives = sum(case["positive"] for case in ich_run.report["cases"])
    assert len(files) == ich_run.report["studies"] + positives  # SR always, SEG if bleeding
    for path in files:
        checked = verify_iod(path)
        assert checked.errors == [], (path.name, checked.errors)


def test_positive_result_outlines_the_bleed_and_links_sr_to_seg(
    run_on_phantom, referenced_segments, segment_tracking
):
    ran = run_on_phantom(ich_triage.run, "ct-head", seed=2, haemorrhage_ml=12.0)
    assert [f.name for f in ran.result.files] == ["ich-triage-seg.dcm", "ich-triage-sr.dcm"]
    seg = pydicom.dcmread(ran.output_dir / "ich-triage-seg.dcm")
    sr = pydicom.dcmread(ran.output_dir / "ich-triage-sr.dcm")
    assert referenced_segments(sr) == [(seg.SOPInstanceUID, 1)]
    (finding,) = ran.result.summary["findings"]
    assert segment_tracking(seg) == {1: (finding["tracking_id"], finding["tracking_uid"])}
    assert finding["finding_code"] == "SCT:50960005"
    assert finding["evaluations"] == {"Presence of property": "Present"}
    assert finding["measurements"]["Volume"]["value"] == pytest.approx(
        ran.truth.haemorrhage.volume_ml, rel=0.10
    )
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "50960005"
    assert ran.result.summary["triage"] == {"flag": "positive", "priority": "high"}
    for path in (ran.output_dir / "ich-triage-seg.dcm", ran.output_dir / "ich-triage-sr.dcm"):
        assert check_result(path, study_instance_uid=sr.StudyInstanceUID).air_conformant


def test_negative_result_says_absent(run_on_phantom):
    ran = run_on_phantom(ich_triage.run, "ct-head", seed=3, size="small")
    assert [f.name for f in ran.result.files] == ["ich-triage-sr.dcm"]
    (finding,) = ran.result.summary["findings"]
    assert finding["evaluations"] == {"Presence of property": "Absent"}
    assert ran.result.summary["triage"] == {"flag": "negative", "priority": None}


def test_the_bleed_is_drawn_on_the_key_image(run_on_phantom):
    ran = run_on_phantom(ich_triage.run, "ct-head", seed=4, size="small", haemorrhage_ml=20.0)
    assert (ran.output_dir / "key-image.png").stat().st_size > 1000


def test_mr_is_refused(run_on_phantom):
    with pytest.raises(ProductError, match="no CT image"):
        run_on_phantom(ich_triage.run, "mr-brain", seed=1, size="small")


def test_a_chest_ct_has_no_brain(run_on_phantom):
    with pytest.raises(ProductError, match="no brain found"):
        run_on_phantom(ich_triage.run, "ct-chest", seed=1, size="small")


def test_manifest_asks_for_stat_priority():
    manifest = ProductManifest.model_validate(ich_triage.manifest("aifi"))
    assert manifest.priority == "stat"
    assert manifest.clinical_area == "triage"
    assert manifest.accepts.modalities == ["CT"]
    assert {output.kind for output in manifest.outputs} == {"sr-tid1500", "seg", "summary-json"}


# -- through the exchange ----------------------------------------------------------------------


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[TestClient]:
    settings = ExchangeSettings(data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY)
    with TestClient(create_app(settings)) as client:
        yield client


def _organisation(client: TestClient, org_id: str, kind: str) -> dict[str, str]:
    response = client.post(
        "/organisations",
        json={"id": org_id, "name": org_id, "kind": kind},
        headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
    )
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['api_key']}"}


def _pseudonymised_head(folder: Path, seed: int, **study: Any) -> list[Path]:
    """A CT head as the gateway uploads it: marked de-identified (the phantom has no identity)."""
    write_study("ct-head", folder, seed=seed, size="small", **study)
    paths = sorted(folder.glob("*.dcm"))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEIDENTIFICATION_METHOD_PREFIX + " (products test)"
        ds.save_as(path, enforce_file_format=True)
    return paths


def _ready_job(client: TestClient, hospital: dict[str, str], product_id: str, study: list[Path]):
    study_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    response = client.post(
        "/jobs",
        json={
            "product_id": product_id,
            "study_uid": study_uid,
            "patient_pseudonym": "PTEST",
            "idempotency_key": f"{study_uid}:{product_id}",
        },
        headers=hospital,
    )
    assert response.status_code in (200, 201), response.text
    job = response.json()
    for path in study:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        put = client.put(
            f"/jobs/{job['id']}/inputs/{uid}", content=path.read_bytes(), headers=hospital
        )
        assert put.status_code == 201, put.text
    ready = client.post(
        f"/jobs/{job['id']}/ready", json={"instances": len(study)}, headers=hospital
    )
    assert ready.status_code == 200, ready.text
    return ready.json()


def _through(client: TestClient) -> httpx.MockTransport:
    """An httpx transport that hands every request of the vendor SDK to the TestClient."""

    def handle(request: httpx.Request) -> httpx.Response:
        response = client.request(
            request.method,
            request.url.raw_path.decode(),
            content=request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )

    return httpx.MockTransport(handle)


def test_stat_triage_job_is_claimed_and_completed_before_an_earlier_routine_job(
    exchange: TestClient, tmp_path: Path
):
    hospital = _organisation(exchange, "hospital-a", "hospital")
    vendor_headers = _organisation(exchange, "aifi", "vendor")
    for module in (brain_volumetry, ich_triage):
        response = exchange.post("/products", json=module.manifest("aifi"), headers=vendor_headers)
        assert response.status_code == 201, response.text
        response = exchange.post(
            "/subscriptions", json={"product_id": module.PRODUCT_ID}, headers=hospital
        )
        assert response.status_code == 201, response.text

    routine = _ready_job(
        exchange, hospital, brain_volumetry.PRODUCT_ID, _pseudonymised_head(tmp_path / "a", 1)
    )
    stat = _ready_job(
        exchange,
        hospital,
        ich_triage.PRODUCT_ID,
        _pseudonymised_head(tmp_path / "b", 2, haemorrhage_ml=20.0),
    )
    assert (routine["priority"], stat["priority"]) == ("routine", "stat")

    products = reference_products()
    order: list[str] = []

    def handler(context: JobContext) -> ProductResult:
        order.append(context.job["product_id"])
        return products[context.job["product_id"]].handler(context)

    vendor = VendorClient(
        "http://exchange.test",
        vendor_headers["Authorization"].removeprefix("Bearer "),
        transport=_through(exchange),
    )
    worker = Worker(vendor, handler, workdir=tmp_path)
    assert worker.run_once() == stat["id"]  # created later, claimed first
    done = exchange.get(f"/jobs/{stat['id']}", headers=hospital).json()
    assert done["state"] == "completed", done["reason"]
    assert done["summary"]["triage"] == {"flag": "positive", "priority": "high"}
    results = exchange.get(f"/jobs/{stat['id']}/results", headers=hospital).json()
    assert len(results) == 3  # SEG, SR and the JSON summary, all accepted by the exchange

    assert exchange.get(f"/jobs/{routine['id']}", headers=hospital).json()["state"] == "requested"
    assert worker.run_once() == routine["id"]
    assert order == [ich_triage.PRODUCT_ID, brain_volumetry.PRODUCT_ID]
    assert exchange.get(f"/jobs/{routine['id']}", headers=hospital).json()["state"] == "completed"


def _negative_head(tmp_path: Path):
    write_study("ct-head", tmp_path, seed=8, size=GridSize(128, 128, 1.8, 25, 6.0))
    return load_volume(
        sorted(tmp_path.glob("*.dcm")),
        modalities={"CT"},
        sop_classes={CT_IMAGE_STORAGE},
        min_slices=10,
    )


def test_a_rim_of_dense_voxels_along_the_skull_is_not_a_bleed(tmp_path):
    volume = _negative_head(tmp_path)
    intracranial = ct_intracranial(volume.values)
    in_plane = ndimage.generate_binary_structure(2, 1)[None]  # the skull's edge in each slice
    rim = intracranial & ~ndimage.binary_erosion(intracranial, structure=in_plane)
    rim[:, :, : volume.values.shape[2] // 2] = False  # one side: a partial-volume artefact
    assert np.count_nonzero(rim) * volume.voxel_volume_mm3 / 1000 > 1.0  # far above the minimum
    volume.values[rim] = 70.0
    assert not ich_triage.find_haemorrhage(volume).present


def test_a_speck_is_noise_but_a_small_deep_clot_is_found(tmp_path):
    volume = _negative_head(tmp_path)
    centre = tuple(s // 2 for s in volume.values.shape)
    volume.values[centre] = 70.0
    assert not ich_triage.find_haemorrhage(volume).present
    k, i, j = centre
    volume.values[k - 1 : k + 2, i + 10 : i + 18, j + 10 : j + 18] = 70.0  # 192 voxels
    found = ich_triage.find_haemorrhage(volume)
    assert found.present
    assert found.volume_ml == pytest.approx(192 * volume.voxel_volume_mm3 / 1000.0)
