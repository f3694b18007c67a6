"""Telling the hospital that a STAT study's AI result is late.

A radiologist triaging a stroke waits for the product's alert only as long as the product
promised. When it does not come, whatever the cause (the exchange out of reach, the study
sent again after the exchange lost it, a product behind its queue, a worker killed), the
gateway says so once, on the STAT lane, so that nobody goes on waiting or reads the silence
as a negative finding. The result, or the news that none will come, follows as usual under
the same identifiers, and replaces what the delay notice made at each receiver
(`ResultNotice.after_delay`); a job told late that then ends with nothing to tell (refused,
found sent before) gets a closing notice, so that no order stays in process for ever.

A job is late `delayed_after_seconds` after the gateway made it (the hospital's own bound on
the whole wait), or, unset, its product's turnaround in the catalogue after it reached the
exchange (what the vendor promises, measured there; from when the gateway made it while it
has not). Whether it runs STAT is its route's priority or, when the route leaves it to the
product, the product's in the catalogue as the gateway last read it: never read here, as the
exchange may be the very thing out of reach, and a lookup would wait out its retries.
A delay is not told while a restore is still to be checked with the exchange, nor once a
notice of the job's result, or of none, is queued (`GatewayState.announce_delay`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aifi.gateway.notice_queue import QueuedNotice
from aifi.gateway.notify import NotificationSettings
from aifi.gateway.state import GatewayState
from aifi.gateway.vault import Vault

log = logging.getLogger(__name__)

#: A product's turnaround when the catalogue has not been read (its default there).
DEFAULT_TURNAROUND_SECONDS = 600.0
#: The longest between two looks (a job made wakes the watch: `DelayWatch.wake`).
LOOK_EVERY_SECONDS = 30.0
#: Ids of delay notices of jobs the exchange has not numbered yet (never sent).
_ANNOUNCED_NAMESPACE = uuid.UUID("5d0c3f0e-8a51-4b4e-9d57-2f9b1c6a7e43")
#: What a job told late says when it then ends with nothing to tell, by its state at the
#: gateway: the gateway's own words, as every reason the RIS gets.
CLOSING_BECAUSE = {
    "refused": "the study could not be sent for analysis",
    "skipped": "the product analysed these images before; its earlier result stands",
    "ended": "the analysis ended without a result",
}
#: ... and when another job of its study brings the product's result instead.
COVERED = "the product's result comes with another order of the same study"

#: A product's catalogue entry, as last read (None: never read).
Catalogue = Callable[[str], Mapping[str, Any] | None]


def announced_as(hospital: str, job: Mapping[str, Any]) -> str:
    """The id a job's delay notice goes under, and its later notice with it: its exchange
    job's, or, for a job never sent, one made from its idempotency key (unique among the
    hospital's jobs, as exchange job ids are among all)."""
    if job["exchange_job_id"]:
        return str(job["exchange_job_id"])
    return str(uuid.uuid5(_ANNOUNCED_NAMESPACE, f"{hospital}/{job['idempotency_key']}"))


def why_late(job: Mapping[str, Any], product: str, waited: float) -> str:
    """The delay in the gateway's own words (never the vendor's, which may name
    pseudonyms): how long, and whether the study has reached the exchange at all. Which of
    the exchange and the product is behind, the gateway cannot tell, and does not say."""
    span = f"{max(1, round(waited))} s" if waited < 120 else f"{round(waited / 60)} minutes"
    if job["exchange_job_id"] is None and job.get("replaced_exchange_job_id"):
        where = "the study is being sent to the national exchange again"
    elif job["exchange_job_id"] is None:
        where = "the study has not yet reached the national exchange"
    elif job["result_seen_at"] is not None:
        where = f"{product} has answered, and the gateway is still bringing the answer home"
    else:
        where = f"no answer from {product} yet"
    return f"no result after {span}: {where}; the result, or news that none will come, follows"


