"""The vendor SDK's worker loop: a product's failures and refused results reach the hospital
as a failed job with a reason, and the worker lives on."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pydicom
import pytest

from aifi.dicom.deid import Deidentifier, PseudonymKey
from aifi.phantoms import write_study
from aifi.products import ich_triage, tissue_volume
from aifi.vendor import (
    JobContext,
    Lease,
    ProductError,
    ProductResult,
    Renewal,
    ResultFile,
    VendorClient,
    Worker,
)
from aifi.vendor.worker import HAND_BACK_PAUSE, NOT_LET_IN_PAUSE, STORAGE_WAIT_SECONDS
from scale.servers import wait_for
from support.national import HOSPITAL, OPERATOR_KEY, VENDOR, National, national_path, samples
from support.peers import fill, small_disk

PRODUCT = "worker-test-product"


@pytest.fixture
def national(tmp_path: Path) -> Iterator[National]:
    with national_path(tmp_path) as path:
        vendor = VendorClient(path.exchange.url, path.vendor_key)
        vendor.register_product({**tissue_volume.manifest(VENDOR), "id": PRODUCT})
        vendor.close()
        with path.api() as api:
            api.post("/subscriptions", json={"product_id": PRODUCT}).raise_for_status()
        yield path


def submit_study(national: National, folder: Path, product: str = PRODUCT) -> str:
    """A pseudonymised phantom uploaded as a ready job, as a gateway would; returns its id."""
    write_study("ct-head", folder / "raw", seed=1, size="small")
    engine = Deidentifier(PseudonymKey(b"k" * 32))
    files = []
    for path in sorted((folder / "raw").rglob("*.dcm")):
        target = folder / "pseudo" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        engine.deidentify_file(path, target)
        files.append(target)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with national.api() as api:
        job = api.post(
            "/jobs", json={"product_id": product, "study_uid": study_uid, "idempotency_key": "k"}
        ).json()
        for path in files:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            api.put(f"/jobs/{job['id']}/inputs/{uid}", content=path.read_bytes()).raise_for_status()
        api.post(f"/jobs/{job['id']}/ready", json={"instances": len(files)}).raise_for_status()
    return str(job["id"])


def run_one(national: National, handler: object, tmp_path: Path) -> dict[str, object]:
    client = VendorClient(national.exchange.url, national.vendor_key)
    worker = Worker(client, handler, product_ids=[PRODUCT], workdir=tmp_path)  # type: ignore[arg-type]
    job_id = worker.run_once(wait_seconds=10)
    client.close()
    assert job_id is not None
    with national.api() as api:
        return dict(api.get(f"/jobs/{job_id}").json())


def test_a_result_the_exchange_refuses_fails_the_job_with_its_reason(
    national: National, tmp_path: Path
) -> None:
    submit_study(national, tmp_path / "study")

    def echo_input(context: JobContext) -> ProductResult:
        # An input image sent back as a "result": valid DICOM, but not a result object.
        copy = context.output_dir / "echo.dcm"
        shutil.copyfile(context.inputs[0], copy)
        return ProductResult(files=[ResultFile(copy)])

    job = run_one(national, echo_input, tmp_path)
    assert job["state"] == "failed"
    assert "the exchange refused a result" in str(job["reason"])
    assert "accepted-sop-class" in str(job["reason"])


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ProductError("no brain in the field of view"), "no brain in the field of view"),
        (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
        # Not the worker's disk: a bug, which handing back would send round for ever.
        (FileNotFoundError(2, "No such file or directory"),
         "FileNotFoundError: [Errno 2] No such file or directory"),
    ],
)  # fmt: skip
def test_a_product_that_raises_fails_the_job_and_not_the_worker(
    national: National, tmp_path: Path, error: Exception, expected: str
) -> None:
    submit_study(national, tmp_path / "study")

    def broken(_context: JobContext) -> ProductResult:
        raise error

    job = run_one(national, broken, tmp_path)
    assert job["state"] == "failed" and job["reason"] == expected
    assert job["hospital_id"] == HOSPITAL


def test_a_worker_that_names_its_version_has_its_failures_counted_under_it(
    national: National, tmp_path: Path
) -> None:
    """The vendor published 2.0.0 while this worker still runs 1.0.0: the job it fails was
    created for 2.0.0, and is counted under the version that failed it."""
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product({**tissue_volume.manifest(VENDOR), "id": PRODUCT, "version": "2.0.0"})
    vendor.close()
    job_id = submit_study(national, tmp_path / "study")
    with national.api() as api:
        assert api.get(f"/jobs/{job_id}").json()["product_version"] == "2.0.0"

    def broken(_context: JobContext) -> ProductResult:
        raise ProductError("no brain in the field of view")

    client = VendorClient(national.exchange.url, national.vendor_key)
    worker = Worker(
        client, broken, product_ids=[PRODUCT], workdir=tmp_path,
        product_versions={PRODUCT: "1.0.0"},
    )  # fmt: skip
    assert worker.run_once(wait_seconds=10) == job_id
    client.close()
    with national.api() as api:
        job = api.get(f"/jobs/{job_id}").json()
    assert (job["state"], job["product_version"]) == ("failed", "1.0.0")
    assert job["reason"] == "no brain in the field of view"


@pytest.mark.parametrize("version", ["", "1.0\t", "v" * 65])
def test_a_worker_refuses_a_version_the_exchange_would_refuse(version: str) -> None:
    """Refused at the start, not by the exchange at every failure the worker reports."""
    client = VendorClient("http://127.0.0.1:9", "key")
    said = (
        f"product 'p': product_version: must be 1 to 64 printable characters with no space at "
        f"either end, the version that this worker runs as the catalogue names it (given "
        f"{version!r}, {len(version)} characters)"
    )
    with pytest.raises(ValueError, match=re.escape(said)):
        Worker(client, tissue_volume.run, product_ids=["p"], product_versions={"p": version})
    client.close()


def test_a_worker_warns_of_a_version_with_a_space_at_an_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The exchange takes one only as the catalogue published it so (before it refused such
    versions), which the worker cannot know at its start: it says so and goes on."""
    client = VendorClient("http://127.0.0.1:9", "key")
    with caplog.at_level(logging.WARNING, logger="aifi.vendor.worker"):
        Worker(client, tissue_volume.run, product_ids=["p"], product_versions={"p": "1.0 "})
    client.close()
    assert "product 'p': version '1.0 ' has a space at an end" in caplog.text


