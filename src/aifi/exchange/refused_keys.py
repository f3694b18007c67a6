"""Requests refused for their key (401) in the access log, folded so that no flood fills it.

A request without a key, with a key the exchange does not know, or with a revoked one never
reaches a route, and so none of the route's refusals; yet an operator looking into a leaked
or revoked key, or a vendor probing, must find it on record. Each is a refused ``login`` (as
a web page's refused login is, FHIR's User Authentication) of a ``credential``: a revoked key
by the id its revocation names (``organisation/id``), an unknown key by its fingerprint
(:func:`aifi.exchange.auth.key_fingerprint`), else ``none`` or ``not-an-api-key``; never the
key. It is its organisation's when the key is a revoked one, else ``anonymous``'s.

A key that keeps being sent (a gateway not told of its revocation, a script trying keys)
must not cost a write each time, nor grow the log without end. Per replica, the first
refusal of a key for a reason is stored at once; those of the next :data:`WINDOW_SECONDS`
are only counted, in memory, and stored as one entry when the window closes (how many, when,
on which routes). At most :data:`KEYS_PER_WINDOW` keys have windows of their own at a time;
further keys share one, so that a flood of random keys is two entries a window as well. A
replica thus stores at most ``2 × (KEYS_PER_WINDOW + 1)`` such entries a window, whatever
comes; what was only counted is stored by the next round of `flush` (or as the replica
stops), at the latest :data:`FLUSH_SECONDS` after its window closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from aifi.exchange.audit import Actor, AuditLog
from aifi.exchange.auth import Unauthorised
from aifi.exchange.clock import utcnow

#: Seconds a key's refusals after its first are counted rather than stored each.
WINDOW_SECONDS = 60.0
#: Keys with a window of their own at a time (per replica); further keys share one.
KEYS_PER_WINDOW = 20
#: How often each replica stores the counts of the windows that closed.
FLUSH_SECONDS = 10.0
#: Who sent a key that is no organisation's, or none.
ANONYMOUS = Actor(organisation_id="anonymous", role="none")
#: The object a window shared by the keys beyond :data:`KEYS_PER_WINDOW` names.
OTHER_KEYS = "*"
#: Routes named in a window's count, the busiest first.
ROUTES_NAMED = 10

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyRefusal:
    """An access-log entry about a refused key: whose it was, which key, what happened."""

    actor: Actor
    key: str
    detail: str


@dataclass
class _Window:
    """A key's refusals after its first stored one, counted until `until`."""

    actor: Actor
    key: str
    reason: str
    until: float
    #: Refused requests counted, by route (and, in the shared window, by reason).
    counted: Counter[str] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None

    def count(self, what: str) -> None:
        now = utcnow()
        self.first = self.first or now
        self.last = now
        self.counted[what] += 1

    def summary(self) -> KeyRefusal | None:
        """The entry of what was counted; None when nothing was."""
        if self.first is None or self.last is None:
            return None
        named = ", ".join(f"{what} ×{n}" for what, n in self.counted.most_common(ROUTES_NAMED))
        rest = len(self.counted) - ROUTES_NAMED
        more = f", and {rest} more" if rest > 0 else ""
        detail = (
            f"refused {self.counted.total()} more times from {self.first.isoformat()} to "
            f"{self.last.isoformat()} ({self.reason}): {named}{more}"
        )
        return KeyRefusal(self.actor, self.key, detail)


class RefusedKeys:
    """This replica's refused keys: which to store now, which to count (see the module).

    Told of each refusal on the event loop, without a thread or a query: a flood costs a
    dictionary update per request after each window's first. `clock` is the monotonic time
    windows are measured on (a test moves its own on).
    """

    def __init__(
        self,
        audit: AuditLog,
        *,
        window: float = WINDOW_SECONDS,
        keys: int = KEYS_PER_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._window = window
        self._keys = keys
        self.clock = clock
        self._open: dict[tuple[str, str, str], _Window] = {}
        self._lock = threading.Lock()

    def refused(self, request_line: str, exc: Unauthorised) -> list[KeyRefusal]:
        """The entries to store for a request (`METHOD /route`) refused with `exc`: its own
        if it is the first of its key and reason in a window (and the counts of windows that
        closed meanwhile), else none: it is counted."""
        now = self.clock()
        actor = exc.holder or ANONYMOUS
        bucket = (actor.organisation_id, exc.key, exc.reason)
        with self._lock:
            entries = self._close(now)
            window = self._open.get(bucket)
            if window is None and len(self._open) >= self._keys:
                bucket = (ANONYMOUS.organisation_id, OTHER_KEYS, "")
                window = self._open.get(bucket)
                if window is None:
                    reason = f"more than {self._keys} keys refused within {self._window:g} s"
                    self._open[bucket] = _Window(ANONYMOUS, OTHER_KEYS, reason, now + self._window)
                    detail = f"{request_line}: unauthorised: {exc.reason}; {reason} here"
                    return [*entries, KeyRefusal(ANONYMOUS, OTHER_KEYS, detail)]
                window.count(f"{request_line} ({exc.reason})")
                return entries
            if window is None:
                self._open[bucket] = _Window(actor, exc.key, exc.reason, now + self._window)
                detail = f"{request_line}: unauthorised: {exc.reason}"
                return [*entries, KeyRefusal(actor, exc.key, detail)]
            window.count(request_line)
            return entries

    def flush(self, everything: bool = False) -> None:
        """Store the counts of the windows that closed (of all, as the replica stops). A
        failure is raised, for the round's failure count; what it counted is lost."""
        with self._lock:
            entries = self._close(float("inf") if everything else self.clock())
        for entry in entries:
            self._record(entry)

    def store(self, entries: list[KeyRefusal]) -> None:
        """Store a refusal's `entries`; the caller gets its answer even if this fails."""
        for entry in entries:
            try:
                self._record(entry)
            except Exception:
                log.exception("could not store a refused key in the access log: %s", entry)

    def _record(self, entry: KeyRefusal) -> None:
        """Store `entry` in a transaction of its own (group-committed with others)."""
        self._audit.record(
            entry.actor,
            "login",
            "credential",
            entry.key,
            outcome="refused",
            detail=entry.detail,
        )

    def _close(self, now: float) -> list[KeyRefusal]:
        """Take the windows over by `now` out; the entries of what they counted. Under the
        lock: a few windows at most (:data:`KEYS_PER_WINDOW`)."""
        over = [bucket for bucket, window in self._open.items() if window.until <= now]
        summaries = [self._open.pop(bucket).summary() for bucket in over]
        return [summary for summary in summaries if summary is not None]
