"""The exchange's tables (SQLAlchemy 2). Wire schemas live in `schemas`, behaviour in services."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Organisation(Base):
    """A hospital, an AI vendor or the national operator: the unit that tenants are walled by."""

    __tablename__ = "organisations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # hospital | vendor | operator
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """An organisation's API key, stored only as its SHA-256 (keys are 256-bit random)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organisation_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Product(Base):
    """An AI product and its manifest (what it accepts, what data it needs, what it gives)."""

    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vendor_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    clinical_area: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="admitted")
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProductRelease(Base):
    """A version of a product as its vendor published it in the catalogue, and when first.

    Result summaries and failing workers name the version that ran a job; evaluation per
    version tells a version the catalogue named from one only they name (a vendor's typo that
    splits one version over two rows, or a version never published for review)."""

    __tablename__ = "product_releases"

    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Subscription(Base):
    """A hospital's subscription to a product: without one, the hospital cannot send it jobs."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("hospital_id", "product_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hospital_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The hospital gateway's routing rules for this product, as it last reported them: what
    #: the record of processing says is sent.
    routes: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class Job(Base):
    """One study for one product, moving through the IHE AIW-I task states."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("hospital_id", "idempotency_key"),
        # A vendor's queue in claim order (aifi.exchange.fair_share), and its head.
        Index(
            "ix_jobs_queue",
            "vendor_id",
            "state",
            "inputs_complete",
            "priority_rank",
            "queue_place",
            "created_at",
        ),
        # A hospital's last job waiting, for the place after it: waiting jobs only, so small.
        Index(
            "ix_jobs_waiting",
            "hospital_id",
            "vendor_id",
            "inputs_complete",
            "priority_rank",
            "queue_place",
            postgresql_where=text("state = 'requested'"),
            sqlite_where=text("state = 'requested'"),
        ),
        Index("ix_jobs_hospital_state", "hospital_id", "state", "acknowledged_at"),
        Index("ix_jobs_inputs_sweep", "inputs_swept_at", "ended_at"),
        Index("ix_jobs_results_sweep", "results_swept_at", "acknowledged_at"),
        # The metrics' scrape: jobs ended lately, and outcomes not yet fetched, without reading
        # every job ever.
        Index("ix_jobs_ended", "ended_at"),
        # Evaluation of the months asked for: jobs by when they were requested.
        Index("ix_jobs_created", "created_at"),
        # Jobs with a summary whose flag is not read yet: none, but for a rolling upgrade's.
        Index(
            "ix_jobs_triage_unread",
            "id",
            postgresql_where=text("triage_flag IS NULL AND summary IS NOT NULL"),
            sqlite_where=text("triage_flag IS NULL AND summary IS NOT NULL"),
        ),
        # Jobs with a summary whose version is not read yet: none, but after an upgrade's.
        Index(
            "ix_jobs_version_unread",
            "id",
            postgresql_where=text("summary IS NOT NULL AND version_read IS NULL"),
            sqlite_where=text("summary IS NOT NULL AND version_read IS NULL"),
        ),
        # A hospital's and a vendor's latest jobs (their live lists, their pages through the
        # jobs in creation order), read in order from where the page starts, not sorted out
        # of every job the organisation ever had.
        Index("ix_jobs_hospital_created", "hospital_id", "created_at", "id"),
        Index("ix_jobs_vendor_created", "vendor_id", "created_at", "id"),
        # The lease sweep (every second, on every replica): only held jobs have a lease, so
        # it reads those, not every job ever claimed. (Jobs not ended are found by
        # ix_jobs_ended, as `ended_at IS NULL`.)
        Index(
            "ix_jobs_lease",
            "lease_expires_at",
            postgresql_where=text("lease_expires_at IS NOT NULL"),
            sqlite_where=text("lease_expires_at IS NOT NULL"),
        ),
        Index(
            "ix_jobs_unacknowledged",
            "state",
            postgresql_where=text("acknowledged_at IS NULL"),
            sqlite_where=text("acknowledged_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hospital_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    vendor_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    study_uid: Mapped[str] = mapped_column(String(64))
    patient_pseudonym: Mapped[str] = mapped_column(String(64), default="")
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    priority_rank: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="requested")
    #: Its place in its vendor's queue, set when it opens: hospitals take turns
    #: (aifi.exchange.fair_share).
    queue_place: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    inputs_complete: Mapped[bool] = mapped_column(Boolean, default=False)
    input_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Set when the hospital said at creation how many instances it sends: the job opens to
    #: vendors by itself when the last one is stored, without a separate "ready" request.
    declared_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    input_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: The triage flag of its summary: positive, negative or none; null until the job has a
    #: summary (see aifi.exchange.triage: evaluation and drift count it without parsing).
    triage_flag: Mapped[str | None] = mapped_column(String(8), nullable=True)
    #: The product version that ran it, for evaluation per version: the catalogue's when the
    #: job was created, then the one its result summary names (the version that produced
    #: the result; see aifi.exchange.versions), or the one its worker named failing it (unless
    #: its input was lost: no version ran it). Null for a job created before it was kept (or
    #: by a replica of the previous release) until the sweep reads its summary's version, and
    #: for good if neither a summary nor a failing worker names a version a job can keep.
    product_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: True once the version its summary names was read: at completion, or by the sweep for
    #: summaries stored before the upgrade or by a replica of the previous release (which
    #: never sets it); null until then, and for jobs without a summary.
    version_read: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: What became of its results at the hospital (aifi.results.delivery.Delivery), as the
    #: gateway said when it acknowledged the job: `delivered` for a completed job that an
    #: acknowledgement saying what became of results does not name; null when nothing was
    #: said (an older gateway, the one-job endpoint), or the job did not complete.
    delivery: Mapped[str | None] = mapped_column(String(16), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: When retention emptied the job's input (result) folder: the job is not visited again.
    inputs_swept_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    results_swept_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When a read found one of its inputs missing from the blob store (not purged, not
    #: replaced: lost, `aifi.exchange.errors.BlobMissing`). The job cannot be run; when it
    #: ends without a result, that is the exchange's doing, not the product's.
    inputs_lost_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobInput(Base):
    """One pseudonymised instance of a job's study, held in the blob store."""

    __tablename__ = "job_inputs"
    __table_args__ = (UniqueConstraint("job_id", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(300))
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobResult(Base):
    """One result object a vendor returned for a job (DICOM or the JSON summary)."""

    __tablename__ = "job_results"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    air_conformant: Mapped[bool] = mapped_column(Boolean, default=False)
    notes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """One access, in an append-only log where each entry hashes the one before it.

    An entry is written with the change it records (or right after a read) and linked into
    the chain moments later: `chain_seq` is its place in the chain, None until it is linked.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_chain_seq", "chain_seq", unique=True),
        # A privacy officer's question, who touched this patient's data, reads one patient's
        # entries in chain order instead of the whole table.
        Index("ix_audit_log_patient", "patient_pseudonym", "chain_seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    organisation_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(200))
    patient_pseudonym: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    chain_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditArchive(Base):
    """A run of the access log moved out of the database into one file of the blob store.

    It names the run (chain positions `first_seq`…`last_seq`, the hash the first entry links
    to and the last entry's own), so the chain still verifies across it: the first entry left
    in the table links to the newest archive's `last_hash`. The file's SHA-256 lets the run
    be checked against what was written (see :mod:`aifi.exchange.audit_archive`).
    """

    __tablename__ = "audit_archives"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    first_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    first_prev_hash: Mapped[str] = mapped_column(String(64))
    last_hash: Mapped[str] = mapped_column(String(64))
    entries: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    blob_key: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
