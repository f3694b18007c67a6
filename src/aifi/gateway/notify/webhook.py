"""Webhook alerts: a small signed JSON POST that a pager, a chat bridge or a worklist can act on.

The body says what happened and where to look (study UID, accession number, product, triage,
findings in brief) and nothing more: no pixel data, no patient name or birth date, and the
Patient ID only when the hospital asks for it. It is signed with HMAC-SHA256 over
``<timestamp>.<body>`` with a shared key, so the receiver can check who sent it and reject an
old one replayed (:func:`verify_signature`). ``X-AIFI-Delivery`` is the same for every resend
of one job's alert, so the receiver can drop a repeat.

``status`` says whether there is a result (``available``) or there will be none
(``unavailable``, with the gateway's ``reason``, event ``aifi.result.unavailable``). Such a
notice is STAT only for a study run STAT (or after a delay told); otherwise, under the
default ``only_stat: true``,
the :class:`~aifi.gateway.notify.Notifier` sends it by HL7 and FHIR only. A STAT study's
result late is ``delayed`` (the ``reason`` why, event ``aifi.result.delayed``, always STAT):
whoever waits on the alert hears that it has not come, and the result or its absence follows
under the same ``exchange_job_id`` and a delivery id of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from aifi.gateway.notify.errors import DeliveryFailed, HttpRejected, NotPrepared
from aifi.gateway.notify.notice import ResultNotice
from aifi.gateway.notify.reach import http_client, never_connected
from aifi.gateway.notify.settings import WebhookEndpoint

STAT_EVENT = "aifi.triage.positive"
RESULT_EVENT = "aifi.result.available"
UNAVAILABLE_EVENT = "aifi.result.unavailable"
DELAYED_EVENT = "aifi.result.delayed"
SIGNATURE_HEADER = "X-AIFI-Signature"
TIMESTAMP_HEADER = "X-AIFI-Timestamp"
EVENT_HEADER = "X-AIFI-Event"
DELIVERY_HEADER = "X-AIFI-Delivery"
#: Statuses worth another attempt.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_DELIVERY_NAMESPACE = uuid.UUID("9a3f1b56-43e1-4c59-8b8e-3f0d2a7c5e21")


@dataclass(frozen=True)
class WebhookReceipt:
    status: int
    delivery_id: str


def delivery_id(notice: ResultNotice) -> str:
    """The same for every resend of one job's alert; another for each kind of notice of the
    job, so that none is dropped as the repeat of one the receiver took before."""
    kind = "webhook" if notice.available else f"webhook-{notice.kind}"
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{kind}/{notice.exchange_job_id}"))


def webhook_payload(notice: ResultNotice, endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The JSON body of the alert for `notice` (see the module docstring for what is left out).

    For a notice that there is no result: `status` ``unavailable`` with the `reason`, no
    findings, triage ``none`` and no `label` (there is no result for it to qualify); for one
    that it is late the same, `status` ``delayed``.
    """
    summary = notice.summary
    study: dict[str, Any] = {
        "study_instance_uid": notice.study.study_instance_uid,
        "accession_number": notice.study.accession_number or None,
    }
    if endpoint.include_patient_id:
        study["patient_id"] = notice.study.patient_id or None
    findings = [
        {
            "finding": finding.finding,
            "code": finding.finding_code,
            "site": finding.site,
            "measurements": {
                name: {"value": measured.value, "unit": measured.unit}
                for name, measured in finding.measurements.items()
            },
            "evaluations": dict(finding.evaluations),
        }
        for finding in (summary.findings if summary else [])
    ]
    if notice.available:
        event, status = (STAT_EVENT if notice.stat else RESULT_EVENT), "available"
    elif notice.delayed is not None:
        event, status = DELAYED_EVENT, "delayed"
    else:
        event, status = UNAVAILABLE_EVENT, "unavailable"
    return {
        "event": event,
        "status": status,
        "reason": notice.delayed if notice.delayed is not None else notice.unavailable,
        "priority": "stat" if notice.goes_stat else "routine",
        "delivery_id": delivery_id(notice),
        "hospital": notice.hospital,
        "exchange_job_id": notice.exchange_job_id,
        "product": {
            "id": notice.product_id,
            "name": notice.product_name,
            "version": notice.product_version,
        },
        "study": study,
        "triage": {
            "flag": summary.triage.flag.value if summary else "none",
            "priority": summary.triage.priority.value
            if summary and summary.triage.priority
            else None,
        },
        "findings": findings,
        "result_sop_instance_uids": list(notice.result_sop_instance_uids),
        "label": notice.label if notice.available else None,
        "completed_at": notice.completed_at.isoformat(),
    }


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC of ``<timestamp>.<body>``."""
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    key: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_seconds: float = 300.0,
    now: float | None = None,
) -> bool:
    """True when `signature` is ours for this body and the timestamp is recent enough.

    For receivers: compare in constant time, and refuse timestamps further than
    `tolerance_seconds` from now so that a captured alert cannot be replayed later.
    """
    try:
        sent = float(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(key, timestamp, body), signature)


def send_webhook(
    notice: ResultNotice, endpoint: WebhookEndpoint, client: httpx.Client | None = None
) -> WebhookReceipt:
    """POST the signed alert; retries while the receiver is unreachable or answers 5xx/429.

    Raises
    ------
    HttpRejected
        The receiver refused the alert (a 4xx: wrong key, wrong URL ...).
    DeliveryFailed
        It could not be delivered after every attempt.
    NotPrepared
        The signing key could not be read: nothing was sent.
    """
    payload = webhook_payload(notice, endpoint)
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    event = str(payload["event"])
    where = f"webhook {event} for job {notice.exchange_job_id} to {endpoint.url}"
    try:
        key = endpoint.signing_key()
    except (OSError, ValueError) as exc:
        raise NotPrepared("webhook", f"{where}: not sent: {exc}") from exc  # names the file
    own = client or http_client(endpoint.url)
    attempts = endpoint.retries + 1
    problem = "not sent"
    connected = False
    try:
        for attempt in range(attempts):
            if attempt:
                time.sleep(endpoint.retry_backoff_seconds * 2 ** (attempt - 1))
            timestamp = str(int(datetime.now(UTC).timestamp()))
            headers = {
                "Content-Type": "application/json",
                EVENT_HEADER: event,
                DELIVERY_HEADER: str(payload["delivery_id"]),
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(key, timestamp, body),
            }
            try:
                response = own.post(
                    endpoint.url, content=body, headers=headers, timeout=endpoint.timeout_seconds
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                connected = connected or not never_connected(exc)
                continue
            connected = True
            if response.status_code in RETRYABLE_STATUSES:
                problem = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise HttpRejected(
                    "webhook",
                    f"{where}: refused with HTTP {response.status_code}: {response.text[:200]}",
                    status=response.status_code,
                )
            return WebhookReceipt(response.status_code, str(payload["delivery_id"]))
    finally:
        if client is None:
            own.close()
    raise DeliveryFailed(
        "webhook",
        f"{where}: failed after {attempts} attempt(s): {problem}",
        unreached=not connected,
    )
