"""A vendor's result that cannot be filed in the hospital's PACS as it is ends its own job
with the reason, and holds up no other: the results behind it, another patient's stroke
result among them, still come home. Nothing of the refused job reaches the PACS, and a
result's name, which the vendor chooses, never stands for another result's file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.results import check
from aifi.vendor import JobContext, ProductResult, ResultFile
from scale.servers import wait_for
from support.national import National, gateway_config, gateway_gauge, national_path
from support.peers import OrthancPeer, free_port, storescu

pytestmark = pytest.mark.peer

Spoiler = Callable[[ProductResult, JobContext], ProductResult]
#: The tag, VR and length of an FD element written four bytes long where eight are due.
_SHORT_FD = (b"\x18\x00\x87\x90FD\x08\x00", b"\x18\x00\x87\x90FD\x04\x00")


def short_element(result: ProductResult, _context: JobContext) -> ProductResult:
    """One element whose length its VR cannot have: pydicom cannot read it, and the gateway
    must read every value as it walks the result for UIDs."""
    sr = result.files[0].path
    ds = pydicom.dcmread(sr)
    ds.DiffusionBValue = 1.0
    ds.save_as(sr, enforce_file_format=True)
    raw = sr.read_bytes()
    at = raw.index(_SHORT_FD[0])
    sr.write_bytes(raw[:at] + _SHORT_FD[1] + b"\x00\x00\x80\x3f" + raw[at + 16 :])
    return result


def clashing_names(result: ProductResult, context: JobContext) -> ProductResult:
    """Two results, one named as the gateway once named the other's re-identified copy."""
    sr = result.files[0].path
    second = context.output_dir / "second.dcm"
    ds = pydicom.dcmread(sr)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(second, enforce_file_format=True)
    return ProductResult(
        files=[ResultFile(sr, name="a.dcm"), ResultFile(second, name="reidentified-a.dcm")],
        summary=result.summary,
    )


@pytest.fixture
def spoiling() -> list[Spoiler]:
    """What the vendor's product does wrong to each job it runs, in turn (then nothing)."""
    return []


@pytest.fixture
def national(tmp_path: Path, spoiling: list[Spoiler]) -> Iterator[National]:
    def product(context: JobContext) -> ProductResult:
        result = tissue_volume.run(context)
        return spoiling.pop(0)(result, context) if spoiling else result

    with national_path(tmp_path, product) as path:
        yield path


def studies(folder: Path, count: int) -> list[tuple[list[Path], str]]:
    made = []
    for n in range(count):
        identity = {"patient_id": f"HOSP-{n}", "patient_name": f"Patient^{n}"}
        write_study("ct-head", folder / str(n), seed=n, size="small", identity=identity)
        files = sorted((folder / str(n)).rglob("*.dcm"))
        made.append((files, str(pydicom.dcmread(files[0]).StudyInstanceUID)))
    return made


def pacs_instances(pacs: OrthancPeer, study_uid: str) -> list[dict[str, Any]]:
    """The tags of every instance the PACS files under this study (none if it has none)."""
    query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
    found = httpx.post(pacs.url + "/tools/find", json=query).json()
    return [httpx.get(f"{pacs.url}/instances/{i['ID']}/simplified-tags").json() for i in found]


def run_gateway(
    national: National, orthanc_factory: Any, tmp_path: Path, sent: list[list[Path]]
) -> tuple[Gateway, OrthancPeer]:
    """A gateway delivering to a real Orthanc; `sent` go to it one study after the other,
    each after the one before became a job, so the vendor runs them in that order."""
    port = free_port()
    pacs: OrthancPeer = orthanc_factory({"aifi": ("AIFI_GW", port)})
    config = load_config(gateway_config(tmp_path, national, port, pacs.dicom_port))
    gateway = Gateway(config.model_copy(update={"metrics_port": 0}))
    gateway.start()
    for n, files in enumerate(sent, start=1):
        storescu(files, port)
        assert gateway.wait_until(lambda n=n: len(gateway.jobs()) == n, timeout=60)
    return gateway, pacs


def settled(gateway: Gateway) -> bool:
    return all(job["state"] in ("delivered", "ended") for job in gateway.jobs())


