"""Telling the hospital that a STAT study's AI result is late.

A radiologist triaging a stroke waits for the product's alert only as long as the product
promised. When it does not come, whatever the cause (the exchange out of reach, the study
sent again after the exchange lost it, a product behind its queue, a worker killed), the
gateway says so once, on the STAT lane, so that nobody goes on waiting or reads the silence
as a negative finding. The result, or the news that none will come, follows as usual under
the same identifiers, and replaces what the delay notice made at each receiver
(`ResultNotice.after_delay`).

A job is late when `delayed_after_seconds` (or, unset, its product's turnaround in the
catalogue) have passed since the gateway made it, and it is still to be sent or still at
the exchange. Whether it runs STAT is its route's priority or, when the route leaves it to
the product, the product's in the catalogue, read as last fetched: the exchange may be the
very thing that is out of reach.
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
#: The next look at a late job that could not be named yet (its study still being prepared).
NAME_AGAIN_SECONDS = 2.0
#: Ids of delay notices of jobs the exchange has not numbered yet (never sent).
_ANNOUNCED_NAMESPACE = uuid.UUID("5d0c3f0e-8a51-4b4e-9d57-2f9b1c6a7e43")

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
    pseudonyms): how long, and whether the study has reached the exchange at all."""
    span = f"{max(1, round(waited))} s" if waited < 120 else f"{round(waited / 60)} minutes"
    where = (
        "the study has not yet reached the national exchange"
        if job["exchange_job_id"] is None
        else f"{product} has not answered"
    )
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
        stop: threading.Event,
    ) -> None:
        self._hospital = hospital
        self._state = state
        self._vault = vault
        self._settings = settings
        self._catalogue = catalogue
        self._announce = announce
        self._stop = stop
        self._wake = threading.Event()

    @property
    def enabled(self) -> bool:
        return self._settings.configured and self._settings.announce_delayed

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
        """Queue the delay notice of every STAT job late by `now`; the seconds until the next
        look (when the next job under way is due, at most `LOOK_EVERY_SECONDS`)."""
        configured = self._settings.delayed_after_seconds
        look = min(LOOK_EVERY_SECONDS, configured or LOOK_EVERY_SECONDS)
        if not self.enabled:
            return LOOK_EVERY_SECONDS
        now = time.time() if now is None else now
        products: dict[str, Mapping[str, Any] | None] = {}
        for job in self._state.delays_to_tell(now):
            if self._stop.is_set():
                break
            product_id = str(job["product_id"])
            if product_id not in products:
                products[product_id] = self._catalogue(product_id)
            entry = products[product_id]
            after = self._late_after(job, entry)
            if after is None:
                continue
            due = float(job["created_at"]) + after
            if due > now:
                look = min(look, due - now)
                continue
            if not self._tell(job, entry, now - float(job["created_at"])):
                look = min(look, NAME_AGAIN_SECONDS)
        return max(look, 0.1)

    def _late_after(self, job: Mapping[str, Any], entry: Mapping[str, Any] | None) -> float | None:
        """Seconds after which the job is late; None when it does not run STAT (or, its route
        leaving it to the product, the product's priority has never been read)."""
        manifest = entry.get("manifest", {}) if entry is not None else {}
        if (job["priority"] or manifest.get("priority")) != "stat":
            return None
        if self._settings.delayed_after_seconds is not None:
            return self._settings.delayed_after_seconds
        return float(manifest.get("turnaround_sla_seconds") or DEFAULT_TURNAROUND_SECONDS)

    def _tell(self, job: Mapping[str, Any], entry: Mapping[str, Any] | None, waited: float) -> bool:
        """Queue the job's delay notice; False when its study cannot be named yet."""
        job_id, study_uid = int(job["id"]), str(job["study_uid"])
        pseudonym = self._vault.pseudonym_of(study_uid)
        if pseudonym is None:  # not yet prepared for sending: nothing can name it yet
            log.info("job %s: its result is late, but its study cannot be named yet", job_id)
            return False
        product_id = str(job["product_id"])
        name = str(entry["name"]) if entry is not None else None
        version = str(entry["version"]) if entry is not None else None
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
            pseudonym_study_uid=pseudonym,
            original_study_uid=study_uid,
        )
        if self._announce(job_id, key, queued):
            log.warning(
                "job %s: STAT result of %s late after %.0f s; its delay is announced",
                job_id, product_id, waited,
            )  # fmt: skip
        return True
