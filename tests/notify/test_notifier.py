"""The Notifier: every configured channel, STAT first, one outcome each, never a raise."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme

from aifi.gateway.notify import (
    FhirEndpoint,
    Hl7Endpoint,
    NotificationSettings,
    Notifier,
    ResultNotice,
    WebhookEndpoint,
)
from aifi.gateway.notify.oru import message_control_id
from aifi.gateway.notify.receivers import FhirReceiver, Hl7Listener, WebhookReceiver
from aifi.gateway.notify.webhook import delivery_id
from aifi.results.summary import TriageFlag

from .conftest import (
    ORIGINAL_ATTRIBUTES,
    REASON,
    WEBHOOK_KEY,
    WHY,
    HangsUpOn,
    RawPeer,
    StandingReceiver,
    WatchedTurns,
    make_delayed,
    make_notice,
    make_summary,
    make_unavailable,
    messages_taken,
)

#: Quick retries; a long wait for answers, which every receiver here gives (or refuses the
#: connection at once), so that a loaded machine's late answer is not taken for none.
FAST: dict[str, Any] = {"retries": 1, "retry_backoff_seconds": 0.01, "timeout_seconds": 30.0}


def settings(
    hl7_port: int | None = None,
    fhir_url: str | None = None,
    webhook_url: str | None = None,
    **webhook: Any,
) -> NotificationSettings:
    return NotificationSettings(
        hl7=Hl7Endpoint(host="127.0.0.1", port=hl7_port, **FAST) if hl7_port else None,
        fhir=FhirEndpoint(base_url=fhir_url, **FAST) if fhir_url else None,
        webhook=WebhookEndpoint(url=webhook_url, secret=WEBHOOK_KEY.decode(), **FAST, **webhook)
        if webhook_url
        else None,
    )


def test_a_stat_result_goes_everywhere_alerts_first(
    hl7_listener: Hl7Listener,
    fhir_receiver: FhirReceiver,
    webhook_receiver: WebhookReceiver,
    positive: ResultNotice,
) -> None:
    configured = settings(hl7_listener.port, fhir_receiver.base_url, webhook_receiver.url)
    with Notifier(configured) as notifier:
        started = time.monotonic()
        outcomes = notifier.notify(positive)
    assert [o.channel for o in outcomes] == ["hl7", "webhook", "fhir"]
    assert all(o.ok and o.stat for o in outcomes), [o.detail for o in outcomes]
    assert [o.detail for o in outcomes[:2]] == ["AA", "204"]

    # the STAT alert was received, with priority S, after notify() was called
    hl7 = hl7_listener.received.get(timeout=5)
    assert hl7.received_at >= started
    obr = hl7.message.oru_r01_patient_result.oru_r01_order_observation.obr
    assert obr.obr_5.to_er7() == "S"
    assert hl7.message.msh.msh_10.to_er7() == outcomes[0].message_id
    alert = webhook_receiver.received.get(timeout=5)
    assert alert.received_at >= started
    assert alert.payload["event"] == "aifi.triage.positive"
    assert alert.payload["delivery_id"] == outcomes[1].message_id
    assert len(fhir_receiver.resources("DiagnosticReport")) == 1


def test_a_routine_result_skips_a_stat_only_webhook(
    hl7_listener: Hl7Listener,
    fhir_receiver: FhirReceiver,
    webhook_receiver: WebhookReceiver,
    negative: ResultNotice,
) -> None:
    configured = settings(hl7_listener.port, fhir_receiver.base_url, webhook_receiver.url)
    with Notifier(configured) as notifier:
        outcomes = notifier.notify(negative)
    assert [(o.channel, o.ok, o.stat) for o in outcomes] == [
        ("hl7", True, False),
        ("fhir", True, False),
    ]
    obr = hl7_listener.received.get(timeout=5).message.oru_r01_patient_result
    assert obr.oru_r01_order_observation.obr.obr_5.to_er7() == "R"
    assert webhook_receiver.received.empty()


def test_a_webhook_for_every_result_when_asked(
    webhook_receiver: WebhookReceiver, negative: ResultNotice
) -> None:
    configured = settings(webhook_url=webhook_receiver.url, only_stat=False)
    with Notifier(configured) as notifier:
        outcomes = notifier.notify(negative)
    assert [(o.channel, o.ok) for o in outcomes] == [("webhook", True)]
    assert webhook_receiver.received.get(timeout=5).payload["priority"] == "routine"


def test_one_channel_down_does_not_stop_the_others(
    closed_port: int,
    fhir_receiver: FhirReceiver,
    webhook_receiver: WebhookReceiver,
    positive: ResultNotice,
) -> None:
    configured = settings(closed_port, fhir_receiver.base_url, webhook_receiver.url)
    with Notifier(configured) as notifier:
        outcomes = notifier.notify(positive)
    by_channel = {o.channel: o for o in outcomes}
    assert not by_channel["hl7"].ok and by_channel["hl7"].retryable
    assert "connection refused" in by_channel["hl7"].detail
    assert by_channel["webhook"].ok and by_channel["fhir"].ok
    assert webhook_receiver.received.get(timeout=5).payload["priority"] == "stat"


def test_a_notice_that_cannot_be_encoded_is_not_retryable(
    hl7_listener: Hl7Listener,
    fhir_receiver: FhirReceiver,
    webhook_receiver: WebhookReceiver,
) -> None:
    attributes = {k: v for k, v in ORIGINAL_ATTRIBUTES.items() if k != "PatientID"}
    notice = make_notice(make_summary(), attributes=attributes)
    configured = settings(hl7_listener.port, fhir_receiver.base_url, webhook_receiver.url)
    with Notifier(configured) as notifier:
        outcomes = notifier.notify(notice)
    by_channel = {o.channel: o for o in outcomes}
    assert (by_channel["hl7"].ok, by_channel["hl7"].retryable) == (False, False)
    assert "PID-3" in by_channel["hl7"].detail
    assert (by_channel["fhir"].ok, by_channel["fhir"].retryable) == (False, False)
    assert by_channel["webhook"].ok  # the alert does not need the Patient ID
    assert hl7_listener.received.empty() and fhir_receiver.resources("DiagnosticReport") == []


def test_nothing_configured_sends_nothing(positive: ResultNotice) -> None:
    empty = NotificationSettings()
    assert not empty.configured
    with Notifier(empty) as notifier:
        assert notifier.notify(positive) == []


# a job that brings no result ------------------------------------------------------------------


def test_no_result_skips_a_stat_only_webhook_and_goes_to_every_channel_otherwise(
    unavailable: ResultNotice,
) -> None:
    """Routine for a routine study, so a webhook that takes STAT notices only does not get it."""
    stat_only = settings(2575, "http://127.0.0.1:9/fhir", "http://127.0.0.1:9/alerts")
    every_result = settings(
        2575, "http://127.0.0.1:9/fhir", "http://127.0.0.1:9/alerts", only_stat=False
    )
    with Notifier(stat_only) as notifier:
        assert notifier.channels(unavailable) == ["hl7", "fhir"]
    with Notifier(every_result) as notifier:
        assert notifier.channels(unavailable) == ["hl7", "fhir", "webhook"]


def test_no_result_reaches_the_ris_and_the_fhir_server(
    hl7_listener: Hl7Listener,
    fhir_receiver: FhirReceiver,
    webhook_receiver: WebhookReceiver,
    unavailable: ResultNotice,
    positive: ResultNotice,
) -> None:
    configured = settings(hl7_listener.port, fhir_receiver.base_url, webhook_receiver.url)
    with Notifier(configured) as notifier:
        outcomes = notifier.notify(unavailable)
    assert [(o.channel, o.ok, o.stat) for o in outcomes] == [
        ("hl7", True, False),
        ("fhir", True, False),
    ], [o.detail for o in outcomes]
    # an MSH-10 of its own, never dropped as the repeat of the job's result notice
    assert outcomes[0].message_id != message_control_id(positive)
    assert outcomes[0].message_id == message_control_id(unavailable)
    assert outcomes[1].message_id == "urn:aifi:exchange-job|job-0001-report"

    hl7 = hl7_listener.received.get(timeout=5)
    assert hl7_listener.errors.empty()
    obr = hl7.message.oru_r01_patient_result.oru_r01_order_observation.obr
    assert (obr.obr_5.to_er7(), obr.obr_25.to_er7()) == ("R", "X")
    (report,) = fhir_receiver.resources("DiagnosticReport")
    assert report["status"] == "cancelled"
    assert report["conclusion"] == f"No AI result: {REASON}"
    assert webhook_receiver.received.empty()


def test_no_result_goes_to_a_webhook_for_every_result(
    webhook_receiver: WebhookReceiver, unavailable: ResultNotice
) -> None:
    configured = settings(webhook_url=webhook_receiver.url, only_stat=False)
    with Notifier(configured) as notifier:
        (outcome,) = notifier.notify(unavailable)
    assert (outcome.channel, outcome.ok, outcome.stat) == ("webhook", True, False)
    assert outcome.message_id == delivery_id(unavailable)
    payload = webhook_receiver.received.get(timeout=5).payload
    assert (payload["status"], payload["reason"]) == ("unavailable", REASON)


def test_no_result_for_a_study_routed_stat_pages_first(
    hl7_listener: Hl7Listener, fhir_receiver: FhirReceiver, webhook_receiver: WebhookReceiver
) -> None:
    """Whoever waits for an acute-triage alert hears at once that none will come: STAT, so
    the pager webhook that takes STAT notices only gets it, first, and the ORU is priority S."""
    acute = make_unavailable(stat_study=True)
    configured = settings(hl7_listener.port, fhir_receiver.base_url, webhook_receiver.url)
    with Notifier(configured) as notifier:
        assert notifier.channels(acute) == ["hl7", "webhook", "fhir"]
        outcomes = notifier.notify(acute)
    assert [(o.channel, o.ok, o.stat) for o in outcomes] == [
        ("hl7", True, True),
        ("webhook", True, True),
        ("fhir", True, True),
    ], [o.detail for o in outcomes]
    obr = hl7_listener.received.get(timeout=5).message.oru_r01_patient_result
    obr = obr.oru_r01_order_observation.obr
    assert (obr.obr_5.to_er7(), obr.obr_25.to_er7()) == ("S", "X")
    alert = webhook_receiver.received.get(timeout=5).payload
    assert (alert["event"], alert["priority"], alert["status"]) == (
        "aifi.result.unavailable",
        "stat",
        "unavailable",
    )


def test_no_result_cancels_a_report_the_job_already_has(
    fhir_receiver: FhirReceiver, positive: ResultNotice, unavailable: ResultNotice
) -> None:
    """A result's report got through, then its results could not be filed: the notice that
    there is no result replaces it (a conditional update), not skipped as already there."""
    configured = settings(fhir_url=fhir_receiver.base_url)
    with Notifier(configured) as notifier:
        [made] = notifier.notify(positive)
        [cancelled] = notifier.notify(unavailable)
        [again] = notifier.notify(unavailable)  # a resend changes nothing
    assert made.ok and cancelled.ok and again.ok, (made.detail, cancelled.detail, again.detail)
    (report,) = fhir_receiver.resources("DiagnosticReport")
    assert report["status"] == "cancelled"
    assert report["conclusion"] == f"No AI result: {REASON}"
    assert "result" not in report


def test_a_delay_goes_everywhere_stat_first_and_its_result_replaces_it(
    hl7_listener: Hl7Listener,
    fhir_receiver: FhirReceiver,
    webhook_receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A STAT study's result late: every channel, the STAT ones (HL7, the pager) started
    first, each under an id of its own; the log says what it is. The result that follows
    takes the report's place."""
    late = make_delayed()
    configured = settings(hl7_listener.port, fhir_receiver.base_url, webhook_receiver.url)
    with Notifier(configured) as notifier, caplog.at_level(logging.INFO, "aifi.gateway.notify"):
        assert notifier.channels(late) == ["hl7", "webhook", "fhir"]
        outcomes = notifier.notify(late)
        follows = notifier.notify(make_notice(make_summary(), after_delay=True))
    assert [(o.channel, o.ok, o.stat) for o in outcomes] == [
        ("hl7", True, True),
        ("webhook", True, True),
        ("fhir", True, True),
    ], [o.detail for o in outcomes]
    assert all(o.ok for o in follows), [o.detail for o in follows]
    hl7, webhook = outcomes[0].message_id, outcomes[1].message_id
    assert (hl7, webhook) == (message_control_id(late), delivery_id(late))
    assert hl7 != follows[0].message_id and webhook != follows[1].message_id
    said = [r.getMessage() for r in caplog.records if "notice for job job-0001" in r.getMessage()]
    assert {line.split(" notice")[0] for line in said} == {
        "STAT delayed hl7",
        "STAT delayed webhook",
        "STAT delayed fhir",
        "STAT hl7",
        "STAT webhook",
        "STAT fhir",
    }

    obr = hl7_listener.received.get(timeout=5).message.oru_r01_patient_result
    obr = obr.oru_r01_order_observation.obr
    assert (obr.obr_5.to_er7(), obr.obr_25.to_er7()) == ("S", "I")
    alert = webhook_receiver.received.get(timeout=5).payload
    assert (alert["event"], alert["status"], alert["reason"]) == (
        "aifi.result.delayed",
        "delayed",
        WHY,
    )
    (report,) = fhir_receiver.resources("DiagnosticReport")
    assert report["status"] == "preliminary"


