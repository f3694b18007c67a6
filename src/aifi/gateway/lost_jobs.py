"""Which sent jobs the results thread asks the exchange about, and when.

An exchange restored to an earlier moment (docs/deploy.md: a database put back after a fault)
no longer holds the jobs made after that moment, nor the inputs that arrived after it. It never
lists those jobs as ended, so a gateway that only waited for the listing would wait for ever,
and the radiologist with it. The results thread therefore asks, every few minutes, about the
jobs it sent a while ago that have not come home (`Gateway.ask_about_submitted`), and sends
again what the exchange lost. One listing of the hospital's jobs not acknowledged (a request
per 1,000) answers for all of them; only a job missing from it is asked about by itself, so a
long queue at a slow product costs the exchange a request or two a round.
"""

from __future__ import annotations

import threading
from collections import Counter
from enum import StrEnum

#: A job sent more recently than this is not asked about: it is being read, and the listing
#: brings it home when it ends.
ASK_AFTER_SECONDS = 120.0
#: How often the results thread asks: a lost job is seen to within this of
#: `ASK_AFTER_SECONDS` after its send, or of the exchange's restore.
ASK_EVERY_SECONDS = 300.0
#: The file, in a job's results folder, that keeps the exchange's listing of the job as it was
#: brought home: a job the exchange forgets before every PACS has its results is delivered
#: from it and the results fetched beside it.
LISTED_JOB = "exchange-job.json"


class Outcome(StrEnum):
    """What became of a job the exchange lost, as the exporter counts it."""

    sent_again = "sent_again"  # the exchange did not know it: sent as a new exchange job
    inputs_sent_again = "inputs_sent_again"  # held unopened, inputs lost: the rest sent
    delivered_from_copy = "delivered_from_copy"  # its results were home: no second run
    ended = "ended"  # adopted: cannot be sent again, ended saying so
    #: Adopted (or its images or results lost and not sent again), and another job of its
    #: study brings the product's result.
    covered = "covered"
    #: It ended because the exchange lost images of its study: sent as a new exchange job.
    images_sent_again = "images_sent_again"
    #: It ended because the exchange lost images of its study and could not be sent again
    #: (lost a second time, adopted, its images gone from the spool, or the new job refused):
    #: the RIS is told.
    images_lost_ended = "images_lost_ended"
    #: It completed, and the exchange's store lost the product's result before the gateway
    #: fetched it: sent as a new exchange job.
    results_sent_again = "results_sent_again"
    #: Its result lost so, and it could not be sent again (as for `images_lost_ended`): the
    #: RIS is told.
    results_lost_ended = "results_lost_ended"


class SubmittedWatch:
    """When the results thread asks next, and what became of the jobs the exchange lost
    since the gateway started (`aifi_gateway_jobs_lost_by_exchange_total`). Kept in memory:
    after a restart it asks at once, which costs a listing and loses nothing."""

    def __init__(self) -> None:
        self._next_round = 0.0
        self._outcomes: Counter[Outcome] = Counter()
        self._lock = threading.Lock()  # counted by the results thread, read by the exporter

    def count(self, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes[outcome] += 1

    def outcomes(self) -> dict[str, int]:
        """Every outcome, 0 for those not met: an alert sees the series from the start."""
        with self._lock:
            return {outcome.value: self._outcomes[outcome] for outcome in Outcome}

    def due(self, now: float) -> bool:
        return now >= self._next_round

    def asked(self, now: float) -> None:
        self._next_round = now + ASK_EVERY_SECONDS
