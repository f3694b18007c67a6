"""The gateway's notices, queued and sent on threads of their own.

A notice (a result is in the PACS; or no result will come) is queued in the state as its
job comes home (a STAT study's result is late: as its time runs out, `aifi.gateway.delays`),
and the results thread goes straight on to store the results in the PACS and to the next
job: a RIS that is slow or down never holds a result back from the PACS, nor a stroke result
behind a routine job's notice. Two threads send: one for STAT notices
(a triage-positive result, or any notice of a study run STAT) and one for the rest, so an
alert never waits for a routine notice's timeout.

A queued notice holds all but the patient's identity, which is read from the vault at each
send, as the patient's identity is kept nowhere else. It is sent until every configured
channel is done with it: taken, refused for good, or tried five times (`MAX_NOTICE_ATTEMPTS`,
where tries on a receiver known to be down do not count: an outage spends none of them). A
notice whose study left the vault (its retention ended) before it could be sent is given up:
nobody can be named. The job's acknowledgement at the exchange waits until its notices are
done with (`Gateway.collect`): a gateway restored from a backup asks the exchange what it
did since, and an acknowledged job must mean one whose notices went out.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel

from aifi.gateway.disclosures import Action, DisclosureLog, NotRecorded
from aifi.gateway.notify import Notifier, OriginalStudy, ResultNotice, build_notice
from aifi.gateway.state import GatewayState, notice_settled
from aifi.gateway.vault import Vault
from aifi.results.summary import ResultSummary, TriageFlag

log = logging.getLogger(__name__)

#: Why a notice still to be retried is given up: nobody will send it again.
NO_LONGER_SENT = "given up: this notice no longer goes to this channel (configuration changed)"
#: Why a delay notice still to be retried is given up.
DELAY_NOT_SENT = "given up: its job ended, or its result or the news of none came, first"
#: Why a notice of a study never prepared for sending waits.
CANNOT_NAME_YET = (
    "its study cannot be named yet: not yet prepared for sending, and its spooled images do not "
    "name one patient"
)
#: ... and of a study never prepared for sending.
STUDY_LEFT_THE_SPOOL = (
    "given up: its study left the spool (retention) before the notice could be sent"
)
#: Why a queued notice was not sent at all.
STUDY_GONE = "given up: its study left the vault (retention) before the notice could be sent"
#: The longest wait between two passes of a lane with nothing due.
IDLE_SECONDS = 60.0


def retry_in(passes: int) -> float:
    """Seconds to the next pass of a notice that left a channel to try again: 2, 4, 8 …
    up to five minutes."""
    return float(min(2 ** min(passes, 9), 300))


class Announced(NamedTuple):
    """How one pass of a notice went (`NoticeSender.announce`)."""

    #: Every channel is done with the notice.
    done: bool
    #: The gateway could make every request it tried: no channel was kept from its receiver
    #: by a key or token file mid-rotation (`NoticeOutcome.prepared`).
    prepared: bool


class QueuedNotice(BaseModel):
    """A notice as queued: `build_notice`'s fields but the hospital and the patient's study,
    and the study as the exchange and as the hospital know it, to map it back at each send."""

    kind: Literal["result", "no-result", "delayed"]
    exchange_job_id: str
    product_id: str
    product_name: str | None = None
    product_version: str | None = None
    summary: ResultSummary | None = None
    result_sop_instance_uids: list[str] = []
    completed_at: datetime | None = None
    unavailable: str | None = None
    stat_study: bool = False
    #: For a delay notice: why the result is late (`ResultNotice.delayed`).
    delayed: str | None = None
    #: The job ran STAT (its route or its product said so): its notices go on the STAT
    #: thread and are never held off, whatever the result's triage.
    urgent: bool = False
    #: Empty for a delay notice of a study not yet pseudonymised (the exchange out of reach
    #: before the gateway could prepare it): its identity is read from the spool instead.
    pseudonym_study_uid: str
    original_study_uid: str

    def notice(
        self,
        hospital: str,
        known: tuple[str, Mapping[str, str]],
        announced_as: str | None = None,
    ) -> ResultNotice:
        """The notice to send; `announced_as`: the id the job's delay notice went under, which
        a later notice goes under too, replacing what the delay notice made."""
        follows = announced_as if self.kind != "delayed" else None
        after_delay = follows is not None
        return build_notice(
            hospital=hospital,
            exchange_job_id=follows or self.exchange_job_id,
            product_id=self.product_id,
            product_name=self.product_name,
            product_version=self.product_version,
            summary=self.summary,
            study=OriginalStudy.from_vault(known[0], dict(known[1])),
            result_sop_instance_uids=self.result_sop_instance_uids,
            # After a delay, the status change is now: a receiver keeping the newest by its
            # time must not take the result, ended before the delay was told, for older.
            completed_at=datetime.now(UTC) if after_delay else self.completed_at,
            unavailable=self.unavailable,
            stat_study=self.stat_study,
            delayed=self.delayed,
            after_delay=after_delay,
        )

    @property
    def message_stat(self) -> bool:
        """The message itself is STAT (`ResultNotice.stat`): a triage-positive result, or no
        result for a study run STAT, or its delay. Its channels, and how it is counted,
        follow this, and what follows a delay told goes as STAT too
        (`ResultNotice.goes_stat`)."""
        if self.unavailable is not None or self.delayed is not None:
            return self.stat_study
        return self.summary is not None and self.summary.triage.flag is TriageFlag.POSITIVE

    @property
    def stat(self) -> bool:
        """On the STAT thread: the message is STAT, or the job ran STAT (or, decided as it
        is queued, a delay of the job was queued: `GatewayState.queue_notice`)."""
        return self.urgent or self.message_stat


class NoticeSender:
    """Sends the queued notices; one per gateway, its two lanes run by `run`."""

    def __init__(
        self,
        *,
        hospital: str,
        state: GatewayState,
        vault: Vault,
        notifier: Notifier,
        disclosures: DisclosureLog,
        stop: threading.Event,
        changed: Callable[[], None],
        done: Callable[[str], None] = lambda _exchange_job_id: None,
        spooled: Callable[[str], Mapping[str, str] | None] = lambda _study_uid: None,
    ) -> None:
        self._hospital = hospital
        self._state = state
        self._vault = vault
        self._notifier = notifier
        self._disclosures = disclosures
        self._stop = stop
        self._changed = changed
        #: Told each exchange job whose notice is done with: its acknowledgement waits for it.
        self._done = done
        #: The identity of a study the vault does not know yet, read from its spooled images.
        self._spooled = spooled
        self._wake = {True: threading.Event(), False: threading.Event()}
        self._recoveries_seen = 0
        self._recoveries_lock = threading.Lock()

    def queue(self, job_id: int, queued: QueuedNotice) -> None:
        """Queue the job's notice (durably: the caller may go on as if it were sent) and wake
        its lane. A notice of the job's already queued stays as it was."""
        urgent = self._state.queue_notice(
            job_id, queued.kind, queued.model_dump_json(), urgent=queued.stat
        )
        self._wake[urgent].set()

    def announce_delay(self, job_id: int, announced_as: str, queued: QueuedNotice) -> bool:
        """Queue the job's delay notice, under `announced_as`, and wake the STAT lane; False
        when it may not be told (`GatewayState.announce_delay`: told before, no longer under
        way, a notice of the job queued, or a restore still to be checked)."""
        if not self._state.announce_delay(job_id, announced_as, queued.model_dump_json()):
            return False
        self._wake[True].set()
        return True

    def close_told(self, job_id: int, queued: QueuedNotice) -> bool:
        """Queue the notice that no result will come for a job told late that left without
        one, and wake the STAT lane; False when a notice to follow was queued meanwhile."""
        if not self._state.close_told(job_id, queued.model_dump_json()):
            return False
        self._wake[True].set()
        return True

    def wake(self) -> None:
        """Both lanes look again now (the gateway stops, say)."""
        for event in self._wake.values():
            event.set()

    def run(self, urgent: bool) -> None:
        """One lane's thread: send what is due, sleep until the next is due or one is
        queued. The routine lane also checks the receivers that could not be connected to
        (`Notifier.check_unreached`), so that one back is seen without a notice to try it."""
        failures = 0
        while not self._stop.is_set():
            self._wake[urgent].clear()
            try:
                wait = self.send_due(urgent)
                if not urgent and not self._stop.is_set():
                    wait = self.check_receivers(wait)
                elif self._notifier.outages.next_check_in() is not None:
                    self._wake[False].set()  # a check to schedule, perhaps from this lane's sends
                failures = 0
            except Exception:  # the state's disk, or a fault: never stop sending for good
                failures += 1
                log.exception("sending %s notices failed", "STAT" if urgent else "routine")
                wait = retry_in(failures)
            self._wake[urgent].wait(wait)

    def send_due(self, urgent: bool, now: float | None = None) -> float:
        """Send the lane's notices due by `now`; the seconds until its next is due."""
        while not self._stop.is_set():
            due = self._state.due_notices(urgent, time.time() if now is None else now)
            for row in due:
                if self._stop.is_set():
                    break
                self._send(row)
                self._after_recovery()
            if len(due) < 50 or now is not None:
                break
        following = self._state.next_notice_due(urgent)
        if following is None:
            return IDLE_SECONDS
        return min(IDLE_SECONDS, max(0.0, following - time.time()))

    def check_receivers(self, wait: float) -> float:
        """Check the unreached receivers that are due a check; the seconds until the lane
        should look again (`wait`, or sooner for the next check)."""
        following = self._notifier.check_unreached()
        self._after_recovery()
        return wait if following is None else min(wait, following)

    def _after_recovery(self) -> None:
        """A receiver that was down took a notice: every queued notice is due now, not when
        its own retry comes round (by then up to five minutes apart)."""
        with self._recoveries_lock:
            recoveries = self._notifier.outages.recoveries
            if recoveries == self._recoveries_seen:
                return
            self._recoveries_seen = recoveries
        self._state.notices_due_now()
        self.wake()

    def _send(self, row: Mapping[str, Any]) -> None:
        job_id, kind, passes = int(row["job_id"]), str(row["kind"]), int(row["passes"])
        first = int(row["tries"]) == 0
        try:
            queued = QueuedNotice.model_validate_json(row["notice"])
        except ValueError as exc:  # written by another version, or damaged: cannot be sent
            self._unreadable(job_id, kind, exc)
            return
        if kind == "no-result" and not self._notifier.settings.announce_unavailable:
            self._no_longer_announced(job_id, queued)
            return
        if kind == "delayed":
            still = self._delay_still_to_tell(job_id)
            if still is None:  # a restore to check first: not a try, nor a failure
                self._state.notice_later(job_id, kind, passes, time.time() + 30.0, tried=False)
                return
            if not still:
                # What a receiver down still had to retry of it is given up, or it would
                # page for ever.
                self._state.give_up_notifications(job_id, (), DELAY_NOT_SENT, kind=kind)
                self._leave_queue(job_id, kind, "")
                return
        prepared = True
        try:
            known, failure = self._known(queued), ""
            if (
                known is None
                and not queued.pseudonym_study_uid
                and self._state.spooled(queued.original_study_uid)
            ):
                # Not yet prepared for sending, and its images name no one patient: tried
                # again (the vault learns it once sent), a STAT notice retrying meanwhile.
                done, failure = False, CANNOT_NAME_YET
            elif known is None or known[0] != queued.original_study_uid:
                self._cannot_name(job_id, queued)
                done = True
            else:
                announced_as = self._state.delay_announced_as(job_id)
                notice = queued.notice(self._hospital, known, announced_as)
                done, prepared = self.announce(
                    job_id, queued, known, notice, first=first, stat_lane=bool(row["urgent"])
                )
        except (OSError, sqlite3.Error, NotRecorded) as exc:
            done, failure = False, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # one notice's fault must not hold up the others
            log.exception("job %s: its %s notice failed unexpectedly", job_id, kind)
            done, failure = False, f"{type(exc).__name__}: {exc}"
        if failure:
            self._not_sent(job_id, queued, failure)
        if done:
            self._state.notice_done(job_id, kind)
            self._done(queued.exchange_job_id)
        else:
            due = time.time() + retry_in(passes + 1)
            # A pass the gateway's stop may have cut short is not counted as a try: a STAT
            # notice whose first try it was is, after the restart, tried whatever is held off.
            # Nor is one that left a receiver unasked for a key or token file mid-rotation.
            tried = not failure and not self._stop.is_set() and prepared
            self._state.notice_later(job_id, kind, passes + 1, due, tried=tried)
            log.info(
                "job %s: its %s notice is tried again in %.0f s (%s)",
                job_id, kind, retry_in(passes + 1), failure or "a channel did not take it",
            )  # fmt: skip
        self._changed()

    def _known(self, queued: QueuedNotice) -> tuple[str, Mapping[str, str]] | None:
        """The study as the hospital knows it: from the vault, or for a study not yet
        pseudonymised from its spooled images."""
        if queued.pseudonym_study_uid:
            return self._vault.study(queued.pseudonym_study_uid)
        if (known := self._vault.pseudonym_of(queued.original_study_uid)) is not None:
            return self._vault.study(known)  # prepared since
        attributes = self._spooled(queued.original_study_uid)
        return (queued.original_study_uid, attributes) if attributes is not None else None

    def _delay_still_to_tell(self, job_id: int) -> bool | None:
        """A delay notice goes while its job is under way, no notice of its result or of
        none queued, and delays are announced: otherwise it leaves the queue unsent (a delay
        after the result would undo the result at the receiver). None: not before a restore
        is checked."""
        if not self._notifier.settings.announce_delayed:
            log.info("job %s: its delay notice is no longer sent", job_id)
            self._state.give_up_notifications(job_id, (), NO_LONGER_SENT, kind="delayed")
            return False
        return self._state.delay_still_to_tell(job_id)

    def _no_longer_announced(self, job_id: int, queued: QueuedNotice) -> None:
        """Queued before `announce_unavailable` was turned off: the hospital no longer wants
        these notices, so it leaves the queue unsent, as one not yet queued would be."""
        log.info("job %s: its notice that no result will come is no longer sent", job_id)
        self._state.give_up_notifications(job_id, (), NO_LONGER_SENT)
        self._leave_queue(job_id, queued.kind, queued.exchange_job_id)

    def _not_sent(self, job_id: int, queued: QueuedNotice, failure: str) -> None:
        """A pass that failed before it could send: each channel not done says so, as a
        notice still to be retried (not a try), so that the hospital's monitoring sees a STAT
        notice held up by the gateway's own trouble as it sees one a receiver holds up."""
        try:
            self._say_on_unsettled(job_id, queued, f"not sent: {failure}", retryable=True)
        except sqlite3.Error as exc:
            log.warning("job %s: why its notice was not sent is not on record: %s", job_id, exc)

    def _unreadable(self, job_id: int, kind: str, exc: Exception) -> None:
        """A queued row that cannot be read is given up, counted failed on every channel
        (routine: what it was is not known), and leaves the queue: it would fail for ever."""
        log.error("job %s: its queued %s notice cannot be read, given up: %s", job_id, kind, exc)
        why = f"given up: the queued notice cannot be read ({type(exc).__name__})"
        for channel in self._notifier.channels_of(False):
            self._state.record_notification(
                job_id, channel, ok=False, retryable=False, stat=False, detail=why,
                seconds=0.0, kind=kind, counted=False,
            )  # fmt: skip
        job = self._state.job_or_none(job_id)
        self._leave_queue(job_id, kind, str(job["exchange_job_id"] or "") if job else "")

    def _leave_queue(self, job_id: int, kind: str, exchange_job_id: str) -> None:
        """The notice is done with, unsent: its job's acknowledgement waits for it no more."""
        self._state.notice_done(job_id, kind)
        if exchange_job_id:
            self._done(exchange_job_id)
        self._changed()

    def _cannot_name(self, job_id: int, queued: QueuedNotice) -> None:
        """The study left the vault (or, never prepared for sending, the spool) before its
        notice went: nobody can be named, so every channel not done with it gives it up, as
        a failure the hospital's monitoring sees."""
        why = STUDY_GONE if queued.pseudonym_study_uid else STUDY_LEFT_THE_SPOOL
        log.warning("job %s: its %s notice is given up: %s", job_id, queued.kind, why)
        self._say_on_unsettled(job_id, queued, why, retryable=False)

    def _say_on_unsettled(
        self, job_id: int, queued: QueuedNotice, detail: str, *, retryable: bool
    ) -> None:
        """Record `detail` on each channel of the notice's message not done with it, as no
        try: still to be retried (`retryable`) or given up."""
        outcomes = self._state.notification_outcomes(job_id, queued.kind)
        # What follows a delay told goes as STAT (`ResultNotice.goes_stat`).
        stat = queued.message_stat or (
            queued.kind != "delayed" and self._state.delay_announced_as(job_id) is not None
        )
        for channel in self._notifier.channels_of(stat):
            if channel in outcomes and notice_settled(outcomes[channel]):
                continue
            self._state.record_notification(
                job_id, channel, ok=False, retryable=retryable, stat=stat,
                detail=detail, seconds=0.0, kind=queued.kind, counted=False,
            )  # fmt: skip

    def announce(
        self,
        job_id: int,
        queued: QueuedNotice,
        known: tuple[str, Mapping[str, str]],
        notice: ResultNotice,
        first: bool = True,
        *,
        stat_lane: bool,
    ) -> Announced:
        """Send `notice` on every configured channel not yet done, each outcome recorded and
        each try that left disclosed; whether every channel is done, and whether every request
        could be made. On the `first` pass of a STAT notice, or of any notice of a study run
        STAT, receivers all held off are all tried (`Notifier.notify`); later passes hold off
        as routine ones do, so that retries to a receiver that is down never hold up a new
        alert. A pass that could not make a request (a key or token file mid-rotation) asked
        that receiver nothing, so it is not counted as the first (`_send`). `stat_lane`: the
        notice is queued on the STAT lane, and goes first on a standing HL7 connection.

        A channel's row is of one notice (`kind`): a notice that there is no result, after a
        result notice went out (its results purged before a restored gateway fetched them
        again), is sent where the result notice was. A channel no longer configured is not
        waited for, and what it still had to retry is given up, so that it pages once.
        """
        kind = queued.kind
        rows = self._state.notification_outcomes(job_id)
        done = {c for c, row in rows.items() if row["kind"] == kind and notice_settled(row)}
        patient, study = str(known[1].get("PatientID", "")), known[0]
        what = "result" if notice.available else "delay" if notice.delayed else "no result"
        always = first and (notice.goes_stat or queued.urgent)
        sent, prepared = False, True
        for outcome in self._notifier.notify(
            notice, skip=done, always_try=always, urgent=stat_lane
        ):
            sent, prepared = sent or outcome.sent, prepared and outcome.prepared
            other = rows.get(outcome.channel)
            if not outcome.tried and other is not None and other["kind"] != kind:
                continue  # nothing sent: the row keeps what the job's other notice did
            self._state.record_notification(
                job_id, outcome.channel, ok=outcome.ok, retryable=outcome.retryable,
                stat=outcome.stat, detail=outcome.detail, seconds=outcome.seconds, kind=kind,
                counted=outcome.counted,
            )  # fmt: skip
            if not outcome.sent:
                continue  # nothing left (`NoticeOutcome.sent`): nothing to disclose
            detail = f"{what} of {queued.product_id} (exchange job {queued.exchange_job_id})" + (
                f": {outcome.detail}" if outcome.detail and not outcome.ok else ""
            )
            try:
                self._disclosures.record(
                    Action.notified,
                    patient_id=patient,
                    study_uid=study,
                    recipient=f"{outcome.channel} notice",
                    ok=outcome.ok,
                    detail=detail,
                )
            except NotRecorded as exc:
                # Sending the notice again to record it would give the RIS two messages; the
                # notice stays on record in state.db (its notifications), the journal says so.
                log.error(
                    "%s: job %s's %s notice is recorded in state.db only", exc, job_id,
                    outcome.channel,
                )  # fmt: skip
        if kind == "delayed" and sent:
            # Sent, if not taken: a receiver that timed out may have kept it. What follows goes
            # under its id, replacing it (harmless where the delay never arrived).
            self._state.delay_told(job_id)
        channels = self._notifier.channels(notice)
        self._state.give_up_notifications(job_id, channels, NO_LONGER_SENT)
        outcomes = self._state.notification_outcomes(job_id, kind)
        return Announced(
            all(channel in outcomes and notice_settled(outcomes[channel]) for channel in channels),
            prepared,
        )