def test_what_follows_a_delay_goes_where_the_delay_went() -> None:
    """Under `only_stat`, the pager hears of a STAT study's delay, so it hears of the result
    that ends it too, whatever its triage; a routine result without a delay before it does
    not reach it."""
    configured = settings(2575, "http://127.0.0.1:9/fhir", "http://127.0.0.1:9/alerts")
    negative = make_summary(TriageFlag.NEGATIVE)
    with Notifier(configured) as notifier:
        assert "webhook" in notifier.channels(make_delayed())
        assert "webhook" in notifier.channels(make_notice(negative, after_delay=True))
        assert "webhook" in notifier.channels(make_unavailable(after_delay=True))
        assert "webhook" not in notifier.channels(make_notice(negative))


def test_kept_open_the_notices_share_one_connection_closed_with_the_notifier(
    raw_peer: RawPeer,
) -> None:
    """`hl7.keep_open` from the configuration: the gateway's notices, STAT and routine, go over
    one connection to the interface engine, which the gateway closes as it stops."""
    receiver = StandingReceiver()
    port = raw_peer(receiver)
    configured = NotificationSettings.model_validate(
        {"hl7": {"host": "127.0.0.1", "port": port, "keep_open": True, **FAST}}
    )
    sent = [make_notice(make_summary(TriageFlag.POSITIVE)), make_unavailable(job="job-0002")]
    with Notifier(configured) as notifier:
        for notice in sent:
            [outcome] = notifier.notify(notice)
            assert outcome.ok, outcome.detail
        assert not receiver.sender_closed.is_set()
    assert receiver.connections == [[message_control_id(notice) for notice in sent]]
    assert receiver.sender_closed.wait(timeout=30)


