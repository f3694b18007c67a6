"""The job lifecycle: create, claim with a lease, heartbeat, complete, fail, cancel, expire.

Every transition is a compare-and-set on the job's row (`UPDATE … WHERE state = …`), so two
workers, two threads or two replicas can never both win the same job.
"""

from __future__ import annotations

import functools
import secrets
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Row,
    Select,
    Update,
    and_,
    bindparam,
    case,
    delete,
    func,
    inspect,
    literal,
    literal_column,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from aifi.exchange.audit import SYSTEM, Actor, AuditLog
from aifi.exchange.blobs import BlobStore, forget
from aifi.exchange.catalogue import (
    OPEN_PRODUCT_STATES,
    Catalogue,
    published_as,
    subscribed_product,
)
from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import Database, execute_core, insert_unless_taken
from aifi.exchange.errors import Conflict, Forbidden, Invalid, NotFound
from aifi.exchange.fair_share import ONE, OPENING_PLACE, REQUEUED_PLACE
from aifi.exchange.models import Job, JobInput, JobResult, Product
from aifi.exchange.notify import ChangeNotifier
from aifi.exchange.replica_changes import announce
from aifi.exchange.schemas import (
    ENDED_STATES,
    PRIORITY_RANK,
    ClaimIn,
    JobIn,
    JobOut,
    JobState,
    OrganisationKind,
    Priority,
)
from aifi.exchange.settings import ExchangeSettings
from aifi.exchange.triage import read_unread_flags, triage_flag
from aifi.exchange.validation import check_summary
from aifi.exchange.versions import read_unread_versions, summary_version
from aifi.product_versions import version_problem
from aifi.results.delivery import Delivery

Q = TypeVar("Q", bound=Select)  # type: ignore[type-arg]

HELD_STATES = (JobState.accepted.value, JobState.in_progress.value)

#: Why a job one of whose inputs the exchange's store lost (`Job.inputs_lost_at`) ends where
#: it would go back in the queue: run again it fails the same way, and ended, its hospital's
#: gateway sends the study again at once.
INPUTS_LOST_REASON = (
    "an input of its study is missing from the exchange's blob store (lost, not purged), so "
    "no product can run it; its hospital's gateway sends the study again"
)

#: Where a job that never ended stopped, as its reason tells the hospital and the operator.
_UNFINISHED: tuple[tuple[tuple[Any, ...], str], ...] = (
    (
        (Job.state == JobState.requested.value, Job.inputs_complete.is_(False)),
        "the hospital's upload of its inputs never completed",
    ),
    (
        (Job.state == JobState.requested.value, Job.inputs_complete.is_(True)),
        "no vendor claimed it",
    ),
    ((Job.state.in_(HELD_STATES),), "its vendor held it without finishing it"),
)


@dataclass(frozen=True)
class Acknowledged:
    """The jobs an acknowledgement named (`jobs`, as asked), and those it acknowledged now
    (`fresh`: not acknowledged before)."""

    jobs: list[Job]
    fresh: list[Job]


@dataclass(frozen=True)
class InputTurn:
    """A job's input counts as read at the start of an upload's turn at the job."""

    count: int
    size: int
    declared: int | None


