"""A typed HTTP client for the exchange's vendor API (any language could do the same)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aifi.http import (
    TRANSIENT,
    ApiClient,
    ExchangeHTTPError,
    ExchangeNotTrusted,
    LeaseLost,
    UnexpectedAnswer,
    json_list,
    json_object,
    retry_pause,
    stopped_during,
    unexpected,
)

__all__ = [
    "LONGEST_LEASE_SECONDS",
    "ExchangeHTTPError",
    "InputGone",
    "Lease",
    "LeaseLost",
    "Renewal",
    "UnexpectedAnswer",
    "VendorClient",
]

#: The longest lease the exchange grants: its API refuses a claim or heartbeat asking for more
#: (`lease_seconds` at most 3600 in POST /jobs/claim and /jobs/{id}/heartbeat, api.md). The
#: SDK keeps its own copy, as a vendor's client would, rather than import the exchange.
LONGEST_LEASE_SECONDS = 3600.0
#: The Content-Types an input is taken with: the exchange serves each as application/dicom
#: (a proxy may relabel a binary as application/octet-stream). Anything else, such as a
#: proxy's HTML page answered 200, is not the input and never reaches the product.
INPUT_MEDIA_TYPES = frozenset({"application/dicom", "application/octet-stream"})


class InputGone(ExchangeHTTPError):
    """404 for one of a held job's inputs: the exchange no longer holds it (purged, or lost
    from its store), so no worker can run the job."""

    def __init__(self, sop_instance_uid: str, detail: str, path: str) -> None:
        super().__init__(404, detail, "GET", path)
        self.sop_instance_uid = sop_instance_uid


@dataclass(frozen=True)
class Lease:
    job: dict[str, Any]
    token: str
    #: The job's inputs as the claim listed them (None from an exchange that does not).
    inputs: list[dict[str, Any]] | None = None
    #: The lease length the claim asked for (None: the exchange's default); every heartbeat
    #: asks for it again, so the job stays held as long between beats as the claim promised.
    lease_seconds: float | None = None

    @property
    def job_id(self) -> str:
        return str(self.job["id"])


@dataclass(frozen=True)
class Renewal:
    """What a heartbeat got: the lease's new end (the exchange's clock) and its length."""

    lease_expires_at: str
    #: Seconds the exchange granted (None from an exchange that does not say): the next beat
    #: is due well within it, whatever the worker asked for.
    lease_seconds: float | None


class VendorClient(ApiClient):
    # catalogue -----------------------------------------------------------------------------

    def register_product(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return json_object(self.request("POST", "/products", json=manifest))

    # jobs ----------------------------------------------------------------------------------

    def claim(
        self,
        product_ids: list[str] | None = None,
        *,
        lease_seconds: float | None = None,
        wait_seconds: float = 20.0,
        start: bool = False,
        stop: threading.Event | None = None,
    ) -> Lease | None:
        """The most urgent job for these products, or None after `wait_seconds` without one.

        `start`: the worker begins at once, so the job goes straight to in-progress. `stop`:
        the worker was asked to stop; once it is set, a claim that could not connect is not
        tried again, so a worker stopped while the exchange's address refuses connections
        ends without waiting out its back-off (about 20 s). A claim that may have reached the
        exchange (its answer lost, or a load balancer's or proxy's 502/503/504 in its place)
        is tried again as ever, with `resume`: it may have taken a job, which is then seen
        through rather than left under a lease nobody holds.
        """
        body = {
            "product_ids": product_ids or [],
            "lease_seconds": lease_seconds,
            "wait_seconds": wait_seconds,
            "start": start,
            "claim_key": secrets.token_urlsafe(24),
        }
        response = self._claim_until_answered(body, timeout=wait_seconds + 30, stop=stop)
        if response.status_code == 204:
            return None
        data = json_object(response, "job", "lease_token")
        job, inputs = data["job"], data.get("inputs")
        if not isinstance(job, dict) or "id" not in job:
            raise unexpected(response, "a claim whose job has no id")
        if inputs is not None and not isinstance(inputs, list):
            raise unexpected(response, "a claim whose inputs are not a list")
        return Lease(
            job=job,
            token=str(data["lease_token"]),
            inputs=inputs,
            lease_seconds=lease_seconds,
        )

    def _claim_until_answered(
        self, body: dict[str, Any], timeout: float, stop: threading.Event | None
    ) -> httpx.Response:
        """Send the claim, retried as `request` retries, but each retry with `resume`: the
        exchange may have committed a claim whose answer was lost, and a plain retry would
        take a second job, the first held by a lease nobody has until it ran out. Once
        `stop` is set, the error met is raised instead of waiting to try again, as long as
        no attempt may have reached the exchange (each failed to connect)."""
        reached = False  # whether an attempt may have got to the exchange
        for attempt in range(self._retries + 1):
            try:
                return self.request("POST", "/jobs/claim", json=body, timeout=timeout, retries=0)
            except ExchangeNotTrusted:
                raise
            except (httpx.ConnectError, httpx.ConnectTimeout):
                # Never sent, so it claimed nothing: a stop need not wait for it.
                if attempt == self._retries:
                    raise
                if stopped_during(retry_pause(attempt, None), None if reached else stop):
                    raise
            except httpx.TransportError:
                reached = True
                if attempt == self._retries:
                    raise
                time.sleep(retry_pause(attempt, None))
            except ExchangeHTTPError as exc:
                reached = True  # a proxy's 502/504 may have passed the claim on
                if exc.status not in TRANSIENT or attempt == self._retries:
                    raise
                time.sleep(retry_pause(attempt, exc.retry_after))
            body = {**body, "resume": True}
        raise AssertionError("unreachable")

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as the exchange has it now: its state, attempts and reason."""
        return json_object(self.request("GET", f"/jobs/{job_id}"), "state")

    def heartbeat(self, lease: Lease) -> Renewal:
        """Renew the lease for as long as its claim asked."""
        body: dict[str, Any] = {"lease_token": lease.token}
        if lease.lease_seconds is not None:
            body["lease_seconds"] = lease.lease_seconds
        answer = self.request("POST", f"/jobs/{lease.job_id}/heartbeat", json=body)
        data = json_object(answer, "lease_expires_at")
        granted = data.get("lease_seconds")
        return Renewal(
            lease_expires_at=str(data["lease_expires_at"]),
            lease_seconds=float(granted) if granted is not None else None,
        )

    def list_inputs(self, lease: Lease) -> list[dict[str, Any]]:
        response = self.request(
            "GET", f"/jobs/{lease.job_id}/inputs", headers={"X-Lease-Token": lease.token}
        )
        return json_list(response, "sop_instance_uid")

    def download_inputs(self, lease: Lease, folder: Path) -> list[Path]:
        """Stream every input instance to `folder`; returns the files in upload order.

        Raises InputGone for an input the exchange no longer holds, and UnexpectedAnswer for
        an answer that is not an input (`INPUT_MEDIA_TYPES`)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        listed = lease.inputs if lease.inputs is not None else self.list_inputs(lease)
        for item in listed:
            uid = item["sop_instance_uid"]
            target = folder / f"{uid}.dcm"
            path = f"/jobs/{lease.job_id}/inputs/{uid}"
            try:
                self.download(path, target, {"X-Lease-Token": lease.token}, INPUT_MEDIA_TYPES)
            except ExchangeHTTPError as exc:
                if exc.status != 404:
                    raise
                raise InputGone(uid, exc.detail, path) from exc
            paths.append(target)
        return paths

    def upload_result(
        self,
        lease: Lease,
        path: Path,
        *,
        name: str | None = None,
        media_type: str = "application/dicom",
        complete: bool = False,
    ) -> dict[str, Any]:
        """Upload one result; `complete` marks it the last: the job ends completed with it."""
        name = name or path.name
        response = self.request(
            "PUT",
            f"/jobs/{lease.job_id}/results/{name}",
            body_path=path,
            headers={"X-Lease-Token": lease.token, "Content-Type": media_type},
            params=_completing(complete),
        )
        return json_object(response)

    def upload_summary(
        self,
        lease: Lease,
        summary: dict[str, Any],
        name: str = "summary.json",
        *,
        complete: bool = False,
    ) -> dict[str, Any]:
        """Upload the JSON summary; with `complete` it also becomes the job's summary."""
        response = self.request(
            "PUT",
            f"/jobs/{lease.job_id}/results/{name}",
            content=json.dumps(summary).encode(),
            headers={"X-Lease-Token": lease.token, "Content-Type": "application/json"},
            params=_completing(complete),
        )
        return json_object(response)

    def complete(self, lease: Lease, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"lease_token": lease.token, "summary": summary}
        return json_object(self.request("POST", f"/jobs/{lease.job_id}/complete", json=body))

    def fail(self, lease: Lease, reason: str, product_version: str | None = None) -> dict[str, Any]:
        """Fail the job with `reason`, which its hospital reads; `product_version`, the
        version that failed it, is what the exchange's evaluation counts the failure under
        (the version the job was created for if None)."""
        body: dict[str, Any] = {"lease_token": lease.token, "reason": reason[:2000]}
        if product_version is not None:
            body["product_version"] = product_version
        return json_object(self.request("POST", f"/jobs/{lease.job_id}/fail", json=body))

    def release(self, lease: Lease, reason: str) -> dict[str, Any]:
        """Hand the job back for any worker to claim now: the trouble is this worker's (its
        disk full, no GPU free), not the study's, which `fail` would tell the hospital."""
        body = {"lease_token": lease.token, "reason": reason[:2000]}
        return json_object(self.request("POST", f"/jobs/{lease.job_id}/release", json=body))


def _completing(complete: bool) -> dict[str, str]:
    return {"complete": "true"} if complete else {}
