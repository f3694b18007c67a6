"""Results reach the radiologist: HL7 v2 ORU^R01 over MLLP, a FHIR R4 DiagnosticReport, and a
signed webhook alert for triage-positive (STAT) results.

The gateway builds a :class:`ResultNotice` once a job's results are re-identified and calls
:meth:`Notifier.notify`; each configured channel reports a :class:`NoticeOutcome`. When a job
will bring no result (failed, expired, cancelled, not filed), the same channels carry a notice
that says so (``ResultNotice.unavailable``, the reason), so that the radiologist does not wait
for it. See docs/notifications.md.
"""

from aifi.gateway.notify.errors import (
    DeliveryFailed,
    Hl7Rejected,
    HttpRejected,
    NotificationError,
    NotPrepared,
)
from aifi.gateway.notify.fhir import (
    FhirBuildError,
    FhirReceipt,
    build_diagnostic_report,
    build_transaction,
    post_fhir,
)
from aifi.gateway.notify.mllp import Ack, FrameDecoder, frame, parse_ack, send_mllp
from aifi.gateway.notify.notice import OriginalStudy, ResultNotice, build_notice
from aifi.gateway.notify.notifier import NoticeOutcome, Notifier
from aifi.gateway.notify.oru import (
    OruBuildError,
    build_oru_r01,
    encode_oru_r01,
    message_control_id,
)
from aifi.gateway.notify.settings import (
    FhirEndpoint,
    Hl7Endpoint,
    NotificationSettings,
    WebhookEndpoint,
)
from aifi.gateway.notify.webhook import send_webhook, sign, verify_signature, webhook_payload

__all__ = [
    "Ack",
    "DeliveryFailed",
    "FhirBuildError",
    "FhirEndpoint",
    "FhirReceipt",
    "FrameDecoder",
    "Hl7Endpoint",
    "Hl7Rejected",
    "HttpRejected",
    "NoticeOutcome",
    "NotificationError",
    "NotPrepared",
    "NotificationSettings",
    "Notifier",
    "OriginalStudy",
    "OruBuildError",
    "ResultNotice",
    "WebhookEndpoint",
    "build_diagnostic_report",
    "build_notice",
    "build_oru_r01",
    "build_transaction",
    "encode_oru_r01",
    "frame",
    "message_control_id",
    "parse_ack",
    "post_fhir",
    "send_mllp",
    "send_webhook",
    "sign",
    "verify_signature",
    "webhook_payload",
]