def test_a_heartbeat_renews_the_lease_for_as_long_as_its_claim_asked(
    national: National, tmp_path: Path
) -> None:
    """A lease claimed for ten minutes stays ten minutes at every heartbeat, not the
    exchange's default minute: a product that runs for five minutes keeps its job."""
    submit_study(national, tmp_path / "study")
    with VendorClient(national.exchange.url, national.vendor_key) as client:
        lease = client.claim([PRODUCT], lease_seconds=600, wait_seconds=10, start=True)
        assert lease is not None
        renewal = client.heartbeat(lease)
    assert renewal.lease_seconds == 600
    left = datetime.fromisoformat(renewal.lease_expires_at) - datetime.now(UTC)
    assert timedelta(seconds=590) < left <= timedelta(seconds=600)


class RecordsRenewals(VendorClient):
    """A vendor client that tells when its worker's heartbeat has been answered."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(url, key)
        self.renewals: list[Renewal] = []
        self.renewed = threading.Event()

    def heartbeat(self, lease: Lease) -> Renewal:
        renewal = super().heartbeat(lease)
        self.renewals.append(renewal)
        self.renewed.set()
        return renewal


def test_a_worker_beats_for_the_lease_it_claimed(national: National, tmp_path: Path) -> None:
    """The worker's own heartbeats ask for its lease length, not the exchange's default (60 s
    here): the job's lease, as the exchange keeps it, ends within the worker's."""
    job_id = submit_study(national, tmp_path / "study")
    client = RecordsRenewals(national.exchange.url, national.vendor_key)
    ends: list[datetime] = []

    def waits_for_a_heartbeat(context: JobContext) -> ProductResult:
        assert client.renewed.wait(timeout=30), "no heartbeat while the product ran"
        with national.api() as api:
            kept = api.get(f"/jobs/{job_id}").json()["lease_expires_at"]
        ends.append(datetime.fromisoformat(kept))
        return tissue_volume.run(context)

    # A lease far shorter than the default (60 s), yet long enough that a loaded machine's
    # stall between two heartbeats (one a third of it) does not let it run out.
    worker = Worker(
        client, waits_for_a_heartbeat, product_ids=[PRODUCT], lease_seconds=15, workdir=tmp_path
    )
    assert worker.run_once(wait_seconds=10) == job_id
    client.close()
    assert client.renewals[0].lease_seconds == 15
    assert ends[0] - datetime.now(UTC) < timedelta(seconds=15)
    with national.api() as api:
        assert api.get(f"/jobs/{job_id}").json()["state"] == "completed"


class StopAtFirstPause(threading.Event):
    """A worker loop's stop signal that ends the loop at its first pause, noting how long the
    pause would have been."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(timeout)
        self.set()
        return True


