"""Which sent jobs the results thread asks the exchange about, and when.

An exchange restored to an earlier moment (docs/deploy.md: a database put back after a fault)
no longer holds the jobs made after that moment, nor the inputs that arrived after it. It never
lists those jobs as ended, so a gateway that only waited for the listing would wait for ever,
and the radiologist with it. The results thread therefore asks, every few minutes, about the
jobs it sent a while ago that have not come home (`Gateway.ask_about_submitted`), and sends
again what the exchange lost. A job is asked about once per round at most, the longest unasked
first, so that a long queue at a slow product costs the exchange a bounded number of requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: A job sent more recently than this is not asked about: it is being read, and the listing
#: brings it home when it ends.
ASK_AFTER_SECONDS = 120.0
#: How often the results thread asks, and so how long a lost job waits at most beyond
#: `ASK_AFTER_SECONDS` (while no more than `ASK_AT_MOST` jobs wait).
ASK_EVERY_SECONDS = 300.0
#: Jobs asked about in one round at most.
ASK_AT_MOST = 100


class SubmittedWatch:
    """When the results thread last asked about each sent job, and when it asks next.

    Kept in memory: after a restart every job is asked about once more, which costs a request
    each and loses nothing.
    """

    def __init__(self) -> None:
        self._asked: dict[int, float] = {}
        self._next_round = 0.0

    def due(self, now: float) -> bool:
        return now >= self._next_round

    def pick(self, submitted: Iterable[Mapping[str, Any]], now: float) -> list[Mapping[str, Any]]:
        """Of the jobs sent and not home (`submitted`, sent `ASK_AFTER_SECONDS` ago or more),
        those to ask about now, the longest unasked first; the round after this one is set
        `ASK_EVERY_SECONDS` off. Jobs no longer among them are forgotten."""
        self._next_round = now + ASK_EVERY_SECONDS
        waiting = {int(job["id"]): job for job in submitted}
        self._asked = {job_id: at for job_id, at in self._asked.items() if job_id in waiting}
        order = sorted(waiting, key=lambda job_id: (self._asked.get(job_id, 0.0), job_id))
        return [waiting[job_id] for job_id in order[:ASK_AT_MOST]]

    def asked(self, job_id: int, now: float) -> None:
        self._asked[job_id] = now
