"""The gateway's side of the exchange API: create jobs, upload inputs, fetch results."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifi.gateway.pseudonymise import stray_inputs_reason
from aifi.http import ApiClient, ExchangeHTTPError, no_such_job
from aifi.results.delivery import Delivery

if TYPE_CHECKING:
    from aifi.gateway.config import ExchangeConnection

ENDED = ("completed", "failed", "cancelled", "expired")
#: Ended jobs listed at a time.
ENDED_PAGE = 50
#: Jobs not acknowledged listed at a time (`unacknowledged_jobs`): the most the API gives.
UNACKNOWLEDGED_PAGE = 1000


class CancelReason(StrEnum):
    """Why the gateway cancels an exchange job, as the exchange is told and keeps it.

    The exchange only ever reads one of these phrases, the gateway's own words: a reason
    written for the hospital (the job's local reason) may name a spool file, whose path holds
    the study's own UIDs, or a de-identification error about an instance, and no identifier of
    the hospital's may leave it. What is missing, and where, stays in the local reason.
    """

    nothing_accepted = "no series of the study is accepted by the product"
    nothing_to_send = "no instance of the study could be pseudonymised for the product"
    spool_gone = "instances missing at the gateway after a restore"
    exchange_ended = "the exchange ended the job before it opened"
    exchange_refused = "the exchange refused the job"
    #: Said as `stray_inputs_reason` of the job: the gateway knows such a job again by it.
    stray_inputs = "the job holds instances no longer in the study"
    results_home = "its results came home before the exchange lost inputs of it"


def said_on_cancel(exchange_job_id: str, why: CancelReason) -> str:
    """The text the exchange keeps for a job the gateway cancels: `why`'s phrase, or for
    stray inputs the phrase that names the exchange's own job id (`Gateway.collect` knows the
    job again by it). Nothing else goes: no text of the caller's can reach the exchange."""
    why = CancelReason(why)  # a reason that is not one of the phrases is refused here
    if why is CancelReason.stray_inputs:
        return stray_inputs_reason(exchange_job_id)
    return why.value


