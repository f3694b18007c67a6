"""What crosses the exchange's HTTP boundary: request and response bodies (pydantic)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from aifi.exchange.clock import as_utc
from aifi.results.delivery import NotDelivered

#: A time as the API gives it: in UTC, with its offset, whichever database it was read from
#: (SQLite hands times back naive, PostgreSQL in its server's time zone).
UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]


class OrganisationKind(StrEnum):
    hospital = "hospital"
    vendor = "vendor"
    operator = "operator"


class JobState(StrEnum):
    """IHE AIW-I task states, plus `expired` for a job whose lease ran out too often."""

    requested = "requested"
    accepted = "accepted"
    in_progress = "in-progress"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"


ENDED_STATES = frozenset(
    {JobState.completed, JobState.failed, JobState.cancelled, JobState.expired}
)


class Priority(StrEnum):
    """STAT jobs (acute triage) are claimed before routine ones."""

    stat = "stat"
    routine = "routine"


PRIORITY_RANK = {Priority.stat: 0, Priority.routine: 1}

SLUG = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class OrganisationIn(BaseModel):
    id: str = Field(pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    kind: OrganisationKind


class OrganisationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    kind: OrganisationKind
    created_at: UtcDateTime


class OrganisationCreated(BaseModel):
    organisation: OrganisationOut
    api_key: str = Field(description="Shown once; the exchange keeps only its hash.")


class RotatedKey(BaseModel):
    """A new API key, and its id as the key listing shows it: the id tells the new key from
    the old ones in `GET /organisations/{id}/keys`, so that the old can be revoked."""

    api_key: str = Field(description="Shown once; the exchange keeps only its hash.")
    id: int = Field(description="The new key's `id` in `GET /organisations/{id}/keys`.")


class ApiKeyOut(BaseModel):
    """One of an organisation's API keys, as its owner and the operator see it: never the key
    itself (the exchange keeps only its hash), so that a listing gives nothing to steal."""

    model_config = ConfigDict(from_attributes=True)
    id: int = Field(description="What `DELETE /organisations/{id}/keys/{key_id}` names.")
    organisation_id: str
    label: str = Field(description="`initial`, `rotated` or `configured` (AIFI_OPERATOR_KEY).")
    created_at: UtcDateTime
    revoked_at: UtcDateTime | None = Field(description="Null while the key is live.")


class StudyCriteria(BaseModel):
    """Which studies a product accepts; an empty list accepts any value."""

    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)


class ProductOutput(BaseModel):
    kind: str = Field(description="e.g. sr-tid1500, seg, summary-json")
    description: str = ""


class ProductManifest(BaseModel):
    """A product's declaration of what it accepts, what data it needs and what it gives."""

    id: str = Field(pattern=SLUG)
    vendor: str = Field(pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=64)
    clinical_area: str = Field(
        min_length=1, description="quantification | diagnostic-support | triage | …"
    )
    description: str = ""
    intended_use: str = ""
    accepts: StudyCriteria = Field(default_factory=StudyCriteria)
    data_needed: list[str] = Field(
        default_factory=list,
        description="Annex E options the product needs, e.g. retain-patient-characteristics",
    )
    outputs: list[ProductOutput] = Field(default_factory=list)
    priority: Priority = Priority.routine
    turnaround_sla_seconds: float = 600.0
    for_clinical_use: bool = False


class ProductOut(BaseModel):
    id: str
    vendor: str
    name: str
    version: str
    clinical_area: str
    status: str
    manifest: ProductManifest


class SubscriptionIn(BaseModel):
    product_id: str


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    hospital_id: str
    product_id: str
    active: bool
    created_at: UtcDateTime
    routes: list[dict[str, Any]] | None = None


class RoutesIn(BaseModel):
    """A gateway's routing rules for one product (modalities, body parts, patterns, …)."""

    routes: list[dict[str, Any]] = Field(max_length=100)


class JobIn(BaseModel):
    product_id: str
    study_uid: str = Field(pattern=r"^[0-9.]{1,64}$")
    patient_pseudonym: str = Field(default="", max_length=64)
    priority: Priority | None = None
    idempotency_key: str = Field(min_length=1, max_length=128)
    instances: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="How many instances the hospital will upload. When given, the job opens to "
        "vendors as soon as the last one is stored (no POST /jobs/{id}/ready needed), and an "
        "instance beyond the count is refused.",
    )


class JobReady(BaseModel):
    """The gateway says all inputs are uploaded; the count guards against a lost upload."""

    instances: int = Field(ge=1)


class ResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    media_type: str
    kind: str
    sop_class_uid: str | None
    sop_instance_uid: str | None
    air_conformant: bool
    notes: list[str]
    size: int
    sha256: str
    purged_at: UtcDateTime | None = Field(
        default=None,
        description="when retention purged it; it can no longer be downloaded",
    )


class AcknowledgeIn(BaseModel):
    """Ended jobs the hospital has brought home, acknowledged together."""

    job_ids: list[str] = Field(min_length=1, max_length=1000)
    not_delivered: dict[str, NotDelivered] | None = Field(
        default=None,
        description="completed jobs among job_ids whose results did not reach the PACS, and "
        "why; given (even empty), the other completed jobs count as delivered, and left out, "
        "nothing is known of any (a gateway too old to say)",
    )

    @model_validator(mode="after")
    def _only_jobs_acknowledged(self) -> AcknowledgeIn:
        stray = sorted(set(self.not_delivered or {}) - set(self.job_ids))
        if stray:
            raise ValueError(f"not_delivered names jobs not in job_ids: {', '.join(stray)}")
        return self


