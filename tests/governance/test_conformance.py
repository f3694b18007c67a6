"""The conformance kit end to end: a real exchange, phantom studies, a worker, the report.

A good reference product passes every check; a product that misbehaves in three ways (results
of another study, a crash on corrupt pixels, a peek at another vendor's job) fails exactly the
checks it breaks, with the evidence a vendor needs; a vendor's own worker can be pointed at the
kit's exchange instead of the kit running the product.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import httpx
import pydicom
import pytest
from typer.testing import CliRunner

from aifi.governance.cli import app
from aifi.governance.conformance import (
    ConformanceReport,
    KitEnvironment,
    KitOptions,
    KitProgress,
    run_conformance,
)
from aifi.governance.dossier import Dossier, dossier_gaps
from aifi.products import tissue_volume
from aifi.vendor import Handler, JobContext, ProductError, ProductResult, VendorClient, Worker

pytestmark = pytest.mark.peer

CHECK_NAMES = [
    "completes-valid-studies",
    "dicom-valid",
    "air-conformance",
    "own-study-only",
    "declared-outputs",
    "turnaround",
    "corrupt-study",
    "tenant-walls",
]
FAST = KitOptions(size="small", per_kind=1, timeout_seconds=120)


def test_tissue_volume_passes_through_the_cli(tmp_path: Path, dciodvfy: str) -> None:
    html, as_json, workdir = tmp_path / "report.html", tmp_path / "report.json", tmp_path / "kit"
    outcome = CliRunner().invoke(
        app,
        [
            tissue_volume.PRODUCT_ID,
            "--report",
            str(html),
            "--json",
            str(as_json),
            "--size",
            "small",
            "--workdir",
            str(workdir),
            "--timeout",
            "120",
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "aifi-tissue-volume 1.0.0: PASSED" in outcome.output

    report = ConformanceReport.model_validate(json.loads(as_json.read_text()))
    assert [c.name for c in report.checks] == CHECK_NAMES
    assert report.passed, [c for c in report.checks if not c.passed]
    roles = sorted(j.role for j in report.jobs)
    assert roles == ["corrupt", "reference", "reference", "reference", "reference", "sentinel"]
    [corrupt] = [j for j in report.jobs if j.role == "corrupt"]
    assert corrupt.state == "failed" and "pixel data unreadable" in (corrupt.reason or "")
    for job in report.jobs:
        if job.role == "corrupt":
            continue
        assert job.state == "completed" and job.turnaround_seconds is not None
        [sr] = [r for r in job.results if r.kind == "sr-tid1500"]
        assert sr.air_conformant and sr.dciodvfy_errors == []
        saved = pydicom.dcmread(workdir / "results" / job.job_id / sr.name)
        assert saved.StudyInstanceUID == job.study_uid  # the pseudonymised study, as sent

    page = html.read_text()
    assert "Passed: 8 of 8 checks" in page and "tissue_volume.run" in page
    # The dossier records the report by its hash: this exact file is what was reviewed.
    attachment = report.attachment(html.name, html.read_bytes())
    assert attachment.sha256 == hashlib.sha256(html.read_bytes()).hexdigest()
    assert attachment.sha256[:16] in outcome.output
    dossier = Dossier.from_manifest(report.manifest).model_copy(update={"conformance": attachment})
    assert "conformance" not in [g.field for g in dossier_gaps(dossier)]


ANOTHER_STUDY = "2.25.111111111111111111111111111111111"


def misbehaving(environment: KitEnvironment) -> Handler:
    """Tissue volume gone wrong: peeks at another vendor's job, crashes on bad pixels, and
    returns its SR under another study."""

    def run(context: JobContext) -> ProductResult:
        httpx.get(
            f"{environment.url}/jobs/{environment.other_job_id}",
            headers={"Authorization": f"Bearer {environment.vendor_key}"},
        )
        try:
            result = tissue_volume.run(context)
        except ProductError as exc:
            raise RuntimeError("cannot decode pixels") from exc
        sr_path = result.files[0].path
        sr = pydicom.dcmread(sr_path)
        sr.StudyInstanceUID = ANOTHER_STUDY
        sr.save_as(sr_path)
        return result

    return run


def test_a_misbehaving_product_fails_the_checks_it_breaks(tmp_path: Path, dciodvfy: str) -> None:
    manifest = tissue_volume.manifest("careless-ai")
    report = run_conformance(manifest, misbehaving, workdir=tmp_path, options=FAST)
    assert not report.passed

    own_study = report.check("own-study-only")
    assert not own_study.passed
    assert any("rule 'own-study'" in line for line in own_study.details)

    corrupt = report.check("corrupt-study")
    assert not corrupt.passed
    assert any(
        "failed with reason: RuntimeError: cannot decode pixels" in line for line in corrupt.details
    )
    assert any(
        "the product raised RuntimeError instead of refusing" in line for line in corrupt.details
    )
    [corrupt_job] = [j for j in report.jobs if j.role == "corrupt"]
    assert corrupt_job.state == "failed"

    walls = report.check("tenant-walls")
    assert not walls.passed
    [other_job] = {
        line.split()[1].split("/")[2] for line in walls.details if "another vendor's job" in line
    }
    assert f"GET /jobs/{other_job} (another vendor's job): refused 404" in walls.details
    assert any("kit probes with the product's key: 7 of 7 refused" in d for d in walls.details)

    # Its results were refused, so none of its valid studies completed: the kit says why.
    completes = report.check("completes-valid-studies")
    assert not completes.passed and "0 of 3 valid studies completed" in completes.details
    assert all("the exchange refused a result" in line for line in completes.details[1:])
    page = report.to_html()
    assert "RuntimeError: cannot decode pixels" in page and "Not passed" in page


def test_an_external_worker_can_be_pointed_at_the_kit(tmp_path: Path, dciodvfy: str) -> None:
    stop = threading.Event()
    threads: list[threading.Thread] = []
    clients: list[VendorClient] = []

    def start_vendor_worker(environment: KitEnvironment) -> None:
        """What a vendor does with the URL and the key the kit prints."""
        client = VendorClient(environment.url, environment.vendor_key)
        worker = Worker(
            client, tissue_volume.run, product_ids=[environment.product_id], workdir=tmp_path
        )
        thread = threading.Thread(target=worker.run, args=(stop, 0.5), daemon=True)
        thread.start()
        clients.append(client)
        threads.append(thread)

    def stop_once_processed(event: KitProgress) -> None:
        if event.stage == "checking results" and not stop.is_set():
            stop.set()  # the kit's exchange is still up: let the worker leave cleanly
            for thread in threads:
                thread.join(timeout=30)

    report = run_conformance(
        tissue_volume.manifest("outside-vendor"),
        None,
        workdir=tmp_path / "kit",
        options=FAST,
        on_ready=start_vendor_worker,
        progress=stop_once_processed,
    )
    for client in clients:
        client.close()
    assert len(threads) == 1 and not threads[0].is_alive()
    assert report.passed, [c for c in report.checks if not c.passed]
    assert report.worker.startswith("the vendor's own worker")
    assert report.vendor == "outside-vendor"