@pytest.mark.parametrize("where", ["downloading the inputs", "in the product"])
def test_a_worker_whose_disk_is_full_hands_the_job_back_at_once(
    national: National, tmp_path: Path, where: str
) -> None:
    """The worker's own disk (a real tmpfs) fills: the job goes back to the queue at once,
    not failed (the study is fine) and not held until the lease runs out, and the worker's
    half-written files are gone; the worker pauses before it claims again; with room again a
    worker does the job."""
    job_id = submit_study(national, tmp_path / "study")
    client = VendorClient(national.exchange.url, national.vendor_key)

    def writes_scratch(context: JobContext) -> ProductResult:
        (context.output_dir / "scratch").write_bytes(b"\0" * 3_000_000)
        return tissue_volume.run(context)

    with small_disk(tmp_path / "disk", "4m") as disk:
        worker = Worker(
            client,
            writes_scratch,
            product_ids=[PRODUCT],
            lease_seconds=3600,
            workdir=disk,
            hand_back_pause=HAND_BACK_PAUSE / 2,
        )
        if where == "downloading the inputs":
            filler = fill(disk)
        else:  # room for the inputs, not for the product's scratch file
            filler = disk / "filler"
            filler.write_bytes(b"\0" * 1_500_000)
        stop = StopAtFirstPause()
        worker.run(stop, wait_seconds=10)
        assert stop.pauses == [HAND_BACK_PAUSE / 2]  # not straight back to claim the job again
        with national.api() as api:
            job = api.get(f"/jobs/{job_id}").json()
        assert job["state"] == "requested" and job["attempts"] == 0, job
        assert job["reason"] is None  # the hospital is told nothing went wrong with its study
        assert sorted(path.name for path in disk.iterdir()) == ["filler"]
        filler.unlink()
        assert worker.run_once(wait_seconds=10) == job_id
    client.close()
    with national.api() as api:
        job = api.get(f"/jobs/{job_id}").json()
    assert job["state"] == "completed" and job["attempts"] == 1, job


def handed_back_reasons(national: National, job_id: str) -> list[str]:
    """Why the job was handed back, as the exchange's access log keeps it."""
    with national.api(OPERATOR_KEY) as api:
        audit = api.get("/audit", params={"limit": 5000}).json()
    said = [entry["detail"] for entry in audit if entry["object_id"] == job_id]
    return [detail for detail in said if detail.startswith("handed back: ")]