class JobOut(BaseModel):
    id: str
    hospital_id: str
    product_id: str
    vendor_id: str
    study_uid: str
    patient_pseudonym: str
    priority: Priority
    state: JobState
    inputs_complete: bool
    instances: int | None = Field(description="the instance count declared at creation, if any")
    input_count: int
    input_bytes: int
    attempts: int
    lease_expires_at: UtcDateTime | None
    reason: str | None
    summary: dict[str, Any] | None
    created_at: UtcDateTime
    ready_at: UtcDateTime | None
    claimed_at: UtcDateTime | None
    ended_at: UtcDateTime | None
    acknowledged_at: UtcDateTime | None
    delivery: str | None = Field(
        default=None,
        description="what became of a completed job's results at the hospital, as its "
        "gateway said when it acknowledged the job: delivered, unfileable, unmapped, purged, "
        "let_go or lost (aifi.results.delivery; a later release may add others); null before "
        "then, or when the gateway did not say",
    )
    inputs_purged_at: UtcDateTime | None = Field(
        default=None,
        description="when retention purged the job's inputs (blobs and their list); "
        "input_count and input_bytes still say what was sent",
    )
    inputs_lost_at: UtcDateTime | None = Field(
        default=None,
        description="when the exchange found one of the job's inputs missing from its blob "
        "store (lost, not purged) while the job was open and not ended: the job cannot be "
        "run, and if it ends without a result that is the exchange's doing, not the "
        "product's; its gateway sends the study again, once",
    )
    product_version: str | None = Field(
        default=None,
        description="the product version that ran the job, as evaluation counts it per "
        "version: the catalogue's when the job was created, then the one its result summary "
        "names, or the one the worker named when it failed the job (not for a job whose input "
        "the exchange lost: no version ran it); null for a job created before the exchange "
        "kept versions (or, during a rolling upgrade, by a replica of the previous release) "
        "until the exchange reads its summary's version, and for good if neither a summary "
        "nor a failing worker names a version a job can keep",
    )
    results: list[ResultOut] | None = Field(
        default=None,
        description="a completed job's results, when a hospital lists jobs with "
        "with_results=true (saves a GET /jobs/{id}/results per job)",
    )


class InputOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    size: int
    sha256: str


class ClaimIn(BaseModel):
    product_ids: list[str] = Field(default_factory=list)
    lease_seconds: float | None = Field(default=None, gt=0, le=3600)
    wait_seconds: float = Field(default=0, ge=0)
    start: bool = Field(
        default=False,
        description="the worker starts on the job at once: it goes straight to in-progress, "
        "without a first heartbeat",
    )
    claim_key: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{16,64}$",
        description="a random key the worker makes for one claim and sends again on its "
        "retries; the job's lease token is this key",
    )
    resume: bool = Field(
        default=False,
        description="this request repeats a claim whose answer was lost: the job held under "
        "`claim_key` is answered again, if there is one, before any other is claimed",
    )


class Claim(BaseModel):
    job: JobOut
    lease_token: str
    inputs: list[InputOut] = Field(
        default_factory=list,
        description="the job's input instances, as GET /jobs/{id}/inputs would list them",
    )


class LeaseIn(BaseModel):
    lease_token: str


class HeartbeatIn(LeaseIn):
    lease_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="renew the lease for this long (the exchange's default if left out): a "
        "worker that claimed a long lease keeps it at every heartbeat",
    )


class HeartbeatOut(BaseModel):
    lease_expires_at: UtcDateTime
    state: JobState
    lease_seconds: float = Field(
        description="the lease this heartbeat granted: beat again well within it"
    )


class CompleteIn(LeaseIn):
    summary: dict[str, Any] | None = None


class FailIn(LeaseIn):
    reason: str = Field(min_length=1, max_length=2000)
    product_version: str | None = Field(
        default=None,
        description="the product version that failed the job, as the catalogue names it (1 "
        "to 64 printable characters, no space at either end unless the catalogue published it "
        "so): evaluation counts the failure "
        "under it; left out, under the version the job was created for",
    )


class ReleaseIn(LeaseIn):
    """The lease, and why the worker hands the job back (kept in the access log)."""

    reason: str = Field(min_length=1, max_length=2000)


class CancelIn(BaseModel):
    reason: str = Field(default="cancelled by the hospital", max_length=2000)
    unopened_only: bool = Field(
        default=False,
        description="cancel only a job still taking inputs (409 once it opened to vendors): "
        "a gateway withdrawing what an earlier attempt left",
    )


class MeteringRow(BaseModel):
    hospital: str
    hospital_name: str
    product: str
    month: str
    jobs_completed: int
    studies_completed: int = Field(
        description="the distinct studies of the completed jobs: a study sent again (its "
        "results lost by the exchange's store, its job started over, more images) counts "
        "once in a month"
    )
    jobs_failed: int
    input_bytes: int


class Metering(BaseModel):
    rows: list[MeteringRow]


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: UtcDateTime
    organisation_id: str
    role: str
    action: str
    object_type: str
    object_id: str
    patient_pseudonym: str
    outcome: str
    detail: str
    prev_hash: str
    entry_hash: str
    #: The entry's place in the hash chain: page on it (`after_seq`).
    chain_seq: int | None = None


class AuditFound(AuditOut):
    """An entry a search found: its place in the chain, and where it is kept ("database", or
    the archive file's key in the object store)."""

    chain_seq: int
    kept_in: str

    @classmethod
    def of(cls, kept: str, entry: Any) -> AuditFound:
        fields = {name: getattr(entry, name) for name in AuditOut.model_fields}
        return cls(**fields, kept_in=kept)


class AuditSearchPage(BaseModel):
    entries: list[AuditFound]
    #: Pass as `after` for the next page; None when this page is the last.
    next_after: int | None
    #: The page read for its time and stopped before it was full: it may hold fewer entries
    #: than asked for, even none; the search goes on after `next_after`.
    stopped: bool = False