def bad_then_good(
    national: National, spoiling: list[Spoiler], orthanc_factory: Any, tmp_path: Path
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Two studies, the product spoiling the first one's result (`short_element`), brought
    home by a gateway to a real Orthanc: the first job, which nothing of may reach the PACS,
    and the second, whose one result must, as it is; and the jobs-undelivered gauge."""
    spoiling.append(short_element)
    (bad, bad_study), (good, good_study) = studies(tmp_path / "studies", 2)
    gateway, pacs = run_gateway(national, orthanc_factory, tmp_path, [bad, good])
    try:
        assert gateway.wait_until(lambda: settled(gateway), timeout=120), gateway.jobs()
        first, delivered = sorted(gateway.jobs(), key=lambda job: job["id"])
        undelivered = gateway_gauge(gateway, "aifi_gateway_jobs_undelivered")
    finally:
        gateway.stop()
    assert delivered["state"] == "delivered" and delivered["results_delivered"] == 1
    assert pacs_instances(pacs, bad_study) == []
    [result] = pacs_instances(pacs, good_study)
    assert result["PatientID"] == "HOSP-1"
    return first, delivered, undelivered


def test_a_result_with_a_value_nobody_can_read_is_refused_at_upload_and_its_job_fails(
    national: National, spoiling: list[Spoiler], orthanc_factory: Any, tmp_path: Path
) -> None:
    """The exchange reads every value's length as it checks a result: the vendor's worker
    hears which attribute is broken, and the job fails with it; the hospital hears why."""
    failed, _, undelivered = bad_then_good(national, spoiling, orthanc_factory, tmp_path)
    assert undelivered == 0  # the product's job failed: nothing came back to refuse
    assert failed["state"] == "ended" and failed["exchange_state"] == "failed"
    assert "the exchange refused a result" in failed["reason"], failed["reason"]
    assert "readable-values" in failed["reason"], failed["reason"]
    assert "DiffusionBValue (0018,9087)" in failed["reason"], failed["reason"]


def test_a_result_the_gateway_cannot_read_ends_its_job_and_holds_up_none_behind_it(
    national: National,
    spoiling: list[Spoiler],
    orthanc_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exchange from before it read every value's length took such a result (and a value
    a later pydicom cannot read could reach a gateway the same way): the gateway refuses it,
    and no job behind it waits."""
    monkeypatch.setattr(check, "check_values_readable", lambda _dataset: None)
    refused, delivered, undelivered = bad_then_good(national, spoiling, orthanc_factory, tmp_path)
    assert undelivered == 1
    assert refused["state"] == "ended" and refused["exchange_state"] == "completed"
    assert "cannot be filed in the PACS" in refused["reason"], refused["reason"]
    assert "BytesLengthException" in refused["reason"], refused["reason"]
    with national.api() as api:  # both are home: the exchange does not list them again
        waiting = api.get("/jobs", params={"acknowledged": "false", "limit": 10}).json()
        listed = api.get("/jobs", params={"limit": 10}).json()
    assert waiting == []
    # And knows which results reached the PACS.
    delivery = {job["id"]: job["delivery"] for job in listed}
    assert delivery == {
        refused["exchange_job_id"]: "unfileable",
        delivered["exchange_job_id"]: "delivered",
    }


def test_results_whose_names_clash_with_the_gateway_s_own_files_are_each_filed_once(
    national: National, spoiling: list[Spoiler], orthanc_factory: Any, tmp_path: Path
) -> None:
    """Before, `reidentified-a.dcm` was taken for `a.dcm`'s re-identified copy: the PACS got
    one result under the pseudonym (a new patient to it) and lost the other."""
    spoiling.append(clashing_names)
    [(files, study_uid)] = studies(tmp_path / "studies", 1)
    gateway, pacs = run_gateway(national, orthanc_factory, tmp_path, [files])
    try:
        assert gateway.wait_until(lambda: settled(gateway), timeout=120), gateway.jobs()
        [job] = gateway.jobs()
        assert gateway_gauge(gateway, "aifi_gateway_jobs_undelivered") == 0
    finally:
        gateway.stop()
    assert job["state"] == "delivered" and job["results_delivered"] == 2, job
    filed = pacs_instances(pacs, study_uid)
    assert sorted(tags["PatientID"] for tags in filed) == ["HOSP-0", "HOSP-0"]
    assert len({tags["SOPInstanceUID"] for tags in filed}) == 2


def test_an_unexpected_error_on_one_job_retries_it_after_the_jobs_behind_it(
    national: National,
    orthanc_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever goes wrong with one job (here a fault in queueing its notice, once), the jobs
    behind it come home, and it is tried again after its back-off, not dropped."""
    queue_notice = Gateway._queue_result_notice
    failed: list[str] = []

    def both_ended() -> bool:
        with national.api() as api:
            listed = api.get("/jobs", params={"state": "completed"}).json()
        return len(listed) == 2

    def once_failing(gateway: Gateway, local: Any, job: dict[str, Any], *more: Any) -> None:
        if not failed:
            failed.append(str(job["id"]))
            # The job behind it ended too, before the fault: on a loaded machine the vendor
            # may otherwise finish it after this job's back-off, and it would come home last.
            wait_for(both_ended, timeout=60, what="the job behind it to end")
            raise RuntimeError("a fault no handler expects")
        queue_notice(gateway, local, job, *more)

    monkeypatch.setattr(Gateway, "_queue_result_notice", once_failing)
    (first, first_study), (second, second_study) = studies(tmp_path / "studies", 2)
    gateway, pacs = run_gateway(national, orthanc_factory, tmp_path, [first, second])
    try:
        assert gateway.wait_until(
            lambda: [job["state"] for job in gateway.jobs()] == ["delivered"] * 2, timeout=120
        ), gateway.jobs()
        retried, other = sorted(gateway.jobs(), key=lambda job: job["id"])
    finally:
        gateway.stop()
    assert failed == [retried["exchange_job_id"]]
    assert retried["delivered_at"] > other["delivered_at"]  # after the job behind it
    assert [tags["PatientID"] for tags in pacs_instances(pacs, first_study)] == ["HOSP-0"]
    assert [tags["PatientID"] for tags in pacs_instances(pacs, second_study)] == ["HOSP-1"]