def test_a_worker_whose_folder_is_unusable_hands_the_job_back_and_says_so(
    national: National, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a full disk but a folder the worker cannot work in at all (here not a folder; a
    read-only or failing disk alike): the job goes back to the queue now rather than stay
    held until its lease runs out while the worker claims the next, and the worker logs an
    error, since no job will fare better on it until an engineer looks."""
    job_id = submit_study(national, tmp_path / "study")
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    client = VendorClient(national.exchange.url, national.vendor_key)
    worker = Worker(client, tissue_volume.run, product_ids=[PRODUCT], workdir=not_a_folder)
    stop = StopAtFirstPause()
    worker.run(stop, wait_seconds=10)
    client.close()
    assert stop.pauses == [HAND_BACK_PAUSE]
    with national.api() as api:
        job = api.get(f"/jobs/{job_id}").json()
    assert job["state"] == "requested" and job["attempts"] == 0, job
    [reason] = handed_back_reasons(national, job_id)
    assert "the worker has no folder to work in" in reason and "Not a directory" in reason
    logged = [r.levelno for r in caplog.records if f"job {job_id} handed back" in r.getMessage()]
    assert logged == [logging.ERROR]


def input_blobs(national_folder: Path, job_id: str) -> list[Path]:
    """The exchange's stored copies of the job's inputs (its local blob store)."""
    return sorted((national_folder / "exchange" / "blobs" / "inputs" / job_id).iterdir())


def test_an_input_the_exchange_no_longer_holds_fails_the_job_naming_it(
    national: National, tmp_path: Path
) -> None:
    """No worker can run a job one of whose inputs is gone (a blob store restored from an older
    copy): the hospital hears so now, told which input, not after the lease ran out."""
    job_id = submit_study(national, tmp_path / "study")
    gone = input_blobs(tmp_path, job_id)[0]
    sop_uid = gone.name.rsplit(".", 2)[0]  # the key is UID.random.dcm
    gone.unlink()
    job = run_one(national, tissue_volume.run, tmp_path)
    assert job["state"] == "failed", job
    assert f"input {sop_uid} is no longer at the exchange" in str(job["reason"])


def test_a_job_whose_input_the_exchange_lost_keeps_its_version_when_a_worker_fails_it(
    national: National, tmp_path: Path
) -> None:
    """No version of the product ran a job whose input the exchange's store lost: the
    failure the worker reports, naming its version, leaves the job under the version it was
    created for, as the same loss met by a hand-back or a lapsed lease does."""
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product({**tissue_volume.manifest(VENDOR), "id": PRODUCT, "version": "2.0.0"})
    vendor.close()
    job_id = submit_study(national, tmp_path / "study")
    input_blobs(tmp_path, job_id)[0].unlink()
    client = VendorClient(national.exchange.url, national.vendor_key)
    worker = Worker(
        client, tissue_volume.run, product_ids=[PRODUCT], workdir=tmp_path,
        product_versions={PRODUCT: "1.0.0"},
    )  # fmt: skip
    assert worker.run_once(wait_seconds=10) == job_id
    client.close()
    with national.api() as api:
        job = api.get(f"/jobs/{job_id}").json()
    assert (job["state"], job["product_version"]) == ("failed", "2.0.0")
    assert job["inputs_lost_at"] is not None


def test_an_exchange_that_cannot_give_an_input_gets_the_job_back(
    national: National, tmp_path: Path
) -> None:
    """The exchange fails on an input (a 500, after the client's own retries): the job goes
    back to the queue at once, its attempt not counted, for a worker that may fare better."""
    job_id = submit_study(national, tmp_path / "study")
    unreadable = input_blobs(tmp_path, job_id)[0]
    unreadable.unlink()
    unreadable.mkdir()  # the exchange's read of it fails: IsADirectoryError, a 500
    client = VendorClient(national.exchange.url, national.vendor_key)
    worker = Worker(client, tissue_volume.run, product_ids=[PRODUCT], workdir=tmp_path)
    stop = StopAtFirstPause()
    worker.run(stop, wait_seconds=10)
    client.close()
    assert stop.pauses == [HAND_BACK_PAUSE]
    with national.api() as api:
        job = api.get(f"/jobs/{job_id}").json()
    assert job["state"] == "requested" and job["attempts"] == 0, job
    [reason] = handed_back_reasons(national, job_id)
    assert "the exchange did not give the job's inputs" in reason and "500" in reason


def test_the_worker_command_works_on_the_disk_it_is_given(
    national: National, tmp_path: Path
) -> None:
    """`aifi worker --workdir` keeps each job's files on the folder named (a real tmpfs here):
    full, the job is handed back and nothing is left there; with room, the job is done."""
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product(ich_triage.manifest(VENDOR))
    vendor.close()
    with national.api() as api:
        api.post("/subscriptions", json={"product_id": ich_triage.PRODUCT_ID}).raise_for_status()
    job_id = submit_study(national, tmp_path / "study", ich_triage.PRODUCT_ID)
    key = tmp_path / "vendor.key"
    key.write_text(national.vendor_key)
    aifi = Path(sys.executable).with_name("aifi")
    help_text = subprocess.run(
        [aifi, "worker", "--help"], capture_output=True, text=True, check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    assert f"(default {HAND_BACK_PAUSE:.0f} s)" in help_text
    assert f"(default {STORAGE_WAIT_SECONDS:.0f} s)" in help_text

    def worker_on(disk: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [aifi, "worker", "--product", ich_triage.PRODUCT_ID, "--exchange",
             national.exchange.url, "--api-key-file", str(key), "--workdir", str(disk / "jobs"),
             "--hand-back-pause", "3600"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def handed_back() -> float:
        figures = samples(httpx.get(f"{national.exchange.url}/metrics", timeout=60).text)
        counter = "aifi_exchange_handed_back_jobs_total"
        return figures.get((counter, (("product", ich_triage.PRODUCT_ID),)), 0.0)

    with small_disk(tmp_path / "disk", "1m") as disk:
        (disk / "jobs").mkdir()
        filler = fill(disk)
        worker = worker_on(disk)
        try:
            wait_for(lambda: handed_back() == 1, timeout=60, what="the job to be handed back")
        finally:
            worker.send_signal(signal.SIGTERM)
            said = worker.communicate(timeout=60)[0]
        assert worker.returncode == 0, said
        assert f"job {job_id} handed back" in said and "No space left on device" in said, said
        with national.api() as api:
            job = api.get(f"/jobs/{job_id}").json()
        assert job["state"] == "requested" and job["attempts"] == 0, job
        assert not list((disk / "jobs").iterdir())  # nothing half-written left behind
        filler.unlink()
        worker = worker_on(disk)
        try:
            with national.api() as api:
                wait_for(
                    lambda: api.get(f"/jobs/{job_id}").json()["state"] == "completed",
                    timeout=120,
                    what="the job to be done with room on the disk",
                )
        finally:
            worker.send_signal(signal.SIGTERM)
            said = worker.communicate(timeout=60)[0]
        assert worker.returncode == 0, said
        assert not list((disk / "jobs").iterdir())


def test_a_worker_the_exchange_does_not_let_in_knocks_once_a_minute(
    national: National, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong or revoked key: each try is a refusal in the exchange's access log, and none
    a second later would be let in. The worker says so, and waits a minute, not a second."""
    client = VendorClient(national.exchange.url, "aifi_a-key-the-operator-revoked")
    stop = StopAtFirstPause()
    Worker(client, tissue_volume.run, product_ids=[PRODUCT]).run(stop, wait_seconds=1)
    client.close()
    assert stop.pauses == [NOT_LET_IN_PAUSE]
    [said] = [
        r.getMessage() for r in caplog.records if "does not let this worker in" in r.getMessage()
    ]
    assert "401" in said and "aifi worker --check" in said


class LosesTheCompletingAnswer(httpx.HTTPTransport):
    """The network to the exchange breaks off once, just after the exchange took the upload
    that completes the job: its answer never comes back, and the client sends it again."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        completing = request.method == "PUT" and request.url.params.get("complete") == "true"
        if completing and not self.lost:
            self.lost += 1
            response.read()
            response.close()
            raise httpx.ReadError("the connection broke off", request=request)
        return response


def test_a_job_whose_completing_answer_was_lost_is_logged_as_completed(
    national: National, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The upload that completed the job is sent again, and the exchange refuses it (409): the
    job ended with the first. The worker says the job completed, not that its lease was lost
    and another worker will take it, which would send an engineer looking for a fault."""
    job_id = submit_study(national, tmp_path / "study")
    network = LosesTheCompletingAnswer()
    client = VendorClient(national.exchange.url, national.vendor_key, transport=network)
    worker = Worker(client, tissue_volume.run, product_ids=[PRODUCT], workdir=tmp_path)
    with caplog.at_level(logging.INFO, logger="aifi.vendor.worker"):
        assert worker.run_once(wait_seconds=10) == job_id
    client.close()
    assert network.lost == 1
    with national.api() as api:
        job = api.get(f"/jobs/{job_id}").json()
    assert job["state"] == "completed" and job["attempts"] == 1, job
    said = [r.getMessage() for r in caplog.records if f"job {job_id}" in r.getMessage()]
    assert not [line for line in said if "another worker will take it" in line], said
    assert [line for line in said if "completed" in line and "answer" in line], said