class GatewayClient(ApiClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._products: dict[str, tuple[float, dict[str, Any]]] = {}
        #: Told each catalogue entry as it is read from the exchange (the gateway keeps what
        #: a late STAT job needs of it across restarts).
        self.on_product_read: Callable[[str, dict[str, Any]], None] | None = None

    @classmethod
    def connecting(cls, exchange: ExchangeConnection, **options: Any) -> GatewayClient:
        """The client for the gateway configuration's `exchange` section: its URL, its key
        (read from the file now), the proxy and the CA it names."""
        return cls(
            exchange.url,
            exchange.key(),
            proxy=exchange.proxy,
            ca_file=exchange.ca_file,
            **options,
        )

    def product(self, product_id: str, max_age: float = 60.0) -> dict[str, Any]:
        """A product's catalogue entry, cached briefly (manifests change rarely)."""
        cached = self._products.get(product_id)
        if cached and time.monotonic() - cached[0] < max_age:
            return cached[1]
        entry = dict(self.request("GET", f"/products/{product_id}").json())
        self._products[product_id] = (time.monotonic(), entry)
        if self.on_product_read is not None:
            self.on_product_read(product_id, entry)
        return entry

    def create_job(
        self,
        product_id: str,
        study_uid: str,
        patient_pseudonym: str,
        idempotency_key: str,
        priority: str | None,
        instances: int | None = None,
        *,
        retries: int | None = None,
    ) -> dict[str, Any]:
        """Open (or, by the idempotency key, find again) a job for `instances` inputs.

        With the count declared, the exchange opens the job to vendors when the last input is
        stored, and no separate "ready" request is needed. `retries=0`: one try only, so that
        a connection refused means this request never reached the exchange (the client's
        retries raise the last try's error, which says nothing of the tries before).
        """
        body = {
            "product_id": product_id,
            "study_uid": study_uid,
            "patient_pseudonym": patient_pseudonym,
            "idempotency_key": idempotency_key,
            "priority": priority,
            "instances": instances,
        }
        return dict(self.request("POST", "/jobs", json=body, retries=retries).json())

    def input_uids(self, job_id: str) -> set[str]:
        rows = self.request("GET", f"/jobs/{job_id}/inputs").json()
        return {row["sop_instance_uid"] for row in rows}

    def put_input(self, job_id: str, sop_instance_uid: str, path: Path) -> None:
        self.request(
            "PUT",
            f"/jobs/{job_id}/inputs/{sop_instance_uid}",
            body_path=path,
            headers={"Content-Type": "application/dicom"},
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/jobs/{job_id}").json())

    def job_by_key(self, idempotency_key: str) -> dict[str, Any] | None:
        """The job created with this key, if the exchange has one: whether a create that had
        no answer made it, found out without making it."""
        found = self.request("GET", "/jobs", params={"idempotency_key": idempotency_key}).json()
        return dict(found[0]) if found else None

    def job_unless_forgotten(self, job_id: str) -> dict[str, Any] | None:
        """The job, or None when the exchange says it has no such job ("no job", 404): it
        forgot it, restored to an earlier moment. Any other answer is raised, a 404 of
        something in front of the exchange among them: it says nothing of the job."""
        try:
            return self.job(job_id)
        except ExchangeHTTPError as exc:
            if no_such_job(exc):
                return None
            raise

    def unacknowledged_jobs(self) -> dict[str, dict[str, Any]]:
        """Every job of this hospital's the exchange holds and it has not acknowledged (under
        way, or ended and not brought home yet), by id: a request per `UNACKNOWLEDGED_PAGE`."""
        held: dict[str, dict[str, Any]] = {}
        params: dict[str, str | int] = {"acknowledged": "false", "limit": UNACKNOWLEDGED_PAGE}
        while True:
            page = self.request("GET", "/jobs", params=params).json()
            held.update((str(job["id"]), dict(job)) for job in page)
            if len(page) < UNACKNOWLEDGED_PAGE:
                return held
            params["after"] = str(page[-1]["id"])

    def organisations(self) -> dict[str, str]:
        """The organisations the key acts for, and their kinds: this hospital alone, for a
        hospital's key."""
        found = self.request("GET", "/organisations").json()
        return {str(org["id"]): str(org["kind"]) for org in found}

    def cancel_job(self, job_id: str, why: CancelReason) -> dict[str, Any]:
        """End a job the hospital no longer wants while it still takes inputs: one that
        opened to vendors meanwhile is not cancelled (409). The exchange is told `why` in the
        gateway's own words (`said_on_cancel`), never a reason written for the hospital."""
        body = {"reason": said_on_cancel(job_id, why), "unopened_only": True}
        return dict(self.request("POST", f"/jobs/{job_id}/cancel", json=body).json())

    def mark_ready(self, job_id: str, instances: int) -> dict[str, Any]:
        return dict(
            self.request("POST", f"/jobs/{job_id}/ready", json={"instances": instances}).json()
        )

    def ended_jobs(self, wait: float, after: str | None = None) -> list[dict[str, Any]]:
        """Jobs that ended and that this hospital has not acknowledged yet (long-poll), oldest
        first, `ENDED_PAGE` at a time; `after` (the last job of a page) gives the next page.

        Completed ones come with their results listed (`results`).
        """
        params: list[tuple[str, str | float]] = [("state", s) for s in ENDED]
        params += [("acknowledged", "false"), ("wait", wait), ("limit", ENDED_PAGE)]
        params += [("with_results", "true")]
        if after is not None:
            params.append(("after", after))
        return list(self.request("GET", "/jobs", params=params, timeout=wait + 30).json())

    def results(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/jobs/{job_id}/results").json())

    def download_result(self, job_id: str, name: str, target: Path) -> int:
        return self.download(f"/jobs/{job_id}/results/{name}", target)

    def report_routes(self, product_id: str, routes: list[dict[str, Any]]) -> None:
        self.request("PUT", f"/subscriptions/{product_id}/routes", json={"routes": routes})

    def report_eligible(self, product_id: str, month: str, studies: int) -> None:
        body = {"product_id": product_id, "month": month, "studies": studies}
        self.request("PUT", "/eligible", json=body)

    def acknowledge(self, job_id: str) -> None:
        self.request("POST", f"/jobs/{job_id}/acknowledge")

    def acknowledge_many(
        self, job_ids: list[str], not_delivered: Mapping[str, Delivery] | None
    ) -> None:
        """Acknowledge a poll's worth of jobs brought home, in one request; `not_delivered`:
        those among them whose results did not reach the PACS, and why (empty: none), or None
        to say nothing of any job's results (the exchange then knows nothing of them)."""
        body: dict[str, Any] = {"job_ids": job_ids}
        if not_delivered is not None:
            # A closed set of words (`Delivery`): nothing of the hospital's goes with them.
            body["not_delivered"] = {job: Delivery(why).value for job, why in not_delivered.items()}
        self.request("POST", "/jobs/acknowledge", json=body)
