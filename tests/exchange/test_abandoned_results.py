"""Results of an attempt that did not finish (its worker died, its lease ran out, it handed the
job back) are not the job's: the next attempt starts with none, so the hospital gets only what
the attempt that completed made, and completing with nothing new is refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

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
        self.now = utcnow()
        self.services = exchange.client.app.state.services

    def claim(self) -> dict[str, Any]:
        claim = self.exchange.claim(self.vendor, lease_seconds=30)
        assert claim is not None and claim["job"]["id"] == self.job["id"]
        return claim

    def upload(self, claim: dict[str, Any], name: str) -> None:
        """A real result (the reference product's SR) under `name`."""
        output = self.folder / name
        output.mkdir(parents=True)
        made = tissue_volume(JobContext(job={}, inputs=self.study, output_dir=output))
        put = self.exchange.client.put(
            f"/jobs/{self.job['id']}/results/{name}",
            content=made.files[0].path.read_bytes(),
            headers={"X-Lease-Token": claim["lease_token"], **self.vendor.headers},
        )
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


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # SQLite: one writer
def test_a_result_recorded_as_its_lease_runs_out_is_not_delivered_with_the_next_attempt(
    attempts: Attempts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload's lease is checked a moment before it runs out; the lease sweep and the next
    claim (which drops what an attempt that did not finish left) must not run between that
    check and the upload's commit, or its result lands in the next attempt and is delivered
    with it. The upload keeps the job's row until it commits: the sweep, which skips rows
    in use, takes the job at its next round, and the claim then drops the result."""
    first = attempts.claim()
    inside, go = threading.Event(), threading.Event()
    check = transfers_module.check_result_file

    def held_up(*args: Any, **kwargs: Any) -> Any:  # inside the upload's transaction
        inside.set()
        assert go.wait(timeout=60)
        return check(*args, **kwargs)

    monkeypatch.setattr(transfers_module, "check_result_file", held_up)
    upload = threading.Thread(target=attempts.upload, args=(first, "a.dcm"))
    upload.start()
    assert inside.wait(timeout=60)
    attempts.now += timedelta(seconds=31)
    swept = attempts.services.jobs.expire_leases()
    second = attempts.claim() if swept else None  # a vendor waiting claims at once
    go.set()
    upload.join(timeout=60)
    assert not upload.is_alive()
    if second is None:  # the sweep's next round
        assert attempts.services.jobs.expire_leases() == 1
        second = attempts.claim()
    assert second["job"]["attempts"] == 2
    listed = attempts.exchange.client.get(
        f"/jobs/{attempts.job['id']}/results",
        headers={"X-Lease-Token": second["lease_token"], **attempts.vendor.headers},
    ).json()
    assert listed == []
