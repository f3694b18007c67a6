"""Which notice receivers are down, and when notices try each of them again.

A receiver that is down (a RIS being restarted, a FHIR server behind a dead proxy) costs a
notice its whole timeout and every retry, 20 to 30 s with the defaults, and the queued notices
(`aifi.gateway.notice_queue`) are sent one after another. Were every notice to try such a
receiver, each would wait half a minute for the one before. So once a receiver has failed to
take a notice, notices hold off trying it for a while, twice as long after each further
failure (up to ten times the first pause); the first notice after the pause tries it again,
and one notice taken, or refused, ends the outage. A notice held off is not a try: it does
not count towards the notice's five.

A STAT notice's first try goes to every receiver when all of them are held off: an alert
never reaches nobody on a guess (`Notifier.notify`).

A receiver that could not even be connected to is checked when its pause is over, by a
connection that sends nothing (`aifi.gateway.notify.reach`): one it takes ends the outage,
so the gateway's monitoring sees the receiver back even when no notice waits to try it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)

#: The longest pause, as a multiple of the first.
LONGEST_PAUSE_FACTOR = 10
#: Checks of an unreached receiver's connection are at least this far apart, whatever the
#: pause (`hold_off_seconds: 0` has none).
CHECKS_APART_SECONDS = 10.0


@dataclass(frozen=True)
class Outage:
    """A receiver that failed to take the last notice tried on it.

    `since` and `retry_from` are wall-clock times, for people; `failures` counts the notices
    it failed in a row; `detail` is the last failure (the endpoint and what went wrong, never
    the patient); `unreached` says no connection to it could be made, so that one made later
    shows it back."""

    channel: str
    since: float
    failures: int
    detail: str
    retry_from: float
    unreached: bool = False

    def describe(self) -> str:
        """Why a notice was not tried, for the job's notice row and the hospital's engineer."""
        return (
            f"not tried: the {self.channel} receiver has failed {self.failures} notice(s) in a "
            f"row since {_clock(self.since)}; tried again from {_clock(self.retry_from)}. "
            f"Last failure on it: {self.detail}"
        )


def _clock(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%S UTC")


@dataclass
class _Check:
    """When an unreached receiver's connection is next checked, how long checks are apart
    (doubling while they fail), and the last failure a check logged."""

    at: float
    every: float
    said: str = ""


class Outages:
    """The receivers down, by channel; shared by the threads that send one notice's channels
    side by side, and read by the metrics exporter."""

    def __init__(
        self,
        hold_off_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.hold_off_seconds = hold_off_seconds
        #: When a pause ends is kept on `clock`, which a change of the system's time leaves
        #: alone; `wall` only says when, to people.
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._down: dict[str, Outage] = {}
        self._due: dict[str, float] = {}
        self._checks: dict[str, _Check] = {}
        #: Outages a check ended, with when, until a notice bears it out or the longest pause
        #: has passed: a RIS whose port opens before its engine is ready fails the next
        #: notice, and that continues the outage (its failures, its start) rather than
        #: beginning one that spends a notice's try.
        self._ended_by_check: dict[str, tuple[Outage, float]] = {}
        #: Outages ended so far: whoever held work back for a receiver sees it change, and
        #: sends that work now rather than when its own retry comes round.
        self.recoveries = 0

    def holding_off(self, channel: str) -> Outage | None:
        """The channel's outage while notices hold off trying it; None when it may be
        tried (it is up, or its pause is over)."""
        with self._lock:
            outage, due = self._down.get(channel), self._due.get(channel, 0.0)
        if outage is None or self._clock() >= due:
            return None
        return outage

    def now(self) -> float:
        """The time on the clock pauses are kept on: when a try began, for `standing` and
        `failed`."""
        return self._clock()

    def standing(self, channel: str, began: float | None = None) -> bool:
        """An outage stands for the channel, or one a check ended that no notice has yet
        borne out: a notice whose try `began` then (by default now) and failed continues it,
        and does not count as a try."""
        with self._lock:
            return channel in self._down or self._just_ended(channel, began) is not None

    def _just_ended(self, channel: str, began: float | None) -> Outage | None:
        """Under the lock: the outage a check ended lately, not yet borne out by a notice,
        for a try that `began` within the longest pause of that check (a try that waits out
        its timeouts may end long after)."""
        ended = self._ended_by_check.get(channel)
        moment = self._clock() if began is None else began
        if ended is None or moment - ended[1] > self._longest_pause():
            return None
        return ended[0]

    def failed(
        self, channel: str, detail: str, unreached: bool = False, began: float | None = None
    ) -> Outage:
        """The receiver did not take a notice tried on it (unreachable, no answer in time, or
        failing with every retry): hold off, longer than last time if it was down already.
        `began`: when the try began (`standing`)."""
        now, wall = self._clock(), self._wall()
        with self._lock:
            before = self._down.get(channel) or self._just_ended(channel, began)
            self._ended_by_check.pop(channel, None)
            failures = 1 if before is None else before.failures + 1
            pause = self._pause(failures)
            outage = Outage(
                channel=channel,
                since=wall if before is None else before.since,
                failures=failures,
                detail=detail,
                retry_from=wall + pause,
                unreached=unreached,
            )
            self._down[channel], self._due[channel] = outage, now + pause
            if unreached:  # checked when the pause is over, whether or not a notice waits
                every = max(pause, CHECKS_APART_SECONDS)
                self._checks[channel] = _Check(at=now + every, every=every)
            else:  # it took the connection: only a notice shows it back
                self._checks.pop(channel, None)
        if self.hold_off_seconds > 0:
            log.warning(
                "the %s receiver is down (%d notice(s) failed in a row); notices hold off "
                "trying it for %.0f s: %s",
                channel, failures, pause, detail,
            )  # fmt: skip
        return outage

    def answered(self, channel: str) -> None:
        """The receiver answered a notice (took it, or refused its content): it is up."""
        with self._lock:
            outage = self._down.pop(channel, None)
            self._due.pop(channel, None)
            self._checks.pop(channel, None)
            self._ended_by_check.pop(channel, None)
            if outage is not None:
                self.recoveries += 1
        if outage is not None:
            log.warning(
                "the %s receiver answers again, after %d failed notice(s) since %s",
                channel, outage.failures, _clock(outage.since),
            )  # fmt: skip

    def unreached_due(self) -> list[Outage]:
        """The outages of receivers that could not be connected to and are due a check of
        their connection (`connected`, `still_unreached`)."""
        now = self._clock()
        with self._lock:
            return [self._down[c] for c, check in self._checks.items() if now >= check.at]

    def next_check_in(self) -> float | None:
        """Seconds until the next such check is due; None while no receiver is unreached."""
        now = self._clock()
        with self._lock:
            dues = [check.at for check in self._checks.values()]
        return max(0.0, min(dues) - now) if dues else None

    def connected(self, checked: Outage) -> bool:
        """A receiver that could not be connected to takes connections again: its outage
        ends, unless a notice has changed it since `checked` was read (a notice that then
        failed in another way knows better than a connection). True when it ended."""
        channel = checked.channel
        with self._lock:
            if self._down.get(channel) is not checked:
                return False
            del self._down[channel], self._due[channel], self._checks[channel]
            self._ended_by_check[channel] = (checked, self._clock())
            self.recoveries += 1
        log.warning(
            "the %s receiver takes connections again, after %d failed notice(s) since %s",
            channel, checked.failures, _clock(checked.since),
        )  # fmt: skip
        return True

    def still_unreached(self, checked: Outage, detail: str) -> None:
        """A check found the receiver still not taking connections. The next check is twice
        as far off (up to the longest pause); the notices' own pause is left as it was, so a
        check that cannot help (a proxy it does not know of, say) never holds them back. The
        journal hears of it when what the check met changes."""
        channel, now = checked.channel, self._clock()
        with self._lock:
            check = self._checks.get(channel)
            if self._down.get(channel) is not checked or check is None:
                return
            check.every = min(check.every * 2, self._longest_pause())
            check.at = now + check.every
            news, check.said = detail != check.said, detail
        log.log(
            logging.INFO if news else logging.DEBUG,
            "the %s receiver is still down, checked again in %.0f s: %s",
            channel, check.every, detail,
        )  # fmt: skip

    def _pause(self, failures: int) -> float:
        return self.hold_off_seconds * min(2 ** (failures - 1), LONGEST_PAUSE_FACTOR)

    def _longest_pause(self) -> float:
        """The longest pause between notices' tries, or between checks (never under
        `CHECKS_APART_SECONDS`)."""
        return max(self.hold_off_seconds * LONGEST_PAUSE_FACTOR, CHECKS_APART_SECONDS)

    def down(self) -> dict[str, Outage]:
        """Every receiver whose last notice failed, by channel (held off or due a try)."""
        with self._lock:
            return dict(self._down)