@pytest.mark.parametrize(
    ("flag", "urgent"),
    [(TriageFlag.POSITIVE, None), (TriageFlag.NEGATIVE, True)],
    ids=["an-alert", "a-study-run-stat"],
)
def test_kept_open_a_stat_notice_goes_before_a_routine_ones_next_attempt(
    raw_peer: RawPeer, flag: TriageFlag, urgent: bool | None
) -> None:
    """The STAT lane's notice, waiting while a routine notice's attempt has the connection,
    goes before that notice's next attempt: the notifier tells the connection which is STAT,
    an alert by itself, or any notice of a study run STAT as the gateway's STAT lane says."""
    routine = make_notice(make_summary(TriageFlag.NEGATIVE), job="job-0001")
    stat = make_notice(make_summary(flag), job="job-0002")
    assert stat.goes_stat is (urgent is None) and not routine.goes_stat
    turns = WatchedTurns()
    receiver = HangsUpOn(message_control_id(routine), turns)
    configured = NotificationSettings.model_validate(
        {"hl7": {"host": "127.0.0.1", "port": raw_peer(receiver), "keep_open": True,
                 **FAST, "retry_backoff_seconds": 0.0}}
    )  # fmt: skip
    with Notifier(configured) as notifier:
        notifier._hl7_connection._turns = turns  # type: ignore[union-attr]
        with ThreadPoolExecutor(max_workers=1) as routine_lane:
            routine_outcome = routine_lane.submit(notifier.notify, routine)
            assert receiver.in_flight.wait(timeout=30)
            [stat_outcome] = notifier.notify(stat, urgent=urgent)
            [routine_failed] = routine_outcome.result(timeout=60)
    assert stat_outcome.ok, stat_outcome.detail
    assert not routine_failed.ok and not receiver.nobody_waited
    assert receiver.order == [message_control_id(n) for n in (routine, stat, routine)]


