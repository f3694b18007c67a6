"""Where the gateway sends result notices: the `notifications:` block of the gateway config.

Every channel is optional and nothing configured means nothing is sent, so a hospital that only
wants results in the PACS changes nothing. Secrets (bearer token, webhook key) are read from
files so that the YAML itself can be shared with the integration team.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: HL7 v2 HD namespace IDs and facility names: printable, no HL7 delimiters.
HD_NAMESPACE = r"^[^|^~\\&\r\n]{1,20}$"
#: A bearer token as RFC 6750 has it in the Authorization header (b64token).
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hl7Endpoint(_Settings):
    """An HL7 v2 receiver (RIS, reporting system, interface engine) reached over MLLP/TCP."""

    host: str
    port: int = Field(ge=1, le=65535)
    sending_application: str = Field(default="AIFI", pattern=HD_NAMESPACE)
    #: Defaults to the gateway's hospital id.
    sending_facility: str | None = Field(default=None, pattern=HD_NAMESPACE)
    receiving_application: str = Field(default="RIS", pattern=HD_NAMESPACE)
    receiving_facility: str | None = Field(default=None, pattern=HD_NAMESPACE)
    #: MSH-11: P production, T training, D debugging (a test interface often wants T).
    processing_id: str = Field(default="P", pattern=r"^[PTD]$")
    #: Seconds to connect (to each of a host name's addresses in turn), and then as long
    #: to have the acknowledgement: per phase, as for FHIR and the webhook.
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    #: Further attempts after a connection failure or a missing acknowledgement.
    retries: int = Field(default=3, ge=0, le=20)
    #: Wait before the first retry; doubled for each further one.
    retry_backoff_seconds: float = Field(default=0.5, ge=0, le=60)
    #: Hold one connection open between messages (interface engines that expect a standing
    #: connection) instead of one per message; one message is in flight on it at a time.
    keep_open: bool = False


class FhirEndpoint(_Settings):
    """A FHIR R4 server that accepts a transaction Bundle at its base URL."""

    base_url: str = Field(pattern=r"^https?://")
    #: A file holding an OAuth bearer token (sent as `Authorization: Bearer ...`).
    bearer_token_file: Path | None = None
    #: Identifier system of the hospital's patient numbers (DICOM Patient ID), e.g. an OID URN;
    #: when unset, an Issuer of Patient ID that is an OID gives ``urn:oid:<issuer>``.
    patient_identifier_system: str | None = None
    #: Identifier system under which AIFI's job ids make reports and observations unique.
    identifier_system: str = "urn:aifi:exchange-job"
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    retries: int = Field(default=2, ge=0, le=20)
    retry_backoff_seconds: float = Field(default=0.5, ge=0, le=60)
    #: Verify the server's TLS certificate (True), skip it (False), or use this CA bundle file.
    verify_tls: bool | Path = True

    def bearer_token(self) -> str | None:
        """The token, read at each use so that a rotated token file takes effect at once.

        Raises
        ------
        OSError
            The file cannot be read.
        ValueError
            It holds no one token (RFC 6750): empty, or two lines, as a rotation half done
            leaves it. Sent so, the report would be refused for want of a token (and given up)
            or could not be put in a header at all."""
        if self.bearer_token_file is None:
            return None
        token = self.bearer_token_file.read_text().strip()
        if not BEARER_TOKEN.fullmatch(token):
            said = "is empty" if not token else "holds no one bearer token (RFC 6750)"
            raise ValueError(f"{self.bearer_token_file} {said}")
        return token


class WebhookEndpoint(_Settings):
    """An HTTP receiver for alerts (a paging system, a chat bridge, the worklist's API)."""

    url: str = Field(pattern=r"^https?://")
    #: Key of the HMAC-SHA256 signature header; give the key itself or a file that holds it.
    secret: str | None = Field(default=None, repr=False)
    secret_file: Path | None = None
    #: Only triage-positive (STAT) results raise a webhook; False sends one per result.
    only_stat: bool = True
    #: Add the hospital's Patient ID to the body; off by default (minimum necessary: the
    #: accession number and study UID are enough to open the study).
    include_patient_id: bool = False
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    retries: int = Field(default=3, ge=0, le=20)
    retry_backoff_seconds: float = Field(default=0.25, ge=0, le=60)

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookEndpoint:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("webhook: set exactly one of 'secret' and 'secret_file'")
        return self

    def signing_key(self) -> bytes:
        """The HMAC key, read at each use so that a rotated key file takes effect at once.

        Raises
        ------
        OSError
            The key file cannot be read.
        ValueError
            The key is empty, or a file holds more than one line, as a rotation half done
            leaves it: signed so, the alert would be refused (and given up)."""
        text = self.secret if self.secret is not None else self._read_secret_file()
        where = self.secret_file or "webhook: the signing secret"
        if not text:
            raise ValueError(f"{where} is empty")
        if "\n" in text or "\r" in text:
            raise ValueError(f"{where} holds more than one line")
        return text.encode()

    def _read_secret_file(self) -> str:
        assert self.secret_file is not None
        return self.secret_file.read_text().strip()


class NotificationSettings(_Settings):
    """The channels a result notice goes to; each is optional."""

    hl7: Hl7Endpoint | None = None
    fhir: FhirEndpoint | None = None
    webhook: WebhookEndpoint | None = None
    #: Also announce "no AI result" for a job that ended without one (failed, expired,
    #: cancelled, or its results could not be filed), so nobody waits for it or takes the
    #: silence for a negative finding. The hospital may turn it off if its RIS cannot take an
    #: ORU with a canceled order (OBR-25 X) or its FHIR server a cancelled report.
    announce_unavailable: bool = True
    #: Announce that the result of a study run STAT is late, once, when `delayed_after_seconds`
    #: have passed since the gateway made its job and no result or news of none has come:
    #: acute triage does not wait on a product that has not answered, whatever the cause. The
    #: result follows under the same identifiers (an ORU with OBR-25 I, then P; a FHIR report
    #: registered, then preliminary). Off for a RIS that cannot take an order in process.
    announce_delayed: bool = True
    #: How long a STAT job may take before its delay is announced; unset: the product's own
    #: turnaround in the catalogue (`turnaround_sla_seconds`, what its vendor promises).
    delayed_after_seconds: float | None = Field(default=None, gt=0, le=86_400)
    #: Once a receiver has failed to take a notice (after its retries), notices do not try
    #: it for this long, twice as long after each further failure, up to ten times this: a
    #: receiver that is down then costs one timeout per pause, not one per notice. A STAT
    #: notice whose receivers are all held off tries them all. 0 tries every notice.
    hold_off_seconds: float = Field(default=30.0, ge=0, le=3600)

    @property
    def configured(self) -> bool:
        return any(channel is not None for channel in (self.hl7, self.fhir, self.webhook))

    def resolve_paths(self, base: Path) -> NotificationSettings:
        """A copy whose relative file paths are taken from `base` (the config file's folder)."""

        def absolute(path: Path | None) -> Path | None:
            return path if path is None or path.is_absolute() else (base / path).resolve()

        fhir = self.fhir
        if fhir is not None:
            verify = fhir.verify_tls
            fhir = fhir.model_copy(
                update={
                    "bearer_token_file": absolute(fhir.bearer_token_file),
                    "verify_tls": absolute(verify) if isinstance(verify, Path) else verify,
                }
            )
        webhook = self.webhook
        if webhook is not None:
            webhook = webhook.model_copy(update={"secret_file": absolute(webhook.secret_file)})
        return self.model_copy(update={"fhir": fhir, "webhook": webhook})
