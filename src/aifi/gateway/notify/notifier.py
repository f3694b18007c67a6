"""Send one result notice (or a notice that there will be no result) to every configured
channel and report how each one went.

Channels run side by side (one thread each), so a receiver that is down and being retried
never holds up another: a STAT alert reaches the webhook while the FHIR server is still
timing out. STAT channels (HL7 with priority S, the webhook) are started first. Nothing here
raises because one channel failed: each outcome says what happened and whether a later attempt
may help, and the gateway decides whether to retry or record. A receiver that failed to take a
notice is not tried by routine notices for a while (`Outages`), so that one receiver down does
not cost every job its timeout.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import httpx

from aifi.gateway.notify.errors import DeliveryFailed, NotificationError, NotPrepared
from aifi.gateway.notify.fhir import (
    FhirBuildError,
    build_transaction,
    endpoint_verify,
    post_fhir,
    report_identifier,
)
from aifi.gateway.notify.mllp import send_mllp
from aifi.gateway.notify.mllp_connections import StandingConnection
from aifi.gateway.notify.notice import ResultNotice
from aifi.gateway.notify.oru import OruBuildError, build_oru_r01, message_control_id
from aifi.gateway.notify.outages import Outages
from aifi.gateway.notify.reach import check_connection, http_client
from aifi.gateway.notify.settings import NotificationSettings
from aifi.gateway.notify.webhook import delivery_id, send_webhook

log = logging.getLogger(__name__)

HL7, FHIR, WEBHOOK = "hl7", "fhir", "webhook"
#: The longest a check of an unreached receiver's connection waits: checks run on the routine
#: lane, and one behind a firewall that drops packets must not hold its notices up long.
CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class NoticeOutcome:
    """How one channel went for one notice.

    `message_id` is what the receiver can deduplicate on (HL7 control id, the report's
    conditional-create identifier, the webhook delivery id); `detail` is the receiver's answer
    (``AA``, ``201 Created``) or the error; `retryable` is False when resending the same message
    cannot help (content rejected, or the notice cannot be encoded). `tried` is False for a
    notice held off a receiver that is down, and for one the gateway's stop kept from
    leaving. `sent` is False for those, for one whose every attempt failed to connect, for one
    that could not be encoded, and for one whose key or token file could not be read: nothing
    of the patient left the gateway, so nothing is disclosed. `counted` is False for a notice
    held off, for a try on a receiver that had failed already and failed again (or that a
    check of its connection had just seen back), for a send the gateway's stop cut short, and
    for a key or token file that could not be read: none counts towards the notice's tries,
    so that an outage, however long, spends none of them, nor does a stop or a rotation.
    `prepared` is False only for that last: the gateway could not make the request, so no
    receiver was asked, and a STAT notice's first pass, which tries receivers held off, is
    not used up (`NoticeQueue.announce`).
    """

    channel: str
    ok: bool
    stat: bool
    message_id: str
    detail: str
    retryable: bool
    seconds: float
    tried: bool = True
    counted: bool = True
    sent: bool = True
    prepared: bool = True


class Notifier:
    """Sends result notices as configured; one per gateway, closed with the gateway."""

    def __init__(self, settings: NotificationSettings) -> None:
        self.settings = settings
        self.outages = Outages(settings.hold_off_seconds)
        #: FHIR may need the hospital's own CA; each goes through the proxy, if any, that
        #: the checks of an unreached receiver connect to.
        fhir, webhook = settings.fhir, settings.webhook
        self._fhir_http = (
            http_client(fhir.base_url, endpoint_verify(fhir)) if fhir else httpx.Client()
        )
        self._webhook_http = http_client(webhook.url) if webhook else httpx.Client()
        hl7 = settings.hl7
        self._hl7_connection = StandingConnection(hl7) if hl7 and hl7.keep_open else None

    def close(self) -> None:
        self._fhir_http.close()
        self._webhook_http.close()
        if self._hl7_connection is not None:
            self._hl7_connection.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def longest_send_seconds(self) -> float:
        """The longest one notice may take on its slowest channel, all retries and pauses
        counted, each timeout per phase (connecting to a host name's one address, then the
        answer). A host name with several addresses it cannot connect to, and with
        `hl7.keep_open` STAT notices going first on the shared connection, can hold a notice
        longer."""
        spans = [
            2 * endpoint.timeout_seconds * (endpoint.retries + 1)
            + endpoint.retry_backoff_seconds * (2**endpoint.retries - 1)
            for endpoint in (self.settings.hl7, self.settings.fhir, self.settings.webhook)
            if endpoint is not None
        ]
        return max(spans, default=0.0)

    def channels(self, notice: ResultNotice) -> list[str]:
        """The channels `notice` goes to, in the order they are started (STAT ones first).

        The webhook takes STAT notices only, unless its `only_stat` is False. A notice that
        there is no result is STAT only for a study run STAT. What follows a delay notice goes
        where the delay went, whatever the result's triage: the pager heard of the delay.
        """
        return self.channels_of(notice.goes_stat)

    def channels_of(self, stat: bool) -> list[str]:
        """The channels a notice goes to, by whether it is STAT (`channels`)."""
        settings = self.settings
        hl7 = [HL7] if settings.hl7 else []
        fhir = [FHIR] if settings.fhir else []
        webhook = [WEBHOOK] if settings.webhook and (stat or not settings.webhook.only_stat) else []
        return hl7 + webhook + fhir if stat else hl7 + fhir + webhook

    def notify(
        self,
        notice: ResultNotice,
        skip: Collection[str] = (),
        *,
        always_try: bool | None = None,
        urgent: bool | None = None,
    ) -> list[NoticeOutcome]:
        """Send `notice` on every channel it goes to but those in `skip` (already delivered);
        one outcome per channel, never raises for a channel's failure. It is not sent to a
        receiver being held off (`Outages`), its outcome says so; but with `always_try` (by
        default: a STAT notice) every receiver is tried when all of them are held off, so
        that an alert never reaches nobody on a guess. A receiver down among others that
        are up is held off even then: it would hold up the next alert by its timeout.
        `urgent` (by default: a STAT notice) says the notice is the STAT lane's: on a standing
        HL7 connection (`hl7.keep_open`) it goes before routine notices waiting."""
        channels = [channel for channel in self.channels(notice) if channel not in skip]
        always = notice.goes_stat if always_try is None else always_try
        held = {channel: self.outages.holding_off(channel) for channel in channels}
        if always and all(outage is not None for outage in held.values()):
            held = dict.fromkeys(channels)
        outcomes: dict[str, NoticeOutcome] = {}
        for channel in channels:
            outage = held[channel]
            if outage is not None:
                outcomes[channel] = NoticeOutcome(
                    channel=channel,
                    ok=False,
                    stat=notice.goes_stat,
                    message_id=self._message_id(channel, notice),
                    detail=outage.describe(),
                    retryable=True,
                    seconds=0.0,
                    tried=False,
                    counted=False,
                    sent=False,
                )
        tried = [channel for channel in channels if channel not in outcomes]
        if tried:
            stat_lane = notice.goes_stat if urgent is None else urgent
            senders: dict[str, Callable[[ResultNotice], str]] = {
                HL7: functools.partial(self._send_hl7, urgent=stat_lane),
                FHIR: self._send_fhir,
                WEBHOOK: self._send_webhook,
            }
            with ThreadPoolExecutor(
                max_workers=len(tried), thread_name_prefix="aifi-notify"
            ) as pool:
                futures = {
                    channel: pool.submit(self._attempt, channel, senders[channel], notice)
                    for channel in tried
                }
                outcomes.update((channel, future.result()) for channel, future in futures.items())
        return [outcomes[channel] for channel in channels]

    def _attempt(
        self, channel: str, send: Callable[[ResultNotice], str], notice: ResultNotice
    ) -> NoticeOutcome:
        started, began = time.monotonic(), self.outages.now()
        message_id = self._message_id(channel, notice)
        counted = tried = sent = prepared = True
        try:
            detail = send(notice)
            ok, retryable = True, False
            self.outages.answered(channel)
        except DeliveryFailed as exc:
            detail, ok, retryable, sent = str(exc), False, exc.retryable, exc.sent
            if exc.stopped:  # the gateway stopping: nothing said of the receiver
                counted, tried = False, exc.sent
            else:  # only the failure that began an outage counts
                counted = not self.outages.standing(channel, began)
                self.outages.failed(channel, detail, unreached=exc.unreached, began=began)
        except NotPrepared as exc:  # the gateway's own files: nothing left, no receiver asked
            # Spends none of the notice's tries, as the gateway's other faults of its own
            # do: a rotation taking minutes must not give an alert up unsent.
            detail, ok, retryable, sent, counted = str(exc), False, exc.retryable, False, False
            prepared = False
        except NotificationError as exc:  # refused: the receiver answered, so it is up
            detail, ok, retryable = str(exc), False, exc.retryable
            self.outages.answered(channel)
        except (OruBuildError, FhirBuildError) as exc:  # no message to send
            detail, ok, retryable, sent = str(exc), False, False, False
        except Exception as exc:  # one channel's bug must not stop the others
            log.exception("%s notice for job %s failed", channel, notice.exchange_job_id)
            detail, ok, retryable = f"{type(exc).__name__}: {exc}", False, False
        outcome = NoticeOutcome(
            channel=channel,
            ok=ok,
            stat=notice.goes_stat,
            message_id=message_id,
            detail=detail,
            retryable=retryable,
            seconds=time.monotonic() - started,
            tried=tried,
            counted=counted,
            sent=sent,
            prepared=prepared,
        )
        level = logging.INFO if ok else logging.WARNING
        log.log(
            level,
            "%s%s notice for job %s: %s",
            ("STAT " if notice.goes_stat else "") + ("" if notice.available else f"{notice.kind} "),
            channel,
            notice.exchange_job_id,
            detail,
        )
        return outcome

    def check_unreached(self) -> float | None:
        """Check the connection of each receiver that could not be connected to, its pause
        over; one that takes it is up again. Sends nothing. The seconds until the next check
        is due, None while no receiver is unreached."""
        endpoints = {
            HL7: self.settings.hl7,
            FHIR: self.settings.fhir,
            WEBHOOK: self.settings.webhook,
        }
        for outage in self.outages.unreached_due():
            endpoint = endpoints[outage.channel]
            if endpoint is None:  # never: only a configured channel is tried and fails
                continue
            problem = check_connection(endpoint, min(endpoint.timeout_seconds, CHECK_SECONDS))
            if problem is None:
                self.outages.connected(outage)
            else:
                self.outages.still_unreached(outage, problem)
        return self.outages.next_check_in()

    def _message_id(self, channel: str, notice: ResultNotice) -> str:
        if channel == HL7:
            return message_control_id(notice)
        if channel == FHIR and self.settings.fhir is not None:
            return f"{self.settings.fhir.identifier_system}|{report_identifier(notice)}"
        return delivery_id(notice)

    def _send_hl7(self, notice: ResultNotice, urgent: bool) -> str:
        endpoint = self.settings.hl7
        assert endpoint is not None
        ack = send_mllp(
            build_oru_r01(notice, endpoint),
            endpoint,
            self._hl7_connection,
            urgent=urgent,
        )
        return ack.code

    def _send_fhir(self, notice: ResultNotice) -> str:
        endpoint = self.settings.fhir
        assert endpoint is not None
        receipt = post_fhir(build_transaction(notice, endpoint), endpoint, self._fhir_http)
        return ", ".join(receipt.entry_statuses) or str(receipt.status)

    def _send_webhook(self, notice: ResultNotice) -> str:
        endpoint = self.settings.webhook
        assert endpoint is not None
        return str(send_webhook(notice, endpoint, self._webhook_http).status)