def test_kept_open_a_send_the_stop_cut_short_says_nothing_of_the_receiver(
    raw_peer: RawPeer,
) -> None:
    """A notice whose send the gateway's stop cut short (the standing connection closed) is
    not counted among its tries, and the receiver is not taken for down: it is tried again
    after the restart as if nothing had happened."""
    receiver = StandingReceiver()
    configured = NotificationSettings.model_validate(
        {"hl7": {"host": "127.0.0.1", "port": raw_peer(receiver), "keep_open": True, **FAST}}
    )
    with Notifier(configured) as notifier:
        notifier._hl7_connection.close()  # type: ignore[union-attr]  # as the stop does
        [outcome] = notifier.notify(make_notice(make_summary(TriageFlag.NEGATIVE)))
        assert (outcome.ok, outcome.retryable, outcome.counted) == (False, True, False)
        assert outcome.detail.endswith(
            "not sent: the standing connection was closed as the gateway stopped"
        )
        assert notifier.outages.holding_off("hl7") is None
    assert receiver.connections == []


def test_what_left_the_gateway_is_told_apart_from_what_never_did(
    hl7_listener: Hl7Listener, closed_port: int
) -> None:
    """Only what may have reached a receiver is disclosed (`sent`): not a notice that cannot
    be encoded (no patient ID for PID-3), nor one whose every connection was refused."""
    attributes = {k: v for k, v in ORIGINAL_ATTRIBUTES.items() if k != "PatientID"}
    nameless = make_notice(make_summary(TriageFlag.NEGATIVE), attributes=attributes)
    with Notifier(settings(hl7_listener.port)) as notifier:
        [unencodable] = notifier.notify(nameless)
        [taken] = notifier.notify(make_notice(make_summary(TriageFlag.NEGATIVE)))
    with Notifier(settings(closed_port)) as notifier:
        [refused] = notifier.notify(make_notice(make_summary(TriageFlag.NEGATIVE)))
    assert "PID-3" in unencodable.detail and not unencodable.retryable
    assert (unencodable.ok, unencodable.tried, unencodable.sent) == (False, True, False)
    assert (taken.ok, taken.sent) == (True, True)
    assert (refused.ok, refused.tried, refused.sent, refused.prepared) == (False, True, False, True)
    assert len(messages_taken(hl7_listener)) == 1


