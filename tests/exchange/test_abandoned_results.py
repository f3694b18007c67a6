"""Results of an attempt that did not finish (its worker died, its lease ran out, it handed the
job back) are not the job's: the next attempt starts with none, so the hospital gets only what
the attempt that completed made, and completing with nothing new is refused."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from aifi.exchange import jobs as jobs_module
from aifi.exchange import transfers as transfers_module
from aifi.exchange.blob_keys import result_folder
from aifi.exchange.clock import utcnow
from aifi.products.tissue_volume import run as tissue_volume
from aifi.vendor import JobContext
from scale.exchange_api import OPERATOR_KEY, Exchange, Org, blobs_under

OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}
DISCARDS = "DELETE FROM job_results"

#: The tests move the exchange's clock and run its lease sweep themselves.
pytestmark = pytest.mark.usefixtures("quiet_replica")


class Attempts:
    """One job, claimed and worked on attempt after attempt, on a clock the test moves."""

    def __init__(
        self, exchange: Exchange, parties: dict[str, Org], study: list[Path], folder: Path
    ) -> None:
        self.exchange = exchange
        self.hospital, self.vendor = parties["hospital_a"], parties["vendor_a"]
        self.job = exchange.ready_job(self.hospital, "product-a", study)
        self.study = study
        self.folder = folder
        folder.mkdir(parents=True)
        self.failed_uploads: list[str] = []
        self.now = utcnow()
        self.services = exchange.client.app.state.services

    def claim(self) -> dict[str, Any]:
        claim = self.exchange.claim(self.vendor, lease_seconds=30)
        assert claim is not None and claim["job"]["id"] == self.job["id"]
        return claim

    def upload(self, claim: dict[str, Any], name: str) -> None:
        """A real result (the reference product's SR) under `name`. A refusal is kept in
        `failed_uploads`, for the test to judge when the upload ran on a thread of its own."""
        output = Path(tempfile.mkdtemp(dir=self.folder, prefix=name))
        made = tissue_volume(JobContext(job={}, inputs=self.study, output_dir=output))
        put = self.exchange.client.put(
            f"/jobs/{self.job['id']}/results/{name}",
            content=made.files[0].path.read_bytes(),
            headers={"X-Lease-Token": claim["lease_token"], **self.vendor.headers},
        )
        if put.status_code != 201:
            self.failed_uploads.append(f"{put.status_code} {put.text}")
        if threading.current_thread() is threading.main_thread():
            assert put.status_code == 201, put.text

    def complete(self, claim: dict[str, Any]) -> Any:
        return self.exchange.client.post(
            f"/jobs/{self.job['id']}/complete",
            json={"lease_token": claim["lease_token"]},
            headers=self.vendor.headers,
        )

    def abandon(self, claim: dict[str, Any], how: str) -> None:
        """End the attempt without a word (its lease runs out) or by handing the job back."""
        if how == "its lease ran out":
            self.now += timedelta(seconds=31)
            assert self.services.jobs.expire_leases() == 1
            return
        released = self.exchange.client.post(
            f"/jobs/{self.job['id']}/release",
            json={"lease_token": claim["lease_token"], "reason": "the worker is shutting down"},
            headers=self.vendor.headers,
        )
        assert released.status_code == 200, released.text

    def result_blobs(self) -> list[str]:
        return blobs_under(self.services.blobs, result_folder(self.job["id"]))

    def job_is_held(self) -> bool:
        """Whether another transaction that wants the job's row for writing is kept waiting:
        on PostgreSQL a shared row lock (it stands beside another shared one), on SQLite the
        database's write lock. Each is waited for up to two seconds, past the moments the
        exchange's own sweeps hold it."""
        db = self.services.db
        if db.is_postgresql:
            with db.engine.connect() as other:
                other.execute(text("SET lock_timeout = '2s'"))
                try:
                    other.execute(
                        text("SELECT id FROM jobs WHERE id = :id FOR SHARE"),
                        {"id": self.job["id"]},
                    )
                except OperationalError:
                    return True
                return False
        other = sqlite3.connect(db.url.removeprefix("sqlite:///"), timeout=2)
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return True
        finally:
            other.close()
        return False

    @contextmanager
    def statements(self) -> Iterator[list[str]]:
        """The SQL the exchange sends meanwhile."""
        sent: list[str] = []

        def keep(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            sent.append(statement)

        engine = self.services.db.engine
        event.listen(engine, "before_cursor_execute", keep)
        try:
            yield sent
        finally:
            event.remove(engine, "before_cursor_execute", keep)


@pytest.fixture
def attempts(
    exchange: Exchange,
    parties: dict[str, Org],
    make_ct: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Attempts:
    job = Attempts(exchange, parties, make_ct(slices=1), tmp_path / "results")

    def clock() -> datetime:
        return job.now

    monkeypatch.setattr(jobs_module, "utcnow", clock)
    return job


@pytest.mark.parametrize("how", ["its lease ran out", "handed back"])
def test_the_hospital_gets_only_the_results_of_the_attempt_that_completed(
    attempts: Attempts, how: str
) -> None:
    with attempts.statements() as first_claim:
        first = attempts.claim()
    assert not [s for s in first_claim if s.startswith(DISCARDS)]  # the busiest path: no more
    attempts.upload(first, "a.dcm")
    [abandoned_blob] = attempts.result_blobs()
    attempts.abandon(first, how)

    second = attempts.claim()
    assert abandoned_blob not in attempts.result_blobs()  # gone with its row
    attempts.upload(second, "b.dcm")
    done = attempts.complete(second)
    assert done.status_code == 200, done.text

    exchange, hospital, job_id = attempts.exchange, attempts.hospital, attempts.job["id"]
    listed = exchange.client.get(f"/jobs/{job_id}/results", headers=hospital.headers).json()
    assert [result["name"] for result in listed] == ["b.dcm"]
    [kept] = attempts.result_blobs()
    assert kept.endswith(".b.dcm")
    audit = exchange.client.get("/audit", params={"limit": 5000}, headers=OPERATOR).json()
    discarded = [
        entry
        for entry in audit
        if (entry["action"], entry["object_type"], entry["object_id"])
        == ("delete", "result", job_id)
    ]
    assert len(discarded) == 1 and "discarded 1 result" in discarded[0]["detail"], discarded


@pytest.mark.parametrize("how", ["its lease ran out", "handed back"])
def test_a_job_claimed_again_is_not_completed_on_an_earlier_attempts_results(
    attempts: Attempts, how: str
) -> None:
    first = attempts.claim()
    attempts.upload(first, "a.dcm")
    attempts.abandon(first, how)
    second = attempts.claim()
    refused = attempts.complete(second)
    assert refused.status_code == 422 and "no results" in refused.json()["detail"]


class HeldUp:
    """An upload stopped at `step` (a function of the transfers module) until the test lets
    it go: at the result check, before the upload holds the job; or at the result row's
    insert, after."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
        self.entered, self.go = threading.Semaphore(0), threading.Event()
        self._step = getattr(transfers_module, step)
        monkeypatch.setattr(transfers_module, step, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.release()
        assert self.go.wait(timeout=60)
        return self._step(*args, **kwargs)

    def inside(self, uploads: int = 1) -> bool:
        return all(self.entered.acquire(timeout=60) for _ in range(uploads))


CHECKING, RECORDING = "check_result_file", "insert_new"


def test_an_upload_holds_the_job_from_its_last_lease_check_to_its_commit(
    attempts: Attempts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sweep, release, claim or other upload can change the job between the upload's last
    look at its lease and its commit. SQLite's reads take no lock: the upload takes the
    write lock first. PostgreSQL's lock must keep out a second upload to the job too."""
    first = attempts.claim()
    held = HeldUp(monkeypatch, RECORDING)
    assert not attempts.job_is_held()
    upload = threading.Thread(target=attempts.upload, args=(first, "a.dcm"))
    upload.start()
    try:
        assert held.inside()
        assert attempts.job_is_held()
    finally:
        held.go.set()
        upload.join(timeout=60)
    assert not upload.is_alive() and attempts.failed_uploads == []
    assert not attempts.job_is_held()


@pytest.mark.parametrize("how", ["its lease ran out", "handed back"])
def test_an_attempt_that_ended_while_its_result_was_checked_does_not_record_it(
    attempts: Attempts, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The sweep (or the worker's release) and the next claim commit while a result is being
    checked: the upload is refused, saying the lease is gone, and nothing of it stays."""
    first = attempts.claim()
    held = HeldUp(monkeypatch, CHECKING)
    upload = threading.Thread(target=attempts.upload, args=(first, "a.dcm"))
    upload.start()
    try:
        assert held.inside()
        attempts.abandon(first, how)
        second = attempts.claim()
    finally:
        held.go.set()
        upload.join(timeout=60)
    assert not upload.is_alive()
    [refused] = attempts.failed_uploads
    assert refused.startswith("409 ") and "not held by this lease" in refused
    assert results_of(attempts, second) == []
    assert attempts.result_blobs() == []


@pytest.mark.parametrize("how", ["its lease ran out", "handed back"])
def test_an_attempt_ended_while_its_result_is_recorded_leaves_it_out_of_the_next(
    attempts: Attempts, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The sweep (or the release) and the next claim, tried while a result is being
    recorded: the upload, whose lease held, commits first; the next claim drops it."""
    first = attempts.claim()
    held = HeldUp(monkeypatch, RECORDING)
    upload = threading.Thread(target=attempts.upload, args=(first, "a.dcm"))
    upload.start()
    assert held.inside()
    claims: list[dict[str, Any]] = []

    def end_and_claim_again() -> None:
        if how == "handed back":
            attempts.abandon(first, how)  # waits for the upload's commit
        elif attempts.services.jobs.expire_leases() == 0:
            # PostgreSQL's sweep passes over a row in use (SQLite's waits for the write
            # lock): the job is taken at the sweep's next round.
            upload.join(timeout=60)
            assert attempts.services.jobs.expire_leases() == 1
        claims.append(attempts.claim())

    if how == "its lease ran out":
        attempts.now += timedelta(seconds=31)
    ending = threading.Thread(target=end_and_claim_again)
    ending.start()
    held.go.set()
    upload.join(timeout=60)
    ending.join(timeout=60)
    assert not upload.is_alive() and not ending.is_alive()
    [second] = claims
    assert attempts.failed_uploads == []
    assert second["lease_token"] != first["lease_token"]
    assert results_of(attempts, second) == []
    assert attempts.result_blobs() == []


def test_two_uploads_of_one_result_take_turns(
    attempts: Attempts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker sent a result again (the answer to the first seemed lost) while the first was
    still being checked: the second waits for the first and replaces it, instead of failing
    on the name."""
    claim = attempts.claim()
    held = HeldUp(monkeypatch, CHECKING)
    uploads = [threading.Thread(target=attempts.upload, args=(claim, "a.dcm")) for _ in "ab"]
    for upload in uploads:
        upload.start()
    try:
        assert held.inside(uploads=2)
    finally:
        held.go.set()
        for upload in uploads:
            upload.join(timeout=60)
    assert not any(upload.is_alive() for upload in uploads)
    assert attempts.failed_uploads == []
    assert [result["name"] for result in results_of(attempts, claim)] == ["a.dcm"]
    assert len(attempts.result_blobs()) == 1


def results_of(attempts: Attempts, claim: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's results as the holder of `claim` sees them."""
    listed: list[dict[str, Any]] = attempts.exchange.client.get(
        f"/jobs/{attempts.job['id']}/results",
        headers={"X-Lease-Token": claim["lease_token"], **attempts.vendor.headers},
    ).json()
    return listed
