"""The clinical pillar's service on the exchange's database: admission of products, users,
radiologists' feedback, evaluation in practice and the national priority list of clinical areas.

The rules are this package's pure logic; this service keeps their state in the exchange's
tables (:mod:`aifi.exchange.governance_models`), walls tenants, and writes every read and
change to the exchange's audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from aifi.exchange.audit import Actor, AuditLog
from aifi.exchange.catalogue import Catalogue, hold_product, published_versions, subscription_of
from aifi.exchange.clock import utcnow
from aifi.exchange.db import Database
from aifi.exchange.errors import Conflict, Forbidden, Invalid, NotFound
from aifi.exchange.governance_models import (
    AdmissionEvent,
    AreaScore,
    EligibleCount,
    JobFeedback,
    ProductDossier,
    User,
)
from aifi.exchange.jobs import visible_to
from aifi.exchange.models import Job, Organisation, Product
from aifi.exchange.months import Months
from aifi.exchange.schemas import JobState, OrganisationKind, ProductManifest
from aifi.exchange.settings import ExchangeSettings
from aifi.governance import (
    AdmissionAction,
    AdmissionError,
    AdmissionState,
    DossierIncomplete,
    ExchangeProcessing,
    GatewayProcessing,
    PriorityList,
    ProductEvaluation,
    RecordOfProcessing,
    RoutingRule,
    aggregates,
    dossier_gaps,
    drift,
    rank_areas,
    record_of_processing,
    require_complete,
    transition,
)
from aifi.governance import AreaScore as AreaScoreIn
from aifi.governance.dossier import ConformanceAttachment, Dossier, Gap
from aifi.governance.drift import DriftChart, Granularity
from aifi.governance.evaluation import evaluations, with_releases

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}

#: Patient numbers (BSN, hospital IDs) and dates have no place in feedback that leaves the
#: hospital; sizes in mm and volumes in mL stay well under six digits.
IDENTIFIER_LIKE = re.compile(r"\d{6,}|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b")


def hash_password(password: str) -> str:
    """scrypt with a random salt, stored with its parameters (hashlib, no extra dependency)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), dklen=32, n=int(n), r=int(r), p=int(p)
    )
    return hmac.compare_digest(candidate.hex(), digest)