class DelayWatch:
    """Finds the STAT jobs whose result is late and queues their delay notices; one per
    gateway, run on a thread of its own (`run`)."""

    def __init__(
        self,
        *,
        hospital: str,
        state: GatewayState,
        vault: Vault,
        settings: NotificationSettings,
        catalogue: Catalogue,
        announce: Callable[[int, str, QueuedNotice], bool],
        close: Callable[[int, QueuedNotice], bool],
        covered: Callable[[int], bool],
        stop: threading.Event,
    ) -> None:
        self._hospital = hospital
        self._state = state
        self._vault = vault
        self._settings = settings
        self._catalogue = catalogue
        self._announce = announce
        self._close = close
        self._covered = covered
        self._stop = stop
        self._wake = threading.Event()

    def wake(self) -> None:
        """Look again now: jobs were made (their time runs from now), or the gateway stops."""
        self._wake.set()

    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = self.announce_due()
            except Exception:  # the state's disk, or a fault: look again, never stop looking
                log.exception("looking for late STAT results failed")
                wait = LOOK_EVERY_SECONDS
            self._wake.wait(wait)

    def announce_due(self, now: float | None = None) -> float:
        """Queue the delay notice of every STAT job late by `now`, and the closing notice of
        every job told late that ended with nothing to tell; the seconds until the next look
        (when the next job under way is due, at most `LOOK_EVERY_SECONDS`)."""
        configured = self._settings.delayed_after_seconds
        look = min(LOOK_EVERY_SECONDS, configured or LOOK_EVERY_SECONDS)
        if not self._settings.configured:
            return LOOK_EVERY_SECONDS
        # Orders told late are closed even once delays are no longer announced.
        for job in self._state.told_and_left():
            try:
                self._close_order(job)
            except Exception:
                log.exception("job %s: its order told late could not be closed", job["id"])
        if not self._settings.announce_delayed:
            return LOOK_EVERY_SECONDS
        now = time.time() if now is None else now
        for job in self._state.delays_to_tell(now):
            if self._stop.is_set():
                break
            try:
                due = self._due(job)
                if due is None:
                    continue
                if due > now:
                    look = min(look, due - now)
                    continue
                self._tell(job, now - float(job["created_at"]))
            except Exception:  # one job's fault must not keep the others untold
                log.exception("job %s: its delay could not be told", job["id"])
        return max(look, 0.1)

    def _due(self, job: Mapping[str, Any]) -> float | None:
        """When the job is late; None when it does not run STAT (or, its route leaving it to
        the product, the product's priority has never been read)."""
        configured = self._settings.delayed_after_seconds
        if job["priority"] == "stat" and configured is not None:
            return float(job["created_at"]) + configured
        entry = self._catalogue(str(job["product_id"]))
        manifest = entry.get("manifest", {}) if entry is not None else {}
        if (job["priority"] or manifest.get("priority")) != "stat":
            return None
        if configured is not None:
            return float(job["created_at"]) + configured
        turnaround = float(manifest.get("turnaround_sla_seconds") or DEFAULT_TURNAROUND_SECONDS)
        return float(job["submitted_at"] or job["created_at"]) + turnaround

    def _names(self, product_id: str) -> tuple[str | None, str | None]:
        entry = self._catalogue(product_id)
        if entry is None:
            return None, None
        return str(entry["name"]), str(entry["version"])

    def _tell(self, job: Mapping[str, Any], waited: float) -> None:
        job_id, product_id = int(job["id"]), str(job["product_id"])
        name, version = self._names(product_id)
        key = announced_as(self._hospital, job)
        queued = QueuedNotice(
            kind="delayed",
            exchange_job_id=key,
            product_id=product_id,
            product_name=name,
            product_version=version,
            completed_at=datetime.now(UTC),
            delayed=why_late(job, name or product_id, waited),
            stat_study=True,
            urgent=True,
            # Not yet pseudonymised (the exchange out of reach before the gateway could
            # prepare it): the sender names the patient from the spool.
            pseudonym_study_uid=self._vault.pseudonym_of(str(job["study_uid"])) or "",
            original_study_uid=str(job["study_uid"]),
        )
        if self._announce(job_id, key, queued):
            log.warning(
                "job %s: STAT result of %s late after %.0f s; its delay is announced",
                job_id, product_id, waited,
            )  # fmt: skip

    def _close_order(self, job: Mapping[str, Any]) -> None:
        """The notice that no result will come under the id its delay went under, so that
        the order the RIS holds in process is closed, with why."""
        job_id, product_id = int(job["id"]), str(job["product_id"])
        name, version = self._names(product_id)
        reason = COVERED if self._covered(job_id) else CLOSING_BECAUSE[str(job["state"])]
        closed = self._close(
            job_id,
            QueuedNotice(
                kind="no-result",
                exchange_job_id=str(job["exchange_job_id"] or job["delay_announced_as"]),
                product_id=product_id,
                product_name=name,
                product_version=version,
                completed_at=datetime.now(UTC),
                unavailable=reason,
                stat_study=True,
                urgent=True,
                pseudonym_study_uid=self._vault.pseudonym_of(str(job["study_uid"])) or "",
                original_study_uid=str(job["study_uid"]),
            ),
        )
        if closed:
            log.info("job %s: told late, it ended with nothing to tell: %s", job_id, reason)
