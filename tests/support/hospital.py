"""A hospital's gateway driven step by step, as its threads drive it, against a real exchange
and vendor worker (`support.national`), with the network between the gateway and the exchange
in the test's hands: taken away as an outage would, an answer lost, a request changed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom

from aifi.gateway.config import load_config
from aifi.gateway.disclosures import NotRecorded
from aifi.gateway.exchange_client import GatewayClient
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from aifi.vendor import JobContext, ProductError, ProductResult
from support.national import National, gateway_config
from support.peers import free_port

PRODUCT = tissue_volume.PRODUCT_ID


def refuses(context: JobContext) -> ProductResult:
    """A product that fails every study it is sent."""
    raise ProductError("the product cannot read this study")


def acknowledgements_lost(hospital: Hospital) -> None:
    """From now on the gateway's acknowledgements of ended jobs do not reach the exchange."""
    passing = hospital.network.handle_request

    def lost(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/acknowledge"):
            raise httpx.ConnectError("the exchange is unreachable", request=request)
        return passing(request)

    hospital.network.handle_request = lost  # type: ignore[method-assign]


def disclosure_log_full(*_args: object, **_kwargs: object) -> None:
    """In place of `DisclosureLog.record`: the log's disk is full."""
    raise NotRecorded("the disclosure log cannot be written: disk full")


class Network(httpx.BaseTransport):
    """The way from the gateway to the exchange, which the test can break: the exchange
    `away` (no connection), or the answer to a job's creation lost on its way back."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.away = False
        self.lose_creation_answers = False
        #: The exchange goes away as soon as it has lost an answer (restarting, say).
        self.away_once_lost = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.away:
            raise httpx.ConnectError("the exchange is unreachable", request=request)
        response = self._inner.handle_request(request)
        if self.lose_creation_answers and (request.method, request.url.path) == ("POST", "/jobs"):
            response.read()
            response.close()
            self.away = self.away or self.away_once_lost
            raise httpx.ReadError("the connection broke before the answer", request=request)
        return response

    def close(self) -> None:
        self._inner.close()


class Hospital:
    """A gateway not started (the test turns its wheels), delivering to the national path's
    PACS (`National.pacs`), the study its modality sends, and the network between the gateway
    and the exchange."""

    def __init__(self, national: National, tmp_path: Path, retries: int = 0) -> None:
        self.retries = retries  # the client's own; 0: the test decides when the exchange is back
        write_study("ct-head", tmp_path / "study", seed=6, size="small")
        *self.files, self.late = sorted((tmp_path / "study").rglob("*.dcm"))
        self.path = gateway_config(
            tmp_path, national, free_port(), national.pacs().dicom_port, quiet_seconds=0.0
        )
        self.national = national
        self.network = Network()
        self.gateway = self.open()

    def open(self) -> Gateway:
        self.network = Network()
        client = GatewayClient(
            self.national.exchange.url,
            self.national.hospital_key,
            transport=self.network,
            retries=self.retries,
        )
        gateway = Gateway(load_config(self.path), client=client)
        gateway.incoming.mkdir(exist_ok=True)
        return gateway

    def close(self) -> None:
        self.gateway.close()

    def receive(self, *files: Path) -> None:
        for file in files:
            arrived = self.gateway.incoming / file.name
            shutil.copy(file, arrived)
            assert self.gateway.receive(arrived, "CT_SCANNER", 1).stored
        self.gateway.sending_ended(1, "CT_SCANNER")

    def route(self) -> int:
        """The quiet time is over: route what is due; returns how many jobs were made."""
        return self.gateway.assemble_due(time.time() + 5)

    def send_due(self, now: float | None = None) -> list[int]:
        """One pass of the sender thread (`Gateway._submit_loop`) at `now`: the jobs due, in
        their order; returns their ids."""
        return self.gateway.send_pending(now)

    def fail_to_send(self, job_id: int, until: float) -> None:
        """The exchange is away: the job is tried and fails, again and again, until its next
        try is `until` or later. The product's entry is at hand (the gateway keeps it a
        minute), so each try goes as far as the request that opens the job, which never
        leaves: whether the exchange may hold the job is as it was."""
        self.gateway.client.product(PRODUCT)
        may_be_open = self.gateway.state.job(job_id)["may_be_open"]
        self.network.away = True
        while (job := self.gateway.state.job(job_id))["next_attempt_at"] < until:
            assert job_id in self.send_due(max(job["next_attempt_at"], time.time()))
        self.network.away = False
        job = self.gateway.state.job(job_id)
        assert job["state"] == "pending" and "unreachable" in job["reason"], job["reason"]
        assert job["may_be_open"] == may_be_open

    def late_slice_while_unsent(self, back_off: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Round 1 is routed, and tried while the exchange is away until its next try is
        `back_off` seconds off; then the late slice comes and opens round 2. Their jobs."""
        self.receive(*self.files)
        assert self.route() == 1
        [first] = self.jobs()
        self.fail_to_send(first["id"], until=time.time() + back_off)
        self.receive(self.late)
        assert self.route() == 1
        first, second = self.jobs()
        assert second["round"] == 2
        return first, second

    def jobs(self) -> list[dict[str, Any]]:
        return self.gateway.jobs()

    def exchange_jobs(self) -> list[dict[str, Any]]:
        """The jobs the exchange holds for this hospital and the product, oldest first."""
        with self.national.api() as api:
            jobs = api.get("/jobs", params={"product_id": PRODUCT, "limit": 1000}).json()
        return sorted(jobs, key=lambda job: job["created_at"])

    def inputs(self, exchange_job_id: str) -> set[str]:
        with self.national.api() as api:
            rows = api.get(f"/jobs/{exchange_job_id}/inputs").json()
        return {row["sop_instance_uid"] for row in rows}

    def pseudonyms(self, *files: Path) -> set[str]:
        """The SOP Instance UIDs the exchange knows `files` by."""
        return {
            self.gateway.key.uid(str(pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID))
            for file in files
        }

    def disclosed(self) -> list[str]:
        entries = self.gateway.disclosures.entries()
        return [entry.detail for entry in entries if entry.action == "disclosed"]

    def opened_unrecorded(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The study is routed and its job sent whole: the exchange opened it to vendors,
        but the disclosure could not be written (the log's disk full), so the job waits for
        its retry. The job, and the exchange's job."""
        self.receive(*self.files)
        assert self.route() == 1
        [job] = self.jobs()
        self.gateway.disclosures.record = disclosure_log_full  # type: ignore[method-assign,assignment]
        try:
            assert self.send_due() == [job["id"]]
        finally:
            del self.gateway.disclosures.record
        [opened] = self.exchange_jobs()
        assert opened["inputs_complete"] and self.jobs()[0]["state"] == "pending"
        return job, opened

    def part_sent_then_broken_off(self) -> dict[str, Any]:
        """The study is routed; its job's first try breaks off at the upload of the study's
        first instance, the uploads already under way going through. The exchange's job it
        made, holding those."""
        self.receive(*self.files)
        assert self.route() == 1
        return self.send_broken_off()

    def send_broken_off(self) -> dict[str, Any]:
        """The routed study's job is tried, and the try breaks off at the upload of the
        study's first instance (`part_sent_then_broken_off`). The exchange's job it made."""
        [job] = self.jobs()
        broken = next(iter(self.pseudonyms(self.files[0])))
        passing = self.network.handle_request

        def breaks_off(request: httpx.Request) -> httpx.Response:
            if request.method == "PUT" and broken in request.url.path:
                raise httpx.ReadError("the connection broke off", request=request)
            return passing(request)

        self.network.handle_request = breaks_off  # type: ignore[method-assign]
        assert self.send_due() == [job["id"]]
        self.network.handle_request = passing  # type: ignore[method-assign]
        [opened] = self.exchange_jobs()
        return opened

    def bring_home_failed(self, exchange_job_id: str) -> None:
        """Wait for the vendor to fail the job, and bring its end home as the results thread
        does."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ended = {job["id"]: job for job in self.gateway.client.ended_jobs(wait=1)}
            if exchange_job_id in ended:
                assert ended[exchange_job_id]["state"] == "failed"
                assert self.gateway.collect(ended[exchange_job_id])
                return
        raise AssertionError(f"exchange job {exchange_job_id} did not fail within 60 s")