def _transition(
    session: Session,
    where: tuple[Any, ...],
    values: dict[str, Any],
    params: dict[str, Any] | None = None,
) -> Job | None:
    """Compare-and-set one job and read it back in the same statement (`UPDATE … RETURNING`).

    None when the row no longer matched `where`: someone else changed it first. `params`
    fill the bound parameters `where` names.
    """
    statement = (
        update(Job)
        .where(*where)
        .values(**values)
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return session.scalars(statement, params or {}).first()


def parties(job: Job) -> tuple[str, str]:
    """The organisations a change to `job` concerns: its hospital and its vendor."""
    return (job.hospital_id, job.vendor_id)


def job_out(job: Job, actor: Actor) -> JobOut:
    """The job as `actor` sees it; its times are put in UTC by the schema (`UtcDateTime`).

    The summary is the product's findings, a result: the operator sees a job's metadata,
    never its results, as `GET /jobs/{id}/results/summary.json` answers it 403.
    """
    return JobOut(
        id=job.id,
        hospital_id=job.hospital_id,
        product_id=job.product_id,
        vendor_id=job.vendor_id,
        study_uid=job.study_uid,
        patient_pseudonym=job.patient_pseudonym,
        priority=Priority(job.priority),
        state=JobState(job.state),
        inputs_complete=job.inputs_complete,
        instances=job.declared_instances,
        input_count=job.input_count,
        input_bytes=job.input_bytes,
        attempts=job.attempts,
        lease_expires_at=job.lease_expires_at,
        reason=job.reason,
        summary=None if actor.role == OrganisationKind.operator else job.summary,
        created_at=job.created_at,
        ready_at=job.ready_at,
        claimed_at=job.claimed_at,
        ended_at=job.ended_at,
        acknowledged_at=job.acknowledged_at,
        delivery=job.delivery,
        inputs_purged_at=job.inputs_swept_at,
        inputs_lost_at=job.inputs_lost_at,
        product_version=job.product_version,
    )


def visible_to(query: Q, actor: Actor) -> Q:
    """Wall tenants: a hospital sees its own jobs, a vendor those for its products."""
    if actor.role == OrganisationKind.hospital:
        return query.where(Job.hospital_id == actor.organisation_id)
    if actor.role == OrganisationKind.vendor:
        return query.where(Job.vendor_id == actor.organisation_id)
    return query


def watched_by(actor: Actor) -> str | None:
    """Whose job changes wake the actor's long-polls, as `visible_to` walls them: a hospital's
    or a vendor's own organisation; None (anyone's) for the operator."""
    own_only = (OrganisationKind.hospital, OrganisationKind.vendor)
    return actor.organisation_id if actor.role in own_only else None


def walled(statement: Q) -> dict[str, Q]:
    """`statement`, which reads the job `job_id`, as each role may run it: a hospital's reads
    its own job only, a vendor's a job for its products (`organisation_id` is the caller's);
    under "" the unwalled statement, for the operator. Built once, at import: these are the
    busiest statements of all."""
    return {
        OrganisationKind.hospital.value: statement.where(
            Job.hospital_id == bindparam("organisation_id")
        ),
        OrganisationKind.vendor.value: statement.where(
            Job.vendor_id == bindparam("organisation_id")
        ),
        "": statement,
    }


_VISIBLE_JOB = walled(select(Job).where(Job.id == bindparam("job_id")))
#: The job's lease, if it still holds, its row kept until the transaction ends: on PostgreSQL
#: a row lock, which the lease sweep skips and a second upload to the job waits for.
_KEEP_LEASE = (
    select(Job.id)
    .where(
        Job.id == bindparam("job_id"),
        Job.lease_token == bindparam("token"),
        Job.state.in_(HELD_STATES),
        or_(Job.lease_expires_at.is_(None), Job.lease_expires_at >= bindparam("now")),
    )
    .with_for_update(key_share=True)
)
#: SQLite has no row locks, and reads before a transaction's first write take none: a write
#: that changes nothing takes its one write lock (and this process's writer turn) first.
_HOLD_WRITES = (
    update(Job)
    .where(Job.id == bindparam("job_id"))
    .values(updated_at=Job.updated_at)
    .execution_options(synchronize_session=False)
)

_INPUTS_OF_JOB = (
    select(JobInput).where(JobInput.job_id == bindparam("job_id")).order_by(JobInput.id)
)

_HOLDS_INPUT = select(JobInput.id).where(
    JobInput.job_id == bindparam("job_id"), JobInput.sop_instance_uid == bindparam("sop_uid")
)

#: An upload's turn at its job: holds the row until the upload's transaction ends (on SQLite
#: the transaction's first write takes the one writer's turn) and reads the counts there.
_TAKE_INPUT_TURN = (
    update(Job)
    .where(
        Job.id == bindparam("job_id"),
        Job.state == JobState.requested.value,
        Job.inputs_complete.is_(False),
    )
    .values(updated_at=bindparam("now"))
    .returning(Job.input_count, Job.input_bytes, Job.declared_instances)
    .execution_options(synchronize_session=False)
)

#: An upload's counts, in its turn at the job; the last declared instance also opens the job
#: to vendors, in its place in the queue.
_COUNT_INPUT = (
    update(Job)
    .where(Job.id == bindparam("job_id"))
    .values(
        input_count=bindparam("count"),
        input_bytes=bindparam("size"),
        updated_at=bindparam("now"),
    )
)
_COUNT_LAST_INPUT = _COUNT_INPUT.values(
    inputs_complete=True, queue_place=OPENING_PLACE, ready_at=bindparam("now")
)

#: A job's results, taken out, with the blobs they name (deleted once the change commits). An
#: upload takes out the one it replaces by name (aifi.exchange.transfers); a new attempt at a
#: job takes out every result an attempt that did not finish left.
TAKE_OUT_RESULTS = (
    delete(JobResult).where(JobResult.job_id == bindparam("job_id")).returning(JobResult.blob_key)
)

_HAS_RESULT = select(JobResult.id).where(JobResult.job_id == bindparam("job_id")).limit(1)

_BY_IDEMPOTENCY_KEY = select(Job).where(
    Job.hospital_id == bindparam("hospital_id"), Job.idempotency_key == bindparam("key")
)
#: The jobs a vendor may claim, most urgent first (built once: every claim runs it).
_CLAIMABLE = (
    select(Job.id)
    .join(Product, Product.id == Job.product_id)
    .where(
        # Not named like a column: the claim's UPDATE sets columns of that name.
        Job.vendor_id == bindparam("claiming_vendor"),
        Job.state == JobState.requested.value,
        Job.inputs_complete.is_(True),
        Product.status.in_(OPEN_PRODUCT_STATES),
    )
    # Hospitals take turns within a priority (aifi.exchange.fair_share).
    .order_by(Job.priority_rank, Job.queue_place, Job.created_at)
)
_CLAIMABLE_OF_PRODUCTS = _CLAIMABLE.where(
    Job.product_id.in_(bindparam("product_ids", expanding=True))
)
#: By whether the claim names some of the vendor's products: the candidates a claim on SQLite
#: tries, and the one a claim on PostgreSQL locks.
#: Their limits are literals, as in aifi.exchange.fair_share.
_CANDIDATES = {
    some: query.limit(literal_column("8"))
    for some, query in ((False, _CLAIMABLE), (True, _CLAIMABLE_OF_PRODUCTS))
}
_LOCKED_CANDIDATE = {
    some: query.limit(ONE).with_for_update(skip_locked=True, of=Job).scalar_subquery()
    for some, query in ((False, _CLAIMABLE), (True, _CLAIMABLE_OF_PRODUCTS))
}


#: A job row as an UPDATE … RETURNING gives it back: every column, by attribute name.
_JOB_COLUMNS = tuple(Job.__table__.columns)
_JOB_ATTRIBUTES = tuple(
    (attribute.key, attribute.columns[0].key) for attribute in inspect(Job).column_attrs
)


def _job_of(row: Row[Any] | None) -> Job | None:
    """The job a compare-and-set returned (None: the row no longer matched), as a plain
    object: the busiest transitions run on the connection, past the ORM's per-statement work
    (about 200 µs a statement here), and their callers only read the job."""
    if row is None:
        return None
    values = row._mapping
    return Job(**{attribute: values[column] for attribute, column in _JOB_ATTRIBUTES})


#: A claim's lease: the job's state, token, expiry and attempt (the values of `_lease_values`).
_LEASE = {
    "state": bindparam("new_state"),
    "lease_token": bindparam("new_token"),
    "lease_expires_at": bindparam("new_expiry"),
    "attempts": Job.attempts + 1,
    "claimed_at": bindparam("now"),
    "updated_at": bindparam("now"),
}
_REQUESTED = Job.state == JobState.requested.value
#: PostgreSQL: take the first free candidate (by whether the claim names some products).
_TAKE_LOCKED = {
    some: update(Job).where(Job.id == candidate, _REQUESTED).values(_LEASE).returning(*_JOB_COLUMNS)
    for some, candidate in _LOCKED_CANDIDATE.items()
}
#: The job a vendor's claim took under its claim key, while the lease holds (see `_resumed`).
_HELD_UNDER_KEY = select(Job).where(
    Job.vendor_id == bindparam("organisation_id"),
    Job.lease_token == bindparam("token"),
    Job.state.in_(HELD_STATES),
    Job.lease_expires_at > bindparam("now"),
)
#: SQLite: take this candidate, if it is still waiting.
_TAKE_CANDIDATE = (
    update(Job)
    .where(Job.id == bindparam("job_id"), _REQUESTED)
    .values(_LEASE)
    .returning(*_JOB_COLUMNS)
)


@functools.cache
def _ending(
    with_token: bool, with_summary: bool, unopened: bool = False, with_version: bool = False
) -> Update:
    """The statement that ends a job in one of `from_states` (held under `token`, if
    `with_token`; still taking inputs, if `unopened`), clearing its lease (setting its summary
    and the version the summary names, if `with_summary`; else the version that failed it, if
    `with_version`, unless its input was lost)."""
    where = [Job.id == bindparam("job_id"), Job.state.in_(bindparam("from_states", expanding=True))]
    if with_token:
        where.append(Job.lease_token == bindparam("token"))
    if unopened:
        where.append(Job.inputs_complete.is_(False))
    values: dict[str, Any] = {
        "state": bindparam("new_state"),
        "reason": bindparam("new_reason"),
        "ended_at": bindparam("now"),
        "updated_at": bindparam("now"),
        "lease_token": None,
        "lease_expires_at": None,
    }
    named = func.coalesce(
        bindparam("new_version", type_=Job.product_version.type), Job.product_version
    )
    if with_summary:
        values["summary"] = bindparam("new_summary", type_=Job.summary.type)
        values["triage_flag"] = bindparam("new_flag")
        # The version that produced the result, else the one the job was created for.
        values["product_version"] = named
        values["version_read"] = True
    elif with_version:
        # The version that failed the job; but no version ran a job whose input the store
        # lost (its worker found it gone): it keeps the one it was created for, as it does
        # when the loss ends it any other way.
        values["product_version"] = case(
            (Job.inputs_lost_at.is_not(None), Job.product_version), else_=named
        )
    return update(Job).where(*where).values(values).returning(*_JOB_COLUMNS)


class JobService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        catalogue: Catalogue,
        audit: AuditLog,
        notifier: ChangeNotifier,
        settings: ExchangeSettings,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._catalogue = catalogue
        self._audit = audit
        self._notifier = notifier
        self._settings = settings

    def _announce(
        self,
        session: Session,
        *,
        claimable: bool = False,
        job: Job | None = None,
        organisations: Collection[str] | None = None,
    ) -> None:
        """Other replicas' waiters hear of this change when its transaction commits
        (`claimable`: a job became ready to claim — `job`, if it is one job; `organisations`:
        whose jobs changed, by default `job`'s hospital and vendor, else not known)."""
        if self._db.is_postgresql:
            announce(
                session,
                claimable=claimable,
                vendor_id=job.vendor_id if job else None,
                product_id=job.product_id if job else None,
                organisations=parties(job) if organisations is None and job else organisations,
            )

    # reading -------------------------------------------------------------------------------

    def visible(
        self,
        session: Session,
        actor: Actor,
        job_id: str,
        statements: dict[str, Select[Any]] = _VISIBLE_JOB,
    ) -> Job:
        """The job if the caller may see it; other tenants' jobs do not exist for them.
        `statements`: how to read it, per role (see :func:`walled`)."""
        statement = statements.get(actor.role, statements[""])
        job = session.scalars(
            statement, {"job_id": job_id, "organisation_id": actor.organisation_id}
        ).first()
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def visible_with(
        self, session: Session, actor: Actor, job_id: str, statements: dict[str, Any], **params: Any
    ) -> tuple[Job, Any]:
        """The job if the caller may see it, with the row `statements` (see :func:`walled`)
        join to it — None when the job has no such row — read in one statement."""
        statement = statements.get(actor.role, statements[""])
        found = session.execute(
            statement, {"job_id": job_id, "organisation_id": actor.organisation_id, **params}
        ).first()
        if found is None:
            raise NotFound(f"no job {job_id!r}")
        return found[0], found[1]

    def get(self, actor: Actor, job_id: str, *, audit: bool = True) -> Job:
        if not audit:
            with self._db.session() as session:
                return self.visible(session, actor, job_id)
        with self._audit.reading(actor, "read", "job", job_id) as read:
            job = self.visible(read.session, actor, job_id)
            read.succeeded(patient_pseudonym=job.patient_pseudonym)
        return job

    def list(
        self,
        actor: Actor,
        *,
        states: list[str] | None = None,
        acknowledged: bool | None = None,
        product_id: str | None = None,
        limit: int = 100,
        after: str | None = None,
        newest_first: bool = False,
        idempotency_key: str | None = None,
    ) -> list[Job]:
        """Jobs in creation order, `limit` at a time; `after` (the last job of a page) gives
        the next page, so that jobs a client cannot finish yet never hide those behind them.
        `newest_first`: the latest `limit` jobs, latest first, as a live list shows them."""
        query = visible_to(select(Job), actor)
        if idempotency_key is not None:
            query = query.where(Job.idempotency_key == idempotency_key)
        if states:
            query = query.where(Job.state.in_(states))
        if acknowledged is not None:
            column = Job.acknowledged_at
            query = query.where(column.is_not(None) if acknowledged else column.is_(None))
        if product_id:
            query = query.where(Job.product_id == product_id)
        if newest_first:
            query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        else:
            query = query.order_by(Job.created_at, Job.id).limit(limit)
        with self._audit.reading(actor, "search", "job", "") as read:
            if after is not None:
                last = read.session.scalar(
                    visible_to(select(Job.created_at), actor).where(Job.id == after)
                )
                if last is None:
                    raise NotFound(f"no job {after!r} to list after")
                # As a row value, so that the index reads on from it.
                query = query.where(tuple_(Job.created_at, Job.id) > tuple_(last, after))
            jobs = list(read.session.scalars(query))
            read.succeeded(object_id=f"{len(jobs)} jobs")
        return jobs

    # hospital side -------------------------------------------------------------------------

    def create(self, actor: Actor, body: JobIn) -> tuple[Job, bool]:
        """A new job, or the existing one for the same idempotency key (then `created` is False).

        The product's admission, the subscription, the idempotency key and the insert share
        one transaction: a product suspended a moment earlier takes no job. A new job costs
        two statements before its audit entry: the product with the subscription, and an
        insert that yields to a job already holding the key.
        """
        if actor.role != OrganisationKind.hospital:
            raise Forbidden("only hospitals create jobs")
        with self._db.session() as session:
            product, subscribed = subscribed_product(
                session, actor.organisation_id, body.product_id
            )
            refusal = self._refusal(actor, product, subscribed)
            if refusal is None:
                job = self._new_job(actor, body, product)
                if insert_unless_taken(session, job):
                    self._audit.record_in(
                        session,
                        actor,
                        "create",
                        "job",
                        job.id,
                        patient_pseudonym=job.patient_pseudonym,
                    )
                    return job, True
            # A repeated create gets its job, even when the product has since been suspended.
            existing = self._by_idempotency_key(session, actor, body.idempotency_key)
            if existing is not None:
                return self._repeated(session, existing, body), False
        if refusal is None:  # the insert yielded, yet no job holds the key: a clash of ids
            raise Conflict("the job could not be stored; send the create again")
        self._audit.refused(actor, "create", "job", body.product_id, refusal)
        raise refusal

    @staticmethod
    def _refusal(actor: Actor, product: Product, subscribed: bool) -> Forbidden | None:
        """Why the hospital may not send this product a new job, if it may not."""
        if product.status not in OPEN_PRODUCT_STATES:
            return Forbidden(f"product {product.id!r} is {product.status} and takes no new jobs")
        if not subscribed:
            return Forbidden(
                f"hospital {actor.organisation_id!r} is not subscribed to product {product.id!r}"
            )
        return None

    def _repeated(self, session: Session, existing: Job, body: JobIn) -> Job:
        """The job a repeated create names, after checking that it asks for the same thing."""
        if (existing.product_id, existing.study_uid) != (body.product_id, body.study_uid):
            raise Conflict(
                f"idempotency key {body.idempotency_key!r} was used for job {existing.id} "
                "with another product or study"
            )
        if body.instances not in (None, existing.declared_instances):
            return self._redeclare(session, existing, body.instances)
        return existing

    @staticmethod
    def _redeclare(session: Session, job: Job, instances: int) -> Job:
        """A repeated create may change the declared count while the job still takes inputs.

        A gateway that retries after an instance arrived late sends the new count; the latest
        declaration wins. A job already open to vendors, or holding more, cannot be changed.
        """
        if job.inputs_complete or job.state != JobState.requested:
            raise Conflict(
                f"job {job.id} already opened with {job.input_count} instances; it cannot be "
                f"re-declared for {instances}"
            )
        if instances < job.input_count:
            raise Conflict(f"job {job.id} holds {job.input_count} instances, more than {instances}")
        changed = _transition(
            session,
            (
                Job.id == job.id,
                Job.state == JobState.requested.value,
                Job.inputs_complete.is_(False),
                Job.input_count <= instances,
            ),
            {"declared_instances": instances, "updated_at": utcnow()},
        )
        if changed is None:
            raise Conflict(f"job {job.id} changed meanwhile; declare its instances again")
        return changed

    @staticmethod
    def _by_idempotency_key(session: Session, actor: Actor, key: str) -> Job | None:
        return session.scalars(
            _BY_IDEMPOTENCY_KEY, {"hospital_id": actor.organisation_id, "key": key}
        ).first()

    @staticmethod
    def _new_job(actor: Actor, body: JobIn, product: Product) -> Job:
        priority = body.priority or Priority(product.manifest.get("priority", "routine"))
        now = utcnow()
        return Job(
            id=str(uuid.uuid4()),
            hospital_id=actor.organisation_id,
            product_id=product.id,
            vendor_id=product.vendor_id,
            idempotency_key=body.idempotency_key,
            study_uid=body.study_uid,
            patient_pseudonym=body.patient_pseudonym,
            priority=priority.value,
            priority_rank=PRIORITY_RANK[priority],
            product_version=product.version,
            state=JobState.requested.value,
            inputs_complete=False,
            declared_instances=body.instances,
            input_count=0,
            input_bytes=0,
            attempts=0,
            created_at=now,
            updated_at=now,
        )

    def mark_ready(self, actor: Actor, job_id: str, instances: int) -> Job:
        """Open the job to vendors once every input is stored; the count must match."""
        with self._db.session() as session:
            job = self.visible(session, actor, job_id)
            if actor.role != OrganisationKind.hospital:
                raise Forbidden("only the hospital that created a job marks it ready")
            if job.inputs_complete:
                return job
            if job.state != JobState.requested:
                raise Conflict(f"job {job_id} is {job.state}")
            if job.input_count != instances:
                raise Invalid(
                    f"job {job_id} holds {job.input_count} instances but the hospital "
                    f"said {instances}; upload the missing ones first"
                )
            now = utcnow()
            changed = _transition(
                session,
                # As read above: a cancel, or an upload, committed meanwhile wins.
                (
                    Job.id == job_id,
                    Job.state == JobState.requested.value,
                    Job.inputs_complete.is_(False),
                    Job.input_count == instances,
                ),
                {
                    "inputs_complete": True,
                    "queue_place": OPENING_PLACE,
                    "ready_at": now,
                    "updated_at": now,
                },
            )
            if changed is None:
                session.refresh(job)
                if job.inputs_complete:  # opened meanwhile by its last upload: as asked
                    return job
                raise Conflict(
                    f"job {job_id} changed meanwhile ({job.state}, {job.input_count} "
                    f"instances); it was not opened"
                )
            job = changed
            self._announce(session, claimable=True, job=job)
            self._audit.record_in(session, actor, "update", "job", job_id, detail="inputs complete")
        self.opened(job)
        return job

    @staticmethod
    def check_room(session: Session, job: Job, sop_uid: str) -> None:
        """Refuse a new instance beyond the declared count before anything is stored.

        The counts are the job's as the upload found them; the upload's own turn at the job
        (`take_input_turn`) reads them again, with every upload that finished meanwhile.
        """
        declared = job.declared_instances
        if declared is None or job.input_count < declared:
            return
        holds = execute_core(session, _HOLDS_INPUT, {"job_id": job.id, "sop_uid": sop_uid})
        if not holds.first():
            raise Conflict(
                f"job {job.id} was created for {declared} instances and holds them all; "
                f"{sop_uid} would be one more"
            )

    @staticmethod
    def take_input_turn(session: Session, job: Job) -> InputTurn:
        """Hold the job's row until the upload's transaction ends, with its counts as they are.

        Uploads of one job take turns from here to their commit, so each one counts what the
        others stored; what comes before — checking the file, sending it to the object store —
        runs side by side. A job that stopped taking inputs meanwhile refuses the upload.
        """
        held = execute_core(session, _TAKE_INPUT_TURN, {"job_id": job.id, "now": utcnow()}).first()
        if held is None:
            raise Conflict(f"job {job.id} no longer takes inputs")
        return InputTurn(count=held[0], size=held[1], declared=held[2])

    def count_input(
        self,
        session: Session,
        actor: Actor,
        job: Job,
        turn: InputTurn,
        *,
        added: str,
        size: int,
        replaced_size: int | None,
    ) -> bool:
        """Record the stored instance `added` in the job's counts, during the upload's turn.

        `replaced_size` is the size of the copy it replaced, if the hospital sent it before. A
        job that declared its instance count opens to vendors when the last one is stored
        (True); an instance beyond the count is refused, and the upload's transaction with it.
        """
        count = turn.count + (0 if replaced_size is not None else 1)
        total = turn.size - (replaced_size or 0) + size
        if turn.declared is not None and count > turn.declared:
            raise Conflict(
                f"job {job.id} was created for {turn.declared} instances and holds them all; "
                f"{added} would be one more"
            )
        opens = count == turn.declared
        execute_core(
            session,
            _COUNT_LAST_INPUT if opens else _COUNT_INPUT,
            {"job_id": job.id, "count": count, "size": total, "now": utcnow()},
        )
        if opens:
            self._announce(session, claimable=True, job=job)
            self._audit.record_in(session, actor, "update", "job", job.id, detail="inputs complete")
        return opens

    def opened(self, job: Job) -> None:
        """After the commit that opened `job` to vendors: wake one of its vendor's claims."""
        self._notifier.notify(
            claimable=True,
            vendor_id=job.vendor_id,
            product_id=job.product_id,
            organisations=parties(job),
        )

    def cancel(self, actor: Actor, job_id: str, reason: str, *, unopened_only: bool = False) -> Job:
        """End a job before it runs its course. `unopened_only`: only while it still takes
        inputs, checked in the statement that ends it, so that an upload opening the job to
        vendors meanwhile wins (a gateway withdrawing what an earlier attempt left)."""
        with self._db.session() as session:
            job = self.visible(session, actor, job_id)
            if actor.role not in (OrganisationKind.hospital, OrganisationKind.operator):
                raise Forbidden("only the hospital or the operator cancels a job")
            if job.state in ENDED_STATES:
                raise Conflict(f"job {job_id} has already ended ({job.state})")
            if unopened_only and job.inputs_complete:
                raise Conflict(f"job {job_id} is open to vendors; it is not cancelled")
            ended = self._end(
                session,
                job_id,
                JobState.cancelled,
                reason,
                from_states=(job.state,),
                unopened=unopened_only,
            )
            self._announce(session, job=ended)
            self._audit.record_in(
                session, actor, "update", "job", job_id, detail=f"cancelled: {reason}"
            )
        self._notifier.notify(organisations=parties(ended))
        return ended

    def acknowledge(self, actor: Actor, job_id: str) -> Job:
        """The hospital has what it needs from an ended job (results delivered, or failure
        seen); of a completed job's results it says nothing."""
        return self.acknowledge_many(actor, [job_id]).jobs[0]

    def acknowledge_many(
        self,
        actor: Actor,
        job_ids: Sequence[str],
        not_delivered: Mapping[str, str] | None = None,
    ) -> Acknowledged:
        """Acknowledge several ended jobs in one transaction: all of them, or none.

        A gateway that brought a poll's worth of results home says so once instead of once per
        job. Acknowledging twice is harmless: a job keeps its first acknowledgement, and what
        it said of the results (`not_delivered`: job id → why a completed job's results did
        not reach the PACS; given, a completed job it does not name counts as delivered; None:
        nothing is said of any, as by a gateway too old to say).
        """
        wanted = list(dict.fromkeys(job_ids))
        undelivered = dict(not_delivered or {})
        touched: set[str] = {actor.organisation_id}
        with self._db.session() as session:
            found = {
                job.id: job
                for job in session.scalars(visible_to(select(Job), actor).where(Job.id.in_(wanted)))
            }
            for job_id in wanted:
                if job_id not in found:
                    raise NotFound(f"no job {job_id!r}")
            if actor.role != OrganisationKind.hospital:
                raise Forbidden("only the hospital acknowledges its jobs")
            for job_id in wanted:
                if found[job_id].state not in ENDED_STATES:
                    raise Conflict(f"job {job_id} has not ended ({found[job_id].state})")
            fresh = [job_id for job_id in wanted if found[job_id].acknowledged_at is None]
            if fresh:
                now = utcnow()
                said = {job_id: undelivered[job_id] for job_id in fresh if job_id in undelivered}
                delivery: Any = None  # nothing said (a gateway too old to say)
                if not_delivered is not None:
                    results: Any = Delivery.delivered.value
                    if said:
                        results = case(said, value=Job.id, else_=results)
                    # Only a completed job has results to say anything of.
                    delivery = case((Job.state == JobState.completed.value, results), else_=None)
                statement = (
                    update(Job)
                    .where(Job.id.in_(fresh), Job.acknowledged_at.is_(None))
                    .values(acknowledged_at=now, updated_at=now, delivery=delivery)
                    .returning(Job)
                    .execution_options(synchronize_session=False, populate_existing=True)
                )
                updated = {job.id: job for job in session.scalars(statement)}
                # Another acknowledgement of a job may have come first (on PostgreSQL this one
                # waited for it at the row): it keeps its first, and is audited once.
                for job_id in fresh:
                    if job_id not in updated:
                        session.refresh(found[job_id])
                found.update(updated)
                fresh = [job_id for job_id in fresh if job_id in updated]
            if fresh:
                touched.update(found[job_id].vendor_id for job_id in fresh)
                self._announce(session, organisations=touched)
                for job_id in fresh:
                    detail = "acknowledged"
                    if found[job_id].delivery not in (None, Delivery.delivered):
                        detail += f"; results not delivered: {found[job_id].delivery}"
                    self._audit.record_in(session, actor, "update", "job", job_id, detail=detail)
        if fresh:
            self._notifier.notify(organisations=touched)
        return Acknowledged(
            [found[job_id] for job_id in wanted], [found[job_id] for job_id in fresh]
        )

    # vendor side ---------------------------------------------------------------------------

    def claim(self, actor: Actor, body: ClaimIn) -> tuple[Job, str, Sequence[JobInput]] | None:
        """Take the most urgent ready job for the vendor's products, with a fresh lease.

        On PostgreSQL the job row is picked and taken in one statement, an `UPDATE` of the
        row that `SELECT … FOR UPDATE SKIP LOCKED` finds: concurrent claims on any replica
        each lock a different row and never wait on one another. SQLite has one writer at a
        time, so there the claim is a compare-and-set on the candidate's state.

        The job's inputs come with it, read in the same transaction: the worker's next step is
        fetching them, and it need not ask for the list first.

        A claim is not idempotent, so a worker that lost its answer asks again with the same
        `claim_key` (the lease token) and `resume`: the job it already took is answered
        again. Only such a retry looks first; a first claim sends no more statements.
        """
        if actor.role != OrganisationKind.vendor:
            raise Forbidden("only vendors claim jobs")
        # Expired leases are put back by the app's sweeper every second, not on every claim:
        # two writes fewer per claim on the busiest path.
        lease = self.lease_length(body.lease_seconds)
        some = bool(body.product_ids)
        wanted = {"claiming_vendor": actor.organisation_id, "product_ids": body.product_ids}
        token = body.claim_key or secrets.token_urlsafe(24)
        taken = self._lease_values(token, lease, body.start)
        with self._db.session() as session:
            if body.resume and body.claim_key:
                resumed = self._resumed(session, actor, body.claim_key)
                if resumed is not None:
                    return resumed
            if self._db.is_postgresql:
                job = self._take_locked(session, some, wanted, taken)
            else:
                job = self._take_compare_and_set(session, some, wanted, taken)
            if job is None:
                return None
            # Only a job whose lease ran out before may hold an unfinished attempt's results
            # (a job handed back loses them then: `release`), so the first claim, by far the
            # most common, sends no statement for them.
            abandoned = (
                self._discard_results(session, job, f"before attempt {job.attempts}")
                if job.attempts > 1
                else ()
            )
            inputs = self._answered(session, actor, job, f"claimed, attempt {job.attempts}")
        self._forget(abandoned)
        return job, token, inputs

    def _resumed(
        self, session: Session, actor: Actor, key: str
    ) -> tuple[Job, str, Sequence[JobInput]] | None:
        """The claim whose answer was lost, answered again: the job the vendor holds under
        `key`, if the lease still holds. A retry that claimed afresh would leave that job held
        by a token nobody has until its lease ran out, one of its attempts spent."""
        job = session.scalars(
            _HELD_UNDER_KEY,
            {"organisation_id": actor.organisation_id, "token": key, "now": utcnow()},
        ).first()
        if job is None:
            return None
        said = f"claim of attempt {job.attempts} answered again, its answer lost"
        return job, key, self._answered(session, actor, job, said)

    def _answered(self, session: Session, actor: Actor, job: Job, said: str) -> Sequence[JobInput]:
        """The job's inputs, listed with the claim's answer, and the claim audited (`said`)."""
        inputs = list(session.scalars(_INPUTS_OF_JOB, {"job_id": job.id}))
        self._audit.record_in(
            session,
            actor,
            "update",
            "job",
            job.id,
            patient_pseudonym=job.patient_pseudonym,
            detail=f"{said}; its {len(inputs)} inputs listed",
        )
        return inputs

    def _discard_results(self, session: Session, job: Job, when: str) -> Sequence[str]:
        """Take out, in the caller's transaction, the results an attempt that did not finish
        left on `job`: the hospital gets what the attempt that completes made, not that topped
        up with another's, and a job is never completed on them alone. Returns their blobs,
        for `_forget` once the transaction commits."""
        blobs = list(execute_core(session, TAKE_OUT_RESULTS, {"job_id": job.id}).scalars())
        if blobs:
            self._audit.record_in(
                session, SYSTEM, "delete", "result", job.id,
                patient_pseudonym=job.patient_pseudonym,
                detail=f"discarded {len(blobs)} result(s) of job {job.id} left by an attempt "
                f"that did not finish, {when}",
            )  # fmt: skip
        return blobs

    def _forget(self, blobs: Sequence[str]) -> None:
        """After the commit that took their rows out: the blobs of discarded results."""
        for key in blobs:
            forget(self._blobs, key)

    def lease_length(self, asked: float | None) -> timedelta:
        """The lease a claim or a heartbeat grants: as long as the worker asked, else the
        exchange's default. A heartbeat must grant what its claim did, or a worker that
        claimed a long lease loses its job between two beats."""
        return timedelta(seconds=asked or self._settings.lease_seconds)

    @staticmethod
    def _lease_values(token: str, lease: timedelta, start: bool) -> dict[str, Any]:
        now = utcnow()
        return {
            "new_state": (JobState.in_progress if start else JobState.accepted).value,
            "new_token": token,
            "new_expiry": now + lease,
            "now": now,
        }

    def _take_locked(
        self, session: Session, some: bool, wanted: dict[str, Any], taken: dict[str, Any]
    ) -> Job | None:
        """PostgreSQL: lock the first free candidate, skipping rows other claims hold, and
        take it, in one statement (`UPDATE … WHERE id = (SELECT … SKIP LOCKED)`); `some`: of
        the products the claim names."""
        return _job_of(execute_core(session, _TAKE_LOCKED[some], {**wanted, **taken}).first())

    def _take_compare_and_set(
        self, session: Session, some: bool, wanted: dict[str, Any], taken: dict[str, Any]
    ) -> Job | None:
        """SQLite: try a few candidates; the `WHERE state = 'requested'` decides who wins."""
        for _ in range(4):
            candidates = list(execute_core(session, _CANDIDATES[some], wanted).scalars())
            if not candidates:
                return None
            for job_id in candidates:
                won = _job_of(
                    execute_core(session, _TAKE_CANDIDATE, {"job_id": job_id, **taken}).first()
                )
                if won is not None:
                    return won
        return None

    def held(self, session: Session, actor: Actor, job_id: str, token: str) -> Job:
        """The job, if `token` is its live lease (read in the caller's transaction)."""
        return self.held_by(self.visible(session, actor, job_id), token)

    def keep_lease(self, session: Session, job: Job, token: str) -> None:
        """Check the lease again and keep it, and every other write to the job, off until the
        caller's transaction ends; call it just before the transaction's first write.

        A result recorded under a lease checked a moment before it ran out would otherwise
        land after the lease sweep and the next claim, which drops what an attempt that did
        not finish left, and be delivered with the next attempt's results; and two uploads of
        one result would both take out the copy before them, and one fail on the name.
        """
        if not self._db.is_postgresql:
            execute_core(session, _HOLD_WRITES, {"job_id": job.id})
        params = {"job_id": job.id, "token": token, "now": utcnow()}
        if execute_core(session, _KEEP_LEASE, params).first() is None:
            session.refresh(job)  # as it stands now, to say what changed
            self.held_by(job, token)
            raise Conflict(f"job {job.id} is not held by this lease")

    @staticmethod
    def held_by(job: Job, token: str) -> Job:
        """`job` (as read in the caller's transaction), if `token` is its live lease."""
        if job.state not in HELD_STATES or job.lease_token != token:
            raise Conflict(f"job {job.id} is not held by this lease (state {job.state})")
        if job.lease_expires_at is not None and as_utc(job.lease_expires_at) < utcnow():
            raise Conflict(f"the lease on job {job.id} has expired")
        return job

    def _move_held(
        self, session: Session, actor: Actor, job_id: str, token: str, values: dict[str, Any]
    ) -> Job | None:
        """Set `values` on the job `token` holds: checked first, for a refusal that says why,
        and again in the compare-and-set (None: it changed meanwhile)."""
        self.held(session, actor, job_id, token)
        return _transition(
            session,
            (Job.id == job_id, Job.lease_token == token, Job.state.in_(HELD_STATES)),
            values,
        )

    def check_lease(self, actor: Actor, job_id: str, token: str) -> Job:
        with self._db.session() as session:
            return self.held(session, actor, job_id, token)

    def heartbeat(
        self, actor: Actor, job_id: str, token: str, lease_seconds: float | None = None
    ) -> Job:
        """Extend the lease by `lease_seconds` (the exchange's default if None); the first
        heartbeat moves the job to in-progress."""
        lease = self.lease_length(lease_seconds)
        now = utcnow()
        extended = {
            "state": JobState.in_progress.value,
            "lease_expires_at": now + lease,
            "updated_at": now,
        }
        with self._db.session() as session:
            job = self._move_held(session, actor, job_id, token, extended)
        if job is None:
            raise Conflict(f"job {job_id} is not held by this lease")
        return job

    def complete(
        self, actor: Actor, job_id: str, token: str, summary: dict[str, Any] | None
    ) -> Job:
        """End a held job that holds a result; a `summary` sent with it is checked as one
        uploaded as a result would be: it feeds the worklist flag and the evaluation."""
        with self._db.session() as session:
            held = self.held(session, actor, job_id, token)
            if summary is not None:
                check_summary(
                    summary,
                    job_id=job_id,
                    name="completion's summary",
                    published=functools.partial(published_as, session, held.product_id),
                )
            job = self.complete_in(session, actor, job_id, token, summary)
        self.completed(job)
        return job

    def complete_in(
        self,
        session: Session,
        actor: Actor,
        job_id: str,
        token: str,
        summary: dict[str, Any] | None,
        *,
        with_result: bool = False,
    ) -> Job:
        """End a held job completed inside the caller's transaction (it must hold a result;
        `with_result`: the caller has just added one)."""
        if not with_result and not execute_core(session, _HAS_RESULT, {"job_id": job_id}).first():
            raise Invalid(f"job {job_id} has no results: upload at least one before completing")
        job = self._end(
            session,
            job_id,
            JobState.completed,
            None,
            from_states=HELD_STATES,
            token=token,
            summary=summary,
        )
        self._announce(session, job=job)
        self._audit.record_in(
            session,
            actor,
            "update",
            "job",
            job_id,
            patient_pseudonym=job.patient_pseudonym,
            detail="completed",
        )
        return job

    def read_triage_flags(self) -> int:
        """Flags for jobs that a replica of an earlier release completed without one."""
        return read_unread_flags(self._db)

    def read_product_versions(self) -> int:
        """Versions of summaries stored before the exchange kept them, or by a replica of an
        earlier release."""
        return read_unread_versions(self._db)

    def completed(self, job: Job) -> None:
        """After the commit that completed `job` (or ended it otherwise): wake its hospital's
        long-poll."""
        self._notifier.notify(organisations=parties(job))

    def fail(
        self, actor: Actor, job_id: str, token: str, reason: str, version: str | None = None
    ) -> Job:
        """End a held job, failed with the worker's `reason`. A worker that says which
        `version` of the product failed it has the failure counted under that version (after
        a release, the previous version's workers still fail jobs created for the new one);
        otherwise it counts under the version the job was created for."""
        with self._db.session() as session:
            held = self.held(session, actor, job_id, token)
            published = functools.partial(published_as, session, held.product_id)
            if version is not None and (
                problem := version_problem(version, "failed the job", published)
            ):
                raise Invalid(f"job {job_id}: rule 'product-version': {problem}")
            job = self._end(
                session, job_id, JobState.failed, reason, from_states=HELD_STATES, token=token,
                version=version,
            )  # fmt: skip
            self._announce(session, job=job)
            self._audit.record_in(
                session,
                actor,
                "update",
                "job",
                job_id,
                patient_pseudonym=job.patient_pseudonym,
                detail=f"failed: {reason}",
            )
        self._notifier.notify(organisations=parties(job))
        return job

    def release(self, actor: Actor, job_id: str, token: str, reason: str) -> Job:
        """Hand a held job back: the worker's own trouble (its disk full, no GPU free), not
        the study's. The job goes back to the head of the queue now, not when the lease runs
        out — a STAT study must not wait out a lease for a worker that already knows.

        The claim's attempt is taken back: attempts count the tries that ended without a
        word (a study that crashes workers), which `max_attempts` stops. A job that is only
        ever handed back ends as unfinished (`expire_unfinished_seconds`).

        A job one of whose inputs the exchange's store lost (`inputs_lost_at`: the worker's
        read found it missing, and may take that for its own trouble) is not queued again,
        where every worker would fail on it in turn while the study waits: it ends, failed,
        with `INPUTS_LOST_REASON`, and its hospital's gateway sends the study again at once.
        """
        now = utcnow()
        # One statement decides between the two, so that a mark committed while it waits on
        # the row (PostgreSQL re-reads the row then) is seen, never missed by both branches.
        lost = Job.inputs_lost_at.is_not(None)
        back = {
            "state": case((lost, JobState.failed.value), else_=JobState.requested.value),
            "queue_place": case((lost, Job.queue_place), else_=REQUEUED_PLACE),
            "reason": case((lost, INPUTS_LOST_REASON), else_=Job.reason),
            "ended_at": case((lost, literal(now, Job.ended_at.type)), else_=null()),
            "lease_token": None,
            "lease_expires_at": None,
            "attempts": Job.attempts - 1,
            "updated_at": now,
        }
        with self._db.session() as session:
            job = self._move_held(session, actor, job_id, token, back)
            if job is None:
                raise Conflict(f"job {job_id} changed state meanwhile; not handed back")
            ended = job.state == JobState.failed.value
            self._announce(session, job=job, claimable=not ended)
            detail = f"failed: handed back ({reason}); {INPUTS_LOST_REASON}" if ended else None
            self._audit.record_in(
                session, actor, "update", "job", job_id,
                patient_pseudonym=job.patient_pseudonym, detail=detail or f"handed back: {reason}",
            )  # fmt: skip
            # The attempt is taken back, so the next claim is not told by `attempts` that
            # one came before: what this one uploaded goes now.
            abandoned = self._discard_results(session, job, "as it was handed back")
        self._forget(abandoned)
        if ended:
            self._notifier.notify(organisations=parties(job))
        else:
            self.opened(job)  # back in the queue: opened to vendors again
        return job

    def end_lost_in_queue(self, session: Session, job_id: str) -> Job | None:
        """End, failed with `INPUTS_LOST_REASON`, a job waiting in the queue that was just
        marked for an input the exchange's store lost (a read by its hospital found it
        missing): no worker should claim it only to fail on it. None when it is not queued
        (held: its worker ends it, or its lease's end does). Its hospital's long-poll is
        woken by the caller, after the commit (`completed`)."""
        now = utcnow()
        job = _transition(
            session,
            (
                Job.id == job_id,
                Job.state == JobState.requested.value,
                Job.inputs_complete.is_(True),
                Job.inputs_lost_at.is_not(None),
            ),
            {"state": JobState.failed.value, "reason": INPUTS_LOST_REASON, "ended_at": now,
             "updated_at": now},
        )  # fmt: skip
        if job is not None:
            self._announce(session, job=job)
            self._audit.record_in(
                session, SYSTEM, "update", "job", job_id,
                patient_pseudonym=job.patient_pseudonym, detail=f"failed: {INPUTS_LOST_REASON}",
            )  # fmt: skip
        return job

    # both ----------------------------------------------------------------------------------

    @staticmethod
    def _end(
        session: Session,
        job_id: str,
        state: JobState,
        reason: str | None,
        *,
        from_states: tuple[str, ...],
        token: str | None = None,
        summary: dict[str, Any] | None = None,
        unopened: bool = False,
        version: str | None = None,
    ) -> Job:
        params: dict[str, Any] = {
            "job_id": job_id,
            "from_states": list(from_states),
            "token": token,
            "new_state": state.value,
            "new_reason": reason,
            "now": utcnow(),
        }
        if summary is not None:
            params["new_summary"] = summary
            params["new_flag"] = triage_flag(summary)
            params["new_version"] = summary_version(summary)
        elif version is not None:
            params["new_version"] = version
        statement = _ending(
            token is not None,
            summary is not None,
            unopened,
            summary is None and version is not None,
        )
        job = _job_of(execute_core(session, statement, params).first())
        if job is None:
            raise Conflict(f"job {job_id} changed state meanwhile; {state.value} not applied")
        return job

    def expire_leases(self) -> int:
        """Put jobs whose lease ran out back in the queue, or end them after too many attempts
        (a job whose input the exchange's store lost, at its first lapse).

        Every replica sweeps; on PostgreSQL each sweep takes only rows no one else holds
        (`FOR UPDATE SKIP LOCKED`), so sweeps and claims never wait on or deadlock with one
        another.
        """
        now = utcnow()
        max_attempts = self._settings.max_attempts
        lapsed = (Job.state.in_(HELD_STATES), Job.lease_expires_at < now)
        tried = f"the vendor's lease ran out {max_attempts} times without a result"
        # A job whose input the store lost ends at its first lapse: offered again, it would
        # only fail again (see `release`).
        lost = Job.inputs_lost_at.is_not(None)
        lapsed_lost = f"the vendor's lease ran out; {INPUTS_LOST_REASON}"
        reason = case((lost, lapsed_lost), else_=tried)
        with self._db.session() as session:
            offered_again = session.execute(
                update(Job)
                .where(
                    self._sweepable(
                        *lapsed, Job.attempts < max_attempts, Job.inputs_lost_at.is_(None)
                    )
                )
                .values(
                    state=JobState.requested.value,
                    queue_place=REQUEUED_PLACE,
                    lease_token=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
                .returning(Job.id, Job.patient_pseudonym, Job.attempts)
                .execution_options(synchronize_session=False)
            ).all()
            ended = session.execute(
                update(Job)
                .where(self._sweepable(*lapsed, or_(Job.attempts >= max_attempts, lost)))
                .values(
                    state=JobState.expired.value,
                    reason=reason,
                    lease_token=None,
                    lease_expires_at=None,
                    ended_at=now,
                    updated_at=now,
                )
                .returning(Job.id, Job.patient_pseudonym, Job.reason)
                .execution_options(synchronize_session=False)
            ).all()
            # The system's own changes to a job are on record as the parties' are: which
            # attempt was lost, and why a job ended.
            for job_id, pseudonym, attempts in offered_again:
                self._audit.record_in(
                    session, SYSTEM, "update", "job", job_id, patient_pseudonym=pseudonym,
                    detail=f"offered again: the lease of attempt {attempts} ran out",
                )  # fmt: skip
            for job_id, pseudonym, why in ended:
                self._audit.record_in(
                    session, SYSTEM, "update", "job", job_id,
                    patient_pseudonym=pseudonym, detail=f"expired: {why}",
                )  # fmt: skip
            requeued, expired = len(offered_again), len(ended)
            if requeued or expired:
                self._announce(session, claimable=requeued > 0)
        if requeued or expired:
            self._notifier.notify(claimable=requeued > 0)
        return requeued + expired

    def expire_unfinished(self, now: datetime | None = None) -> int:
        """End, as expired, every job not ended `expire_unfinished_seconds` after its creation.

        Retention purges only ended jobs, so a gateway that never finished an upload, a
        product no vendor serves any more, or a vendor that keeps a job alive by heartbeats
        would otherwise hold a patient's pseudonymised study at the exchange for ever. Ended
        here, the job tells its hospital where it stopped, and its inputs go by the retention
        times. A vendor still holding it finds its lease gone.
        """
        limit = self._settings.expire_unfinished_seconds
        if limit is None:
            return 0
        now = now or utcnow()
        cutoff = now - timedelta(seconds=limit)
        expired = 0
        after = f"{limit / 86400:g} days" if limit >= 86400 else f"{limit:g} s"
        with self._db.session() as session:
            for stage, stopped in _UNFINISHED:
                reason = f"not ended {after} after it was created: {stopped}"
                # Not ended: always so in these states, and it reads only the jobs under
                # way (ix_jobs_ended, at NULL), not every job older than the cut-off.
                rows = session.execute(
                    update(Job)
                    .where(
                        self._sweepable(*stage, Job.ended_at.is_(None), Job.created_at <= cutoff)
                    )
                    .values(
                        state=JobState.expired.value,
                        reason=reason,
                        lease_token=None,
                        lease_expires_at=None,
                        ended_at=now,
                        updated_at=now,
                    )
                    .returning(Job.id, Job.patient_pseudonym)
                    .execution_options(synchronize_session=False)
                ).all()
                for job_id, pseudonym in rows:
                    self._audit.record_in(
                        session, SYSTEM, "update", "job", job_id,
                        patient_pseudonym=pseudonym, detail=f"expired: {reason}",
                    )  # fmt: skip
                expired += len(rows)
            if expired:
                self._announce(session)
        if expired:
            self._notifier.notify()
        return expired

    def _sweepable(self, *conditions: Any) -> Any:
        """The rows matching `conditions`: directly on SQLite, lock-skipping on PostgreSQL."""
        if not self._db.is_postgresql:
            return and_(*conditions)
        free = select(Job.id).where(*conditions).with_for_update(skip_locked=True)
        return and_(Job.id.in_(free), *conditions)
