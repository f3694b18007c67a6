"""Webhook alerts: signed, minimal, and refused by a receiver that holds another key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from aifi.gateway.notify import (
    DeliveryFailed,
    HttpRejected,
    ResultNotice,
    WebhookEndpoint,
    send_webhook,
    sign,
    verify_signature,
    webhook_payload,
)
from aifi.gateway.notify.receivers import WebhookReceiver
from aifi.gateway.notify.webhook import (
    DELAYED_EVENT,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    STAT_EVENT,
    TIMESTAMP_HEADER,
    UNAVAILABLE_EVENT,
    delivery_id,
)

from .conftest import (
    ORIGINAL_ATTRIBUTES,
    ORIGINAL_STUDY_UID,
    REASON,
    WEBHOOK_KEY,
    WHY,
    make_delayed,
    make_notice,
    make_summary,
    make_unavailable,
)


def endpoint(url: str, **overrides: Any) -> WebhookEndpoint:
    settings: dict[str, Any] = {
        "url": url,
        "secret": WEBHOOK_KEY.decode(),
        "retries": 2,
        "retry_backoff_seconds": 0.01,
        "timeout_seconds": 30,  # the receivers here answer; a late answer is not sent twice
    }
    return WebhookEndpoint(**(settings | overrides))


def test_the_alert_arrives_signed_and_the_signature_verifies(
    webhook_receiver: WebhookReceiver, positive: ResultNotice
) -> None:
    receipt = send_webhook(positive, endpoint(webhook_receiver.url))
    assert receipt.status == 204
    got = webhook_receiver.received.get(timeout=5)
    timestamp = got.headers[TIMESTAMP_HEADER.lower()]
    signature = got.headers[SIGNATURE_HEADER.lower()]
    assert signature.startswith("sha256=")
    assert verify_signature(WEBHOOK_KEY, timestamp, got.body, signature)
    # any change to the body, the timestamp or the key breaks it
    assert not verify_signature(WEBHOOK_KEY, timestamp, got.body + b" ", signature)
    assert not verify_signature(WEBHOOK_KEY, str(int(timestamp) + 1), got.body, signature)
    assert not verify_signature(b"another key", timestamp, got.body, signature)
    assert got.headers["x-aifi-delivery"] == receipt.delivery_id


def test_an_old_alert_replayed_is_refused() -> None:
    body = b'{"event":"aifi.triage.positive"}'
    then = str(int(time.time()) - 3600)
    signature = sign(WEBHOOK_KEY, then, body)
    assert verify_signature(WEBHOOK_KEY, then, body, signature, now=float(then) + 10)
    assert not verify_signature(WEBHOOK_KEY, then, body, signature)


def test_the_body_is_the_stat_event_without_identity_or_pixels(
    webhook_receiver: WebhookReceiver, positive: ResultNotice
) -> None:
    send_webhook(positive, endpoint(webhook_receiver.url))
    payload = webhook_receiver.received.get(timeout=5).payload
    assert (payload["event"], payload["priority"]) == (STAT_EVENT, "stat")
    assert payload["triage"] == {"flag": "positive", "priority": "high"}
    assert payload["study"] == {
        "study_instance_uid": ORIGINAL_STUDY_UID,
        "accession_number": ORIGINAL_ATTRIBUTES["AccessionNumber"],
    }
    assert payload["findings"][0]["measurements"]["Volume"] == {"value": 12.5, "unit": "mL"}
    assert payload["label"] == "reference algorithm, not for clinical use"
    text = json.dumps(payload)
    for private in ("MRN-000123", "Jansen", "19620314"):
        assert private not in text
    assert "pixel" not in text.lower()


def test_the_patient_id_only_when_asked(positive: ResultNotice) -> None:
    asked = webhook_payload(positive, endpoint("http://x/alerts", include_patient_id=True))
    assert asked["study"]["patient_id"] == "MRN-000123"


def test_a_negative_result_is_a_routine_event(negative: ResultNotice) -> None:
    payload = webhook_payload(negative, endpoint("http://x/alerts"))
    assert (payload["event"], payload["priority"]) == ("aifi.result.available", "routine")


def test_a_receiver_with_another_key_refuses(positive: ResultNotice) -> None:
    with WebhookReceiver(b"the receiver's own key") as receiver:
        with pytest.raises(HttpRejected, match="HTTP 401") as caught:
            send_webhook(positive, endpoint(receiver.url))
        assert not caught.value.retryable
        assert receiver.refused.get(timeout=5) == "signature does not verify"
        assert receiver.received.empty()


def test_a_failing_receiver_is_retried_then_reported(
    webhook_receiver: WebhookReceiver, positive: ResultNotice
) -> None:
    webhook_receiver.fail_with = [503]
    assert send_webhook(positive, endpoint(webhook_receiver.url)).status == 204
    webhook_receiver.fail_with = [502, 502, 502]
    with pytest.raises(DeliveryFailed, match="after 3 attempt"):
        send_webhook(positive, endpoint(webhook_receiver.url))


def test_the_secret_can_come_from_a_file(
    tmp_path: Path, webhook_receiver: WebhookReceiver, positive: ResultNotice
) -> None:
    key_file = tmp_path / "webhook.key"
    key_file.write_text(WEBHOOK_KEY.decode() + "\n")
    target = endpoint(webhook_receiver.url, secret=None, secret_file=key_file)
    assert send_webhook(positive, target).status == 204


def test_exactly_one_secret_must_be_configured(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of 'secret' and 'secret_file'"):
        WebhookEndpoint(url="http://x/alerts")
    with pytest.raises(ValueError, match="exactly one"):
        WebhookEndpoint(url="http://x/alerts", secret="a", secret_file=tmp_path / "k")


# a job that brings no result ------------------------------------------------------------------


def test_a_result_says_it_is_available(positive: ResultNotice, negative: ResultNotice) -> None:
    for notice in (positive, negative):
        payload = webhook_payload(notice, endpoint("http://x/alerts"))
        assert (payload["status"], payload["reason"]) == ("available", None)
        assert payload["findings"] and payload["label"]


def test_no_result_says_unavailable_and_why(unavailable: ResultNotice) -> None:
    payload = webhook_payload(unavailable, endpoint("http://x/alerts"))
    assert (payload["status"], payload["reason"]) == ("unavailable", REASON)
    assert (payload["event"], payload["priority"]) == (UNAVAILABLE_EVENT, "routine")
    assert payload["triage"] == {"flag": "none", "priority": None}
    assert payload["findings"] == [] and payload["result_sop_instance_uids"] == []
    assert payload["label"] is None
    assert payload["study"] == {
        "study_instance_uid": ORIGINAL_STUDY_UID,
        "accession_number": ORIGINAL_ATTRIBUTES["AccessionNumber"],
    }
    assert payload["exchange_job_id"] == unavailable.exchange_job_id


def test_no_result_arrives_signed_under_its_own_event(
    webhook_receiver: WebhookReceiver, unavailable: ResultNotice, positive: ResultNotice
) -> None:
    receipt = send_webhook(unavailable, endpoint(webhook_receiver.url, only_stat=False))
    got = webhook_receiver.received.get(timeout=5)
    assert got.headers[EVENT_HEADER.lower()] == UNAVAILABLE_EVENT
    assert (got.payload["status"], got.payload["reason"]) == ("unavailable", REASON)
    # a delivery id of its own: not dropped as the repeat of the job's result alert
    assert got.headers["x-aifi-delivery"] == receipt.delivery_id
    assert receipt.delivery_id != webhook_payload(positive, endpoint("http://x"))["delivery_id"]
    assert (
        receipt.delivery_id
        == send_webhook(unavailable, endpoint(webhook_receiver.url, only_stat=False)).delivery_id
    )
    text = json.dumps(got.payload)
    for private in ("MRN-000123", "Jansen", "19620314"):
        assert private not in text


def test_the_delivery_ids_receivers_already_hold_are_kept(
    positive: ResultNotice, unavailable: ResultNotice
) -> None:
    """Receivers drop repeats by delivery id: a new kind of notice must not move the old ids."""
    assert delivery_id(positive) == "910ed8af-1a23-5ca3-91fd-857a82e0877a"
    assert delivery_id(unavailable) == "0ca3b234-4553-51f6-96ca-70a7f0efde2c"


# a STAT study's result late ------------------------------------------------------------------


def test_a_delay_says_delayed_and_why(delayed: ResultNotice) -> None:
    payload = webhook_payload(delayed, endpoint("http://x/alerts"))
    assert (payload["status"], payload["reason"]) == ("delayed", WHY)
    assert (payload["event"], payload["priority"]) == (DELAYED_EVENT, "stat")
    assert payload["triage"] == {"flag": "none", "priority": None}
    assert payload["findings"] == [] and payload["result_sop_instance_uids"] == []
    assert payload["label"] is None
    assert payload["study"] == {
        "study_instance_uid": ORIGINAL_STUDY_UID,
        "accession_number": ORIGINAL_ATTRIBUTES["AccessionNumber"],
    }
    assert payload["exchange_job_id"] == delayed.exchange_job_id


def test_a_delay_arrives_signed_under_its_own_event_and_delivery_id(
    webhook_receiver: WebhookReceiver,
    delayed: ResultNotice,
    positive: ResultNotice,
    unavailable: ResultNotice,
) -> None:
    receipt = send_webhook(delayed, endpoint(webhook_receiver.url))
    got = webhook_receiver.received.get(timeout=5)
    assert got.headers[EVENT_HEADER.lower()] == DELAYED_EVENT == "aifi.result.delayed"
    assert (got.payload["status"], got.payload["reason"]) == ("delayed", WHY)
    timestamp = got.headers[TIMESTAMP_HEADER.lower()]
    signature = got.headers[SIGNATURE_HEADER.lower()]
    assert verify_signature(WEBHOOK_KEY, timestamp, got.body, signature)
    # a delivery id of its own, the same for every resend: neither the delay nor what
    # follows it is dropped as the repeat of the other
    assert got.headers["x-aifi-delivery"] == receipt.delivery_id == delivery_id(delayed)
    assert receipt.delivery_id == delivery_id(make_delayed("another wording"))
    assert receipt.delivery_id != delivery_id(make_delayed(job="job-9999"))
    assert receipt.delivery_id not in {delivery_id(positive), delivery_id(unavailable)}
    text = json.dumps(got.payload)
    for private in ("MRN-000123", "Jansen", "19620314"):
        assert private not in text


def test_what_follows_a_delay_is_the_alert_it_would_have_been(positive: ResultNotice) -> None:
    """The result or no-result alert as ever, under the same job id as the delay's."""
    target = endpoint("http://x/alerts")
    for follows, plain in (
        (make_notice(make_summary(), after_delay=True), positive),
        (make_unavailable(stat_study=True, after_delay=True), make_unavailable(stat_study=True)),
    ):
        assert webhook_payload(follows, target) == webhook_payload(plain, target)
        assert webhook_payload(follows, target)["exchange_job_id"] == "job-0001"