class ClinicalService:
    def __init__(
        self, db: Database, catalogue: Catalogue, audit: AuditLog, settings: ExchangeSettings
    ) -> None:
        self._db = db
        self._catalogue = catalogue
        self._audit = audit
        self._settings = settings

    # users ---------------------------------------------------------------------------------

    def create_user(
        self,
        actor: Actor | None,
        organisation_id: str,
        username: str,
        display_name: str,
        role: str,
        password: str,
    ) -> User:
        """A login for a person; the operator creates them, or an organisation its own."""
        own = actor is None or actor.organisation_id == organisation_id
        if actor is not None and actor.role != OrganisationKind.operator and not own:
            raise Forbidden("an organisation creates users for itself only")
        if len(password) < 10:
            raise Invalid("rule 'password-length': a password needs at least 10 characters")
        with self._db.session() as session:
            if session.get(Organisation, organisation_id) is None:
                raise NotFound(f"no organisation {organisation_id!r}")
            if session.scalars(select(User.id).where(User.username == username)).first():
                raise Conflict(f"user {username!r} already exists")
            user = User(
                organisation_id=organisation_id,
                username=username,
                display_name=display_name,
                role=role,
                password_hash=hash_password(password),
                created_at=utcnow(),
            )
            session.add(user)
        if actor is not None:
            self._audit.record(actor, "create", "user", f"{organisation_id}/{username}")
        return user

    def login(self, username: str, password: str) -> tuple[User, Actor] | None:
        """The user and the organisation they act for, or None (and an audited refusal)."""
        with self._db.session() as session:
            row = session.execute(
                select(User, Organisation.kind)
                .join(Organisation, Organisation.id == User.organisation_id)
                .where(User.username == username)
            ).first()
        if row is None or not check_password(password, row[0].password_hash):
            self._audit.record(
                Actor("anonymous", "none"), "login", "user", username, outcome="refused"
            )
            return None
        user, kind = row
        actor = Actor(organisation_id=user.organisation_id, role=kind)
        self._audit.record(actor, "login", "user", username, detail=user.role)
        return user, actor

    # admission -----------------------------------------------------------------------------

    def _product(self, product_id: str) -> Product:
        return self._catalogue.get_product(product_id)

    def _may_see_dossier(self, actor: Actor, product: Product) -> None:
        if actor.role == OrganisationKind.vendor and actor.organisation_id != product.vendor_id:
            raise NotFound(f"no product {product.id!r}")

    def dossier(self, actor: Actor, product_id: str) -> tuple[Dossier, list[Gap], str]:
        """The product's dossier (a draft from its manifest if none yet), its gaps, its state."""
        product = self._product(product_id)
        self._may_see_dossier(actor, product)
        manifest = ProductManifest.model_validate(product.manifest)
        with self._db.session() as session:
            stored = session.get(ProductDossier, product_id)
        dossier = (
            Dossier.model_validate(stored.dossier) if stored else Dossier.from_manifest(manifest)
        )
        self._audit.record(actor, "read", "dossier", product_id)
        return dossier, dossier_gaps(dossier, manifest), product.status

    def save_dossier(self, actor: Actor, product_id: str, dossier: Dossier) -> list[Gap]:
        product = self._product(product_id)
        if not (
            actor.role == OrganisationKind.operator
            or (
                actor.role == OrganisationKind.vendor and actor.organisation_id == product.vendor_id
            )
        ):
            raise NotFound(f"no product {product_id!r}")
        if dossier.product_id != product_id:
            raise Invalid(f"rule 'dossier-product': the dossier is for {dossier.product_id!r}")
        with self._db.session() as session:
            stored = session.get(ProductDossier, product_id)
            if stored is None:
                stored = ProductDossier(product_id=product_id)
                session.add(stored)
            stored.version = product.version
            stored.dossier = dossier.model_dump(mode="json")
            stored.updated_at = utcnow()
        self._audit.record(
            actor, "update", "dossier", product_id, detail=f"version {product.version}"
        )
        manifest = ProductManifest.model_validate(product.manifest)
        return dossier_gaps(dossier, manifest)

    def attach_conformance(
        self,
        actor: Actor,
        product_id: str,
        report: dict[str, Any],
        html: str,
        attachment: ConformanceAttachment,
    ) -> None:
        """Keep the kit's report and record it in the dossier (admission needs a passed one)."""
        product = self._product(product_id)
        self._may_see_dossier(actor, product)
        if actor.role == OrganisationKind.hospital:
            raise Forbidden("hospitals do not attach conformance reports")
        with self._db.session() as session:
            stored = session.get(ProductDossier, product_id)
            if stored is None:
                manifest = ProductManifest.model_validate(product.manifest)
                stored = ProductDossier(
                    product_id=product_id,
                    version=product.version,
                    dossier=Dossier.from_manifest(manifest).model_dump(mode="json"),
                )
                session.add(stored)
            stored.conformance_report = report
            stored.conformance_html = html
            dossier = Dossier.model_validate(stored.dossier)
            stored.dossier = dossier.model_copy(update={"conformance": attachment}).model_dump(
                mode="json"
            )
            stored.updated_at = utcnow()
        self._audit.record(actor, "create", "conformance-report", product_id)

    def conformance_html(self, actor: Actor, product_id: str) -> str:
        product = self._product(product_id)
        self._may_see_dossier(actor, product)
        with self._db.session() as session:
            stored = session.get(ProductDossier, product_id)
        if stored is None or not stored.conformance_html:
            raise NotFound(f"product {product_id!r} has no conformance report")
        self._audit.record(actor, "read", "conformance-report", product_id)
        return stored.conformance_html

    def admission(self, actor: Actor, product_id: str, action: str, note: str = "") -> str:
        """Move the product to its next admission state; returns the new state."""
        product = self._product(product_id)
        self._may_see_dossier(actor, product)
        try:
            new = transition(product.status, action, actor_role=actor.role, product_id=product_id)
        except AdmissionError as exc:
            refusal = (Forbidden if exc.rule == "admission-role" else Conflict)(str(exc))
            self._audit.refused(actor, "update", "admission", product_id, refusal)
            raise refusal from exc
        except ValueError as exc:
            raise Invalid(str(exc)) from exc
        if AdmissionAction(action) in (AdmissionAction.submit, AdmissionAction.admit):
            dossier, _gaps, _state = self.dossier(actor, product_id)
            try:
                require_complete(dossier, ProductManifest.model_validate(product.manifest))
            except DossierIncomplete as exc:
                raise Invalid(str(exc)) from exc
        try:
            self._set_state(product, new, action, actor, note)
        except Conflict as exc:
            self._audit.refused(actor, "update", "admission", product_id, exc)
            raise
        return new.value

    def _set_state(
        self, product: Product, new: AdmissionState, action: str, actor: Actor, note: str
    ) -> None:
        """Move `product`, as it was read and checked, to `new`; a Conflict if a publication
        or another admission change came in between (the row is held from this check to the
        commit, so none can come in after it): an admission is of the version whose dossier
        was checked."""
        with self._db.session() as session:
            hold_product(session, product.id)
            row = session.get(Product, product.id)
            assert row is not None  # products are never deleted
            if (row.version, row.status) != (product.version, product.status):
                raise Conflict(
                    f"product {product.id!r} changed meanwhile (version {row.version}, "
                    f"{row.status}; this {action} was of version {product.version}, "
                    f"{product.status}): look at it again"
                )
            previous = row.status
            row.status = new.value
            row.updated_at = utcnow()
            session.add(
                AdmissionEvent(
                    product_id=product.id,
                    version=product.version,
                    from_state=previous,
                    to_state=new.value,
                    action=str(action),
                    organisation_id=actor.organisation_id,
                    role=actor.role,
                    note=note,
                    at=utcnow(),
                )
            )
        self._audit.record(
            actor, "update", "admission", product.id, detail=f"{previous} -> {new.value} ({action})"
        )

    def admission_history(self, actor: Actor, product_id: str) -> list[AdmissionEvent]:
        product = self._product(product_id)
        self._may_see_dossier(actor, product)
        with self._db.session() as session:
            events = list(
                session.scalars(
                    select(AdmissionEvent)
                    .where(AdmissionEvent.product_id == product_id)
                    .order_by(AdmissionEvent.id)
                )
            )
        self._audit.record(actor, "read", "admission", product_id)
        return events

    def record(
        self, actor: Actor, product_id: str, hospital_id: str | None = None
    ) -> RecordOfProcessing:
        """The record of processing for a hospital's DPIA (the hospital's own, or any for the
        operator). It lists the hospital's routing rules (its modalities' AE titles, what it
        sends): the hospital's business and its supervisor's, not a vendor's."""
        if actor.role not in (OrganisationKind.hospital, OrganisationKind.operator):
            raise Forbidden("a record of processing is read by its hospital and the operator")
        product = self._product(product_id)
        hospital = hospital_id or actor.organisation_id
        if actor.role == OrganisationKind.hospital and hospital != actor.organisation_id:
            raise NotFound(f"no hospital {hospital!r}")
        dossier, _gaps, _state = self.dossier(actor, product_id)
        with self._db.session() as session:
            org = session.get(Organisation, hospital)
        name = org.name if org else hospital
        settings = self._settings
        return record_of_processing(
            ProductManifest.model_validate(product.manifest),
            dossier,
            GatewayProcessing(
                hospital_id=hospital,
                hospital_name=name,
                routes=[
                    RoutingRule.model_validate(r)
                    for r in self._catalogue.routes_of(hospital, product_id)
                ],
            ),
            ExchangeProcessing(
                operator=settings.operator_name,
                location=settings.operator_location,
                input_retention_seconds=getattr(settings, "retain_inputs_seconds", None),
                result_retention_seconds=getattr(settings, "retain_results_seconds", None),
                undelivered_retention_seconds=getattr(settings, "retain_undelivered_seconds", None),
                unfinished_expiry_seconds=getattr(settings, "expire_unfinished_seconds", None),
            ),
        )

    # feedback and evaluation ---------------------------------------------------------------

    def give_feedback(
        self,
        actor: Actor,
        job_id: str,
        agreement: str,
        radiologist_positive: bool | None,
        correction: str,
        user: str,
    ) -> JobFeedback:
        """A radiologist's verdict on a completed result; it stays pseudonymised (job id only)."""
        if actor.role != OrganisationKind.hospital:
            raise Forbidden("feedback comes from the hospital that read the result")
        if IDENTIFIER_LIKE.search(correction):
            raise Invalid(
                "rule 'no-identifiers-in-feedback': the correction holds a number or date that "
                "may identify a patient (a run of six or more digits, or a date); describe the "
                "finding instead — feedback leaves the hospital"
            )
        with self._db.session() as session:
            job = session.scalars(visible_to(select(Job).where(Job.id == job_id), actor)).first()
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            if job.state != JobState.completed:
                raise Conflict(f"job {job_id} is {job.state}; feedback is for completed results")
            row = session.scalars(select(JobFeedback).where(JobFeedback.job_id == job_id)).first()
            if row is None:
                row = JobFeedback(job_id=job_id, hospital_id=job.hospital_id)
                session.add(row)
            row.agreement = agreement
            row.radiologist_positive = radiologist_positive
            row.correction = correction[:2000]
            row.user = user
            row.created_at = utcnow()
        self._audit.record(
            actor,
            "create",
            "feedback",
            job_id,
            patient_pseudonym=job.patient_pseudonym,
            detail=agreement,
        )
        return row

    def feedback_for(self, actor: Actor, job_id: str) -> JobFeedback | None:
        """The radiologist's feedback on the job, if any; a read on record when there is."""
        with self._db.session() as session:
            job = session.execute(
                visible_to(select(Job.id, Job.patient_pseudonym).where(Job.id == job_id), actor)
            ).first()
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            feedback = session.scalars(
                select(JobFeedback).where(JobFeedback.job_id == job_id)
            ).first()
        if feedback is not None:
            self._audit.record(
                actor, "read", "feedback", job_id, patient_pseudonym=job.patient_pseudonym
            )
        return feedback

    def record_eligible(self, actor: Actor, product_id: str, month: str, studies: int) -> None:
        """The hospital's count of studies `product_id` could have read in `month`: the
        denominator of its uptake, and of the national uptake the vendor is judged on. Only
        for a product the hospital subscribes to, or did: a gateway whose routes name one it
        never subscribed to (its jobs refused) would otherwise lower that figure for nothing,
        and any hospital could move another vendor's."""
        if actor.role != OrganisationKind.hospital:
            raise Forbidden("eligible studies are counted by the hospital's gateway")
        with self._db.session() as session:
            if subscription_of(session, actor.organisation_id, product_id) is None:
                raise Forbidden(
                    f"hospital {actor.organisation_id!r} has never subscribed to "
                    f"{product_id!r}: eligible studies are counted for its products only"
                )
            row = session.scalars(
                select(EligibleCount).where(
                    EligibleCount.hospital_id == actor.organisation_id,
                    EligibleCount.product_id == product_id,
                    EligibleCount.month == month,
                )
            ).first()
            if row is None:
                row = EligibleCount(
                    hospital_id=actor.organisation_id, product_id=product_id, month=month
                )
                session.add(row)
            row.studies = studies
        self._audit.record(actor, "update", "eligible-count", f"{product_id}/{month}")

    def _visible_rows(self, actor: Actor, rows: Iterable[Any]) -> list[Any]:
        """Operators see all; a hospital its own rows and national ones; a vendor its products."""
        if actor.role == OrganisationKind.operator:
            return list(rows)
        if actor.role == OrganisationKind.hospital:
            from aifi.governance import NATIONAL

            return [r for r in rows if r.hospital_id in (actor.organisation_id, NATIONAL)]
        with self._db.session() as session:
            own = set(
                session.scalars(
                    select(Product.id).where(Product.vendor_id == actor.organisation_id)
                )
            )
        return [r for r in rows if r.product_id in own]

    def evaluation(
        self, actor: Actor, months: Months = Months(), *, by_version: bool = False
    ) -> list[ProductEvaluation]:
        """National figures are counted over every hospital, so the database counts them all
        (:mod:`aifi.governance.aggregates`); tenants' own rows are picked out afterwards.
        `months`: the jobs requested in them, and the eligible counts of those months;
        `by_version`: a row per product version instead of one over all, each saying whether
        and since when the catalogue has a record of its publication."""
        with self._db.session() as session:
            tallies = aggregates.tallies(session, months, by_version=by_version)
            eligible = aggregates.eligible(session, months)
            published = published_versions(session) if by_version else {}
        rows = self._visible_rows(actor, evaluations(tallies, eligible))
        if by_version:
            rows = with_releases(rows, published)
        per = ", per version" if by_version else ""
        self._audit.record(actor, "search", "evaluation", f"{len(rows)} rows, {months}{per}")
        return rows

    def drift(
        self,
        actor: Actor,
        granularity: Granularity | str = Granularity.month,
        months: Months = Months(),
    ) -> list[DriftChart]:
        """`months`: the periods of the jobs that ended in them."""
        with self._db.session() as session:
            counts = aggregates.period_counts(session, granularity, months)
        charts = self._visible_rows(actor, drift.charts(drift.with_national(counts)))
        self._audit.record(actor, "search", "drift", f"{len(charts)} charts, {months}")
        return charts

    # clinical areas ------------------------------------------------------------------------

    def score_area(self, actor: Actor, score: AreaScoreIn) -> None:
        if actor.role != OrganisationKind.hospital:
            raise Forbidden("clinical areas are scored by hospitals")
        if score.hospital_id != actor.organisation_id:
            raise Forbidden("a hospital scores for itself only")
        with self._db.session() as session:
            row = session.scalars(
                select(AreaScore).where(
                    AreaScore.hospital_id == score.hospital_id, AreaScore.area == score.area
                )
            ).first()
            if row is None:
                row = AreaScore(hospital_id=score.hospital_id, area=score.area)
                session.add(row)
            row.volume, row.benefit = score.volume, score.benefit
            row.urgency, row.readiness = score.urgency, score.readiness
            row.updated_at = utcnow()
        self._audit.record(actor, "update", "area-score", score.area)

    def priorities(self, actor: Actor) -> PriorityList:
        with self._db.session() as session:
            rows = list(session.scalars(select(AreaScore)))
        scores = [
            AreaScoreIn(
                hospital_id=r.hospital_id,
                area=r.area,
                volume=r.volume,
                benefit=r.benefit,
                urgency=r.urgency,
                readiness=r.readiness,
            )
            for r in rows
        ]
        self._audit.record(actor, "read", "priorities", f"{len(scores)} scores")
        return rank_areas(scores)