@pytest.mark.parametrize(
    "left", [None, "", "0ld-t0ken\nt0ken\n"], ids=["missing", "empty", "two lines"]
)
def test_a_notice_whose_key_or_token_file_a_rotation_left_never_leaves(
    tmp_path: Path, webhook_receiver: WebhookReceiver, positive: ResultNotice, left: str | None
) -> None:
    """A rotation half done: the pager's signing key file and the FHIR server's token file are
    gone, empty, or hold the old line and the new. Nothing is sent (no alert signed with
    both, no report without its token or with two), so nothing is disclosed (`sent` False),
    no try is spent, the receivers are not judged (both were down: they stay so, not seen
    back), and the notice is tried again: once the files are right it goes."""
    key, token = tmp_path / "pager.key", tmp_path / "fhir.token"
    if left is not None:
        key.write_text(left)
        token.write_text(left)
    with FhirReceiver(bearer_token="t0ken") as fhir:
        configured = NotificationSettings(
            webhook=WebhookEndpoint(url=webhook_receiver.url, secret_file=key, **FAST),
            fhir=FhirEndpoint(base_url=fhir.base_url, bearer_token_file=token, **FAST),
        )
        with Notifier(configured) as notifier:
            for channel in ("webhook", "fhir"):
                notifier.outages.failed(channel, "HTTP 503", unreached=False)
            missing = notifier.notify(positive)  # a STAT alert: tried though both are down
            assert set(notifier.outages.down()) == {"webhook", "fhir"}
            assert fhir.resources("DiagnosticReport") == [] and webhook_receiver.received.empty()
            key.write_text(WEBHOOK_KEY.decode())
            token.write_text("t0ken")
            back = notifier.notify(positive)
            assert notifier.outages.down() == {}
        assert len(fhir.resources("DiagnosticReport")) == 1
    assert [(o.channel, o.ok, o.retryable, o.sent, o.counted, o.prepared) for o in missing] == [
        ("webhook", False, True, False, False, False),
        ("fhir", False, True, False, False, False),
    ]
    assert [": not sent: " in o.detail for o in missing] == [True, True]
    assert str(key) in missing[0].detail and str(token) in missing[1].detail
    assert all(o.ok and o.sent and o.prepared for o in back), [o.detail for o in back]
    assert webhook_receiver.received.get(timeout=5).payload["event"] == "aifi.triage.positive"
    assert webhook_receiver.received.empty()


def test_the_fhir_servers_cas_are_read_once_at_start(
    tmp_path: Path, positive: ResultNotice
) -> None:
    """The notifier's connection to the FHIR server trusts the CAs it read as the gateway
    started: a CA file gone since (moved aside while it is replaced) holds no report up."""
    cas = tmp_path / "cas.pem"
    trustme.CA().cert_pem.write_to_path(str(cas))
    with FhirReceiver() as fhir:
        endpoint = FhirEndpoint(base_url=fhir.base_url, verify_tls=cas, **FAST)
        with Notifier(NotificationSettings(fhir=endpoint)) as notifier:
            cas.unlink()
            [outcome] = notifier.notify(positive)
        assert len(fhir.resources("DiagnosticReport")) == 1
    assert outcome.ok, outcome.detail
