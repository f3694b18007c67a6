"""Tables of the clinical pillar: users who log in, admission dossiers and their history,
radiologists' feedback, eligible-study counts, and hospitals' scores of clinical areas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from aifi.exchange.models import Base


class User(Base):
    """A person who logs in to the web pages on behalf of one organisation."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organisation_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"), index=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    #: radiologist | it | operator | vendor-engineer — shown in the audit log.
    role: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProductDossier(Base):
    """A product's admission dossier and the conformance report attached to it."""

    __tablename__ = "product_dossiers"

    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    dossier: Mapped[dict[str, Any]] = mapped_column(JSON)
    conformance_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    conformance_html: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AdmissionEvent(Base):
    """One move of a product between admission states, and who made it."""

    __tablename__ = "admission_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    organisation_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobFeedback(Base):
    """A radiologist's verdict on one result: agree, disagree or partly, and a correction."""

    __tablename__ = "job_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    hospital_id: Mapped[str] = mapped_column(String(64), index=True)
    agreement: Mapped[str] = mapped_column(String(16))
    #: The radiologist's own call on the finding (for sensitivity and PPV); None if not given.
    radiologist_positive: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    correction: Mapped[str] = mapped_column(Text, default="")
    user: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EligibleCount(Base):
    """Studies a hospital's gateway saw that a product could have read, per month (uptake)."""

    __tablename__ = "eligible_counts"
    __table_args__ = (UniqueConstraint("hospital_id", "product_id", "month"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hospital_id: Mapped[str] = mapped_column(String(64))
    product_id: Mapped[str] = mapped_column(String(64))
    month: Mapped[str] = mapped_column(String(7))
    studies: Mapped[int] = mapped_column(Integer)


class AreaScore(Base):
    """A hospital's scores (1–5) of a candidate clinical application area."""

    __tablename__ = "area_scores"
    __table_args__ = (UniqueConstraint("hospital_id", "area"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hospital_id: Mapped[str] = mapped_column(String(64))
    area: Mapped[str] = mapped_column(String(100))
    volume: Mapped[int] = mapped_column(Integer)
    benefit: Mapped[int] = mapped_column(Integer)
    urgency: Mapped[int] = mapped_column(Integer)
    readiness: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
