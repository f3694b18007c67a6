"""The results thread's side of the ended exchange jobs this gateway has no record of: it
leaves them unacknowledged until the hospital decides (`aifi gateway-unknown-jobs`, which
records the decision: `aifi.gateway.unknown_jobs`), then does what was decided when it next
meets each job. Kept apart from the rest of bringing results home, which an adopted job then
joins as any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx

from aifi.dicom.pseudonym import PseudonymKey
from aifi.gateway.disclosures import NotRecorded
from aifi.gateway.exchange_client import GatewayClient
from aifi.gateway.state import GatewayState
from aifi.gateway.vault import Vault
from aifi.http import ExchangeHTTPError
from aifi.results.delivery import Delivery

log = logging.getLogger(__name__)

#: Why an adoption waits.
NOT_IN_VAULT = (
    "its study is not in the vault, so its results cannot be mapped back: send the study "
    "again from the PACS, or let the job go"
)


class Adoptions:
    """Does the hospital's decisions for ended exchange jobs this gateway has no record of.

    `retry_at` is the results thread's own (when each job listed is next to be tried): a job
    left is tried again in five minutes, or as soon as the hospital decides for it after it
    was met (`decided_since_met`). `disclose_sent` puts what went to an exchange job on the
    disclosure log, once (`Gateway._disclose_sent`). `not_delivered` is the results thread's
    too: a job let go goes in it, so that its acknowledgement tells the exchange its results
    were not brought home.
    """

    def __init__(
        self,
        state: GatewayState,
        vault: Vault,
        key: PseudonymKey,
        client: GatewayClient,
        disclose_sent: Callable[..., None],
        retry_at: dict[str, float],
        not_delivered: dict[str, Delivery],
    ) -> None:
        self.state = state
        self.vault = vault
        self.key = key
        self.client = client
        self._disclose_sent = disclose_sent
        self._retry_at = retry_at
        self._not_delivered = not_delivered
        #: The jobs left for now, by exchange job: when last met.
        self.met: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.met)

    def decided_since_met(self) -> list[str]:
        """The jobs left that the hospital decided for since they were met: to be done now,
        not when their retry comes round."""
        return self.state.decided_since(self.met) if self.met else []

    def known(self, exchange_id: str) -> None:
        """The job is this gateway's now (linked by a job sent since, say)."""
        self.met.pop(exchange_id, None)

    def failed(self, exchange_id: str, exc: Exception) -> None:
        """Meeting the job failed on the gateway's own disk: tried again in a minute, and not
        before (a decision taken before now does not cut the wait)."""
        log.warning("ended job %s, not one this gateway knows: %s", exchange_id, exc)
        self._retry_at[exchange_id] = time.time() + 60
        self.met[exchange_id] = time.time()

    def forget_unlisted(self, listed: set[str]) -> None:
        """The exchange listed every ended job not brought home (`listed`): the jobs left that
        it no longer lists were brought home by another gateway on the account, and go."""
        for exchange_id in [held for held in self.met if held not in listed]:
            del self.met[exchange_id]

    def meet(self, job: dict[str, Any]) -> dict[str, Any] | bool:
        """An ended exchange job of this hospital that this gateway has no record of: made by
        a disk a restore replaced, say. It is left unacknowledged until the hospital decides
        (`aifi gateway-unknown-jobs`): adopted, it is this gateway's job from now on
        (returned, to be brought home as any other); let go, it is acknowledged unbrought
        (True, and again should the acknowledgement not get through). False: left for now.

        The decision is taken before anything is done (`take_unknown_decision`), so that the
        command cannot change it half-done. What went to the job is put on the disclosure log
        first, if the log lacks it (lost with the restore): the hospital now knows it left.
        """
        exchange_id, met = str(job["id"]), time.time()
        decision = self.state.unknown_decision(exchange_id)
        if decision is None:
            log.error(
                "ended job %s is not one this gateway knows; left unacknowledged "
                "(`aifi gateway-unknown-jobs` lists such jobs, to adopt or let go)",
                exchange_id,
            )
            return self._leave(exchange_id, met)
        if decision["settled_at"] is not None:  # let go; its acknowledgement did not get through
            if decision["decision"] != "let_go":
                return self._leave(exchange_id, met)
            return self._acknowledge_let_go(exchange_id)
        let_go = decision["decision"] == "let_go"
        known = self.vault.study(str(job["study_uid"]))
        if decision["taken_at"] is None:  # not begun: the checks it waits for
            if (linking := self._may_link(job)) is not None:
                return self._leave(exchange_id, met, linking)
            if not let_go and known is None:
                return self._leave(exchange_id, met, NOT_IN_VAULT)
            study = known[0] if known else str(job["study_uid"])
            if not self.state.take_unknown_decision(exchange_id, decision["decision"], study):
                return self._leave(exchange_id, 0.0)  # changed or linked: met again now
            decision = {**decision, "study_uid": study}
        elif decision["study_uid"] is None:  # taken by an older version: its rule
            decision = {**decision, "study_uid": known[0] if known else str(job["study_uid"])}
        if decision["taken_at"] is not None and not let_go and known is None:
            return self._cut_off(job, decision)
        # Begun, a decision is finished whatever comes meanwhile. An adoption is given back if
        # its entry could not be written (nothing has read it yet); a let-go never is: a round
        # sent meanwhile may have gone as a new job for it (`was_let_go`).
        if decision["disclosed_at"] is None:
            patient = str(known[1].get("PatientID", "")) if known else "(not in the vault)"
            try:
                self._disclose(job, patient, decision)
            except NotRecorded as exc:
                self.state.unknown_not_yet(exchange_id, str(exc), release=not let_go)
                return self._leave(exchange_id, met)
            self.state.unknown_disclosed(exchange_id)
        self.met.pop(exchange_id, None)
        if let_go:
            self.state.let_go(exchange_id)
            log.warning("ended job %s, not one this gateway knew, let go", exchange_id)
            return self._acknowledge_let_go(exchange_id)
        assert known is not None  # an adoption waits for the vault, above
        made = datetime.fromisoformat(str(job["created_at"])).timestamp()
        adopted = self.state.adopt(
            exchange_id, known[0], str(job["product_id"]), job.get("priority"), made
        )
        log.warning(
            "ended job %s, not one this gateway knew, adopted as job %s", exchange_id, adopted["id"]
        )
        return adopted

    def _cut_off(self, job: Mapping[str, Any], decision: Mapping[str, Any]) -> bool:
        """An adoption begun and cut short (the disk), whose study has left the vault since
        (its retention): its results can no longer be mapped back, so it is let go instead,
        and acknowledged. Its entry names the adoption if it was written; else one is written
        now, saying what became of it."""
        exchange_id = str(job["id"])
        note = "adopted, but its study left the vault before its results came home: let go"
        if decision["disclosed_at"] is None:
            try:
                # Under the study the adoption was taken for: an entry written for it before
                # its record was (`unknown_disclosed`) is found, not written twice.
                self._disclose(job, "(not in the vault)", decision, note)
            except NotRecorded as exc:
                self.state.unknown_not_yet(exchange_id, str(exc))
                return self._leave(exchange_id, time.time())
        self.state.let_go(exchange_id, note)
        self.met.pop(exchange_id, None)
        log.error("ended job %s, not one this gateway knew: %s", exchange_id, note)
        return self._acknowledge_let_go(exchange_id)

    def _acknowledge_let_go(self, exchange_id: str) -> bool:
        """A job let go is acknowledged (True) as brought home without its results."""
        self._not_delivered[exchange_id] = Delivery.let_go
        return True

    def _may_link(self, job: Mapping[str, Any]) -> str | None:
        """Why an unknown exchange job may yet be linked by a job of its study (None if it
        cannot): a pending job for its product, or a study still being received, whose send
        may find it by its key. Adopted or let go meanwhile, it would come home twice, or be
        taken as brought home when it was not."""
        for pending in self.state.query("SELECT * FROM jobs WHERE state = 'pending'"):
            if pending["product_id"] == job["product_id"] and (
                self.key.uid(str(pending["study_uid"])) == job["study_uid"]
            ):
                return (
                    f"job {pending['id']} of its study for this product is waiting to be sent, "
                    "and may be this one: decided again once that job is sent"
                )
        for study in self.state.query("SELECT study_uid FROM studies WHERE state = 'receiving'"):
            if self.key.uid(str(study["study_uid"])) == job["study_uid"]:
                return (
                    "its study is being received again, and its job may be this one: decided "
                    "again once that job is sent"
                )
        return None

    def _disclose(
        self,
        job: Mapping[str, Any],
        patient_id: str,
        decision: Mapping[str, Any],
        done: str | None = None,
    ) -> None:
        """Put what went to an unknown exchange job on the disclosure log, once: to the
        product's vendor if the job opened, else to the exchange alone (nothing, if nothing
        went). Under the hospital's study the decision was taken for, or the pseudonymised
        one when the vault did not know it."""
        exchange_id, sent = str(job["id"]), int(job["input_count"])
        if not sent:
            return
        if job.get("inputs_complete"):
            try:
                product = self.client.product(str(job["product_id"]))
                recipient = (
                    f"{job['product_id']} {product['version']} of {product['vendor']}, "
                    "through the exchange"
                )
            except (ExchangeHTTPError, httpx.TransportError):
                recipient = f"{job['product_id']}, through the exchange"  # withdrawn since, say
        else:
            recipient = "the exchange"
        done = done or (
            "let go: its results are not brought home"
            if decision["decision"] == "let_go"
            else "adopted"
        )
        self._disclose_sent(
            exchange_id,
            patient_id=patient_id,
            study_uid=str(decision["study_uid"]),
            recipient=recipient,
            detail=f"exchange job {exchange_id}: {sent} instance(s) as study {job['study_uid']} "
            f"of patient {job['patient_pseudonym']}"
            + ("" if job.get("inputs_complete") else f"; ended ({job['state']}) before it opened")
            + "; a job this gateway had no record of (its entry lost with a restore from a "
            f"backup, say), {done} (decided by {decision['decided_by']})",
        )

    def _leave(self, exchange_id: str, met: float, why: str | None = None) -> bool:
        """Leave an unknown exchange job unacknowledged for now: met again in five minutes,
        or as soon as the hospital decides for it after `met` (`decided_since`); `why` a
        decision waits, for the command to show."""
        if why is not None:
            log.warning("ended job %s, not one this gateway knows: %s", exchange_id, why)
            self.state.unknown_not_yet(exchange_id, why)
        self._retry_at[exchange_id] = time.time() + 300
        self.met[exchange_id] = met
        return False
