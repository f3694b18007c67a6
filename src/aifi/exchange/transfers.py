"""Job inputs and results in and out of the blob store, streamed, checked before commit.

Uploads are idempotent by key (SOP Instance UID for inputs, a file name for results): sending
the same object twice stores it once, so a gateway or worker may retry after any failure.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Executable, Row, and_, bindparam, delete, or_, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aifi.exchange.audit import SYSTEM, Actor, AuditLog
from aifi.exchange.blob_keys import input_key, result_key
from aifi.exchange.blobs import BlobStore, TempBlob, forget
from aifi.exchange.catalogue import published_as
from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import Database, execute_core, insert_new
from aifi.exchange.errors import BlobMissing, Conflict, Forbidden, Invalid, NotFound
from aifi.exchange.jobs import TAKE_OUT_RESULTS, JobService, walled
from aifi.exchange.models import Job, JobInput, JobResult
from aifi.exchange.retention import purge_due
from aifi.exchange.schemas import JobState, OrganisationKind
from aifi.exchange.settings import ExchangeSettings
from aifi.exchange.threads import TransferThreads
from aifi.exchange.validation import (
    InputHeader,
    check_input,
    check_result_file,
    check_summary,
)

#: Matched whole (`fullmatch`): `$` would also take a name ending in a newline.
UID = re.compile(r"[0-9.]{1,64}")
RESULT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
#: Uploads up to this size are read before the job is looked at, and the job is checked once,
#: in the transaction that stores them. Larger ones are refused before their bytes are read.
CHECK_FIRST_BYTES = 1024 * 1024
#: The JSON summary beside the DICOM results: small, parsed whole.
SUMMARY_LIMIT = 1024 * 1024
#: The longest Content-Type a result's row keeps: `JobResult.media_type`, String(100).
MEDIA_TYPE_CHARACTERS = 100

#: What a download makes of a blob it may read.
T = TypeVar("T")
#: A row naming a blob: an input or a result.
HeldRow = TypeVar("HeldRow", JobInput, JobResult)


@dataclass(frozen=True)
class ResultUpload:
    """What a vendor said about one result upload, besides its bytes."""

    name: str
    lease_token: str
    media_type: str
    is_summary: bool
    complete: bool


#: The JobResult columns of a JSON summary: no DICOM identity, never an AIR object.
_SUMMARY_COLUMNS: dict[str, Any] = {
    "kind": "summary-json",
    "sop_class_uid": None,
    "sop_instance_uid": None,
    "air_conformant": False,
    "notes": [],
}


log = logging.getLogger(__name__)

#: A job with one of its inputs (`sop_uid`), or with one of its results (`name`), walled per
#: role: a download's checks and its row in one statement.
_INPUT_OF_JOB = walled(
    select(Job, JobInput)
    .outerjoin(
        JobInput,
        and_(JobInput.job_id == Job.id, JobInput.sop_instance_uid == bindparam("sop_uid")),
    )
    .where(Job.id == bindparam("job_id"))
)
_RESULT_OF_JOB = walled(
    select(Job, JobResult)
    .outerjoin(JobResult, and_(JobResult.job_id == Job.id, JobResult.name == bindparam("name")))
    .where(Job.id == bindparam("job_id"))
)


def _take_out(session: Session, statement: Executable, params: dict[str, str]) -> Row[Any] | None:
    """Delete the row an upload replaces (a copy sent before); what it held, if there was
    one. Run in the upload's turn, so two uploads of one object replace one after the other."""
    return execute_core(session, statement, params).first()


#: The copy of an input (a result) that an upload replaces, deleted; its size and blob.
_REPLACED_INPUT = (
    delete(JobInput)
    .where(JobInput.job_id == bindparam("job_id"), JobInput.sop_instance_uid == bindparam("uid"))
    .returning(JobInput.size, JobInput.blob_key)
)
_REPLACED_RESULT = TAKE_OUT_RESULTS.where(JobResult.name == bindparam("name"))


@dataclass
class _Recording:
    """An upload's blob under its own `key`, and how far the upload got: the blob stored, its
    row written (committing next), the blob of the copy it replaced."""

    blobs: BlobStore
    key: str
    stored: bool = False
    done: bool = False
    replaced: str | None = None

    def store(self, temp: TempBlob) -> None:
        """Store the upload's blob, unless it already was (a large one, before its
        transaction)."""
        if not self.stored:
            self.blobs.commit(temp, self.key)
            self.stored = True


@dataclass(frozen=True)
class _Checked:
    """What the result check learned: the result's row's columns, the summary if it is one,
    and a DICOM result's own SOP Instance and Series UIDs."""

    columns: dict[str, Any]
    summary: dict[str, Any] | None
    uids: tuple[str, str] | None


#: An input of the job whose SOP Instance UID or series a result took as its own.
_INPUT_UIDS = (
    select(JobInput.sop_instance_uid, JobInput.series_uid)
    .where(
        JobInput.job_id == bindparam("job_id"),
        or_(
            JobInput.sop_instance_uid == bindparam("sop"),
            JobInput.series_uid == bindparam("series"),
        ),
    )
    .limit(1)
)

#: Another result of the job (by another name: one uploaded again under its own name replaces
#: it) that has taken this SOP Instance UID.
_RESULT_UIDS = (
    select(JobResult.name)
    .where(
        JobResult.job_id == bindparam("job_id"),
        JobResult.sop_instance_uid == bindparam("sop"),
        JobResult.name != bindparam("name"),
    )
    .limit(1)
)


class Transfers:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        jobs: JobService,
        audit: AuditLog,
        threads: TransferThreads,
        settings: ExchangeSettings,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._jobs = jobs
        self._audit = audit
        self._settings = settings
        #: Where large uploads are stored and large downloads streamed.
        self.threads = threads

    # inputs --------------------------------------------------------------------------------

    async def put_input(
        self,
        actor: Actor,
        job_id: str,
        sop_uid: str,
        body: AsyncIterator[bytes],
        length: int | None = None,
    ) -> JobInput:
        """Receive, check and store one input instance (`length`: the body size announced).

        A large upload is refused before its bytes are read if the job would refuse it anyway,
        and checked and stored before the transaction that records it, so that no database
        connection waits while it goes to the object store; a small one is read first and the
        job checked once, in the transaction that stores it.
        """
        if not UID.fullmatch(sop_uid):
            raise Invalid(f"job {job_id}: {sop_uid!r} is not a SOP Instance UID")
        checked = None
        if length is None or length > CHECK_FIRST_BYTES:
            checked = await run_in_threadpool(self._jobs.get, actor, job_id, audit=False)
            self._takes_inputs(actor, checked)
        temp = await self._blobs.receive(body)
        # A large upload goes to the object store on a transfer thread, a small one with its
        # transaction on a request thread.
        run = self.threads.run if checked is not None else run_in_threadpool
        try:
            return await run(self._commit_input, actor, job_id, sop_uid, temp, checked)
        finally:
            self._blobs.discard(temp)

    @staticmethod
    def _takes_inputs(actor: Actor, job: Job) -> None:
        if actor.role != OrganisationKind.hospital:
            raise Forbidden("only the hospital that created a job uploads its inputs")
        if job.inputs_complete or job.state != JobState.requested:
            raise Conflict(f"job {job.id} no longer takes inputs (state {job.state})")

    def _commit_input(
        self,
        actor: Actor,
        job_id: str,
        sop_uid: str,
        temp: TempBlob,
        checked: Job | None = None,
    ) -> JobInput:
        """Store and record an input; `checked`: the job as a large upload found it before
        its bytes were read (the instance is then checked and stored before the transaction:
        its key is its own, so storing it early can touch nothing already accepted)."""
        with self._recording(input_key(job_id, sop_uid)) as recorded:
            header = None
            if checked is not None:
                header = self._checked_input(actor, checked, sop_uid, temp)
                recorded.store(temp)
            with self._db.session() as session:
                job = self._jobs.visible(session, actor, job_id)
                self._takes_inputs(actor, job)
                if header is None:
                    header = self._checked_input(actor, job, sop_uid, temp)
                self._jobs.check_room(session, job, sop_uid)
                # Stored before the first write: on SQLite no other writer waits for the
                # fsync, and the study's other uploads go on while this one is stored.
                recorded.store(temp)
                row, opened = self._record_input(session, actor, job, header, temp, recorded)
                recorded.done = True
        if opened:
            self._jobs.opened(job)
        return row

    @contextmanager
    def _recording(self, key: str) -> Iterator[_Recording]:
        """Keep the blob store in step with the rows around an upload's transaction.

        A blob stored for an upload whose transaction then failed or was refused (the job
        opened or ended meanwhile) is deleted at once: its key is the upload's own, so no row
        names it. After the commit, the blob of the copy it replaced goes. A failure while
        committing leaves the blob (the commit may have happened); retention removes the job's
        folder in the end.
        """
        recording = _Recording(self._blobs, key)
        try:
            yield recording
        except BaseException:
            if recording.stored and not recording.done:
                forget(self._blobs, key)
            raise
        if recording.replaced is not None and recording.replaced != key:
            forget(self._blobs, recording.replaced)

    def _record_input(
        self,
        session: Session,
        actor: Actor,
        job: Job,
        header: InputHeader,
        temp: TempBlob,
        recorded: _Recording,
    ) -> tuple[JobInput, bool]:
        """The stored instance's row and the job's counts, in the upload's turn at the job;
        whether the job opened with it (`recorded` learns the blob of the copy it replaced)."""
        turn = self._jobs.take_input_turn(session, job)
        replaced = _take_out(
            session, _REPLACED_INPUT, {"job_id": job.id, "uid": header.sop_instance_uid}
        )
        row = JobInput(
            job_id=job.id,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_uid=header.series_uid,
            size=temp.size,
            sha256=temp.sha256,
            blob_key=recorded.key,
        )
        insert_new(session, row)
        self._audit.record_in(
            session,
            actor,
            "create",
            "input",
            f"{job.id}/{header.sop_instance_uid}",
            patient_pseudonym=job.patient_pseudonym,
        )
        opened = self._jobs.count_input(
            session,
            actor,
            job,
            turn,
            added=header.sop_instance_uid,
            size=temp.size,
            replaced_size=replaced.size if replaced is not None else None,
        )
        recorded.replaced = replaced.blob_key if replaced is not None else None
        return row, opened

    def _checked_input(self, actor: Actor, job: Job, sop_uid: str, temp: TempBlob) -> InputHeader:
        """The instance's header, if it may be an input of `job`; a refusal is audited."""
        try:
            return check_input(
                temp.path, job_id=job.id, study_uid=job.study_uid, sop_instance_uid=sop_uid
            )
        except Invalid as exc:
            self._audit.refused(
                actor,
                "create",
                "input",
                f"{job.id}/{sop_uid}",
                exc,
                patient_pseudonym=job.patient_pseudonym,
            )
            raise

    def _may_read_data(
        self, session: Session, actor: Actor, job: Job, lease_token: str | None
    ) -> None:
        """Pixels go to the job's hospital and to the vendor holding its lease, nobody else."""
        if actor.role == OrganisationKind.operator:
            raise Forbidden("operators see job metadata, never images")
        if actor.role == OrganisationKind.vendor:
            if lease_token is None:
                raise Conflict(
                    f"job {job.id}: present the lease token (X-Lease-Token) to read inputs"
                )
            self._jobs.held_by(job, lease_token)

    def list_inputs(self, actor: Actor, job_id: str, lease_token: str | None) -> list[JobInput]:
        with self._audit.reading(actor, "search", "input", job_id) as read:
            job = self._jobs.visible(read.session, actor, job_id)
            self._may_read_data(read.session, actor, job, lease_token)
            rows = list(
                read.session.scalars(
                    select(JobInput).where(JobInput.job_id == job_id).order_by(JobInput.id)
                )
            )
            read.succeeded(patient_pseudonym=job.patient_pseudonym)
        return rows

    def input_blob(
        self,
        actor: Actor,
        job_id: str,
        sop_uid: str,
        lease_token: str | None,
        fetch: Callable[[JobInput], T],
    ) -> T:
        """What `fetch` makes of the input's blob (its bytes, or a stream begun), if the
        caller may read it; fetched inside the audited read, so that a blob gone meanwhile is
        on record as refused, not as read."""
        with self._audit.reading(actor, "read", "input", f"{job_id}/{sop_uid}") as read:
            job, row = self._jobs.visible_with(
                read.session, actor, job_id, _INPUT_OF_JOB, sop_uid=sop_uid
            )
            self._may_read_data(read.session, actor, job, lease_token)
            if job.inputs_swept_at is not None:
                raise NotFound(
                    f"job {job_id}'s inputs were purged at "
                    f"{as_utc(job.inputs_swept_at).isoformat()} (retention)"
                )
            if row is None or row.purged_at is not None:
                raise NotFound(f"job {job_id} has no input {sop_uid}")
            fetched = self._fetched(fetch, row, job_id, f"input {sop_uid}")
            read.succeeded(patient_pseudonym=job.patient_pseudonym)
        return fetched

    def _fetched(self, fetch: Callable[[HeldRow], T], row: HeldRow, job_id: str, what: str) -> T:
        """What `fetch` makes of the row's blob; a blob the store no longer has is answered
        as `_blob_gone` says."""
        try:
            return fetch(row)
        except FileNotFoundError:
            raise self._blob_gone(job_id, row, what) from None

    def _blob_gone(self, job_id: str, row: JobInput | JobResult, what: str) -> NotFound:
        """The answer for the row's blob, which the read found held and the store no longer
        has: replaced meanwhile (the row now names another blob, or is gone: sent again, or
        taken out), purged by retention meanwhile (it deletes the blobs, then marks the
        rows), or lost, which the operator must hear of (`BlobMissing`); a lost input marks
        its job (`Job.inputs_lost_at`), and ends it if it waits in the queue."""
        if isinstance(row, JobInput):
            kind = "input"
            now_held = select(JobInput.blob_key).where(
                JobInput.job_id == job_id, JobInput.sop_instance_uid == row.sop_instance_uid
            )
        else:
            kind = "result"
            now_held = select(JobResult.blob_key).where(
                JobResult.job_id == job_id, JobResult.name == row.name
            )
        ended: Job | None = None
        with self._db.session() as session:
            if session.scalar(now_held) != row.blob_key:
                return NotFound(f"job {job_id}'s {what} was replaced as it was read; read it again")
            job = session.get(Job, job_id)
            purged = job is None or purge_due(job, kind, self._settings, utcnow())
            if not purged and kind == "input":
                ended = self._mark_inputs_lost(session, job_id, what)
        if ended is not None:
            self._jobs.completed(ended)  # its hospital's gateway hears of it now
        if purged:
            return NotFound(f"job {job_id}'s {what} is no longer held (retention)")
        log.error(
            "job %s: its %s is missing from the blob store, though the database holds it and "
            "retention did not take it: the store restored to an earlier moment, or its "
            "objects deleted by something else (a lifecycle rule?)", job_id, what,
        )  # fmt: skip
        return BlobMissing(
            f"job {job_id}'s {what} is missing from the exchange's blob store; the exchange's "
            "operator is alerted"
        )

    def _mark_inputs_lost(self, session: Session, job_id: str, what: str) -> Job | None:
        """Mark an open job, not ended, one of whose inputs the store lost: it cannot be run,
        so its end without a result is the exchange's doing, which the hospital's notice and
        the product's evaluation must not blame on the product. A job still taking inputs can
        have the input sent again, and an ended one ended for what it was: neither is marked.
        One statement, so that a fail or an expiry racing it wins or loses whole.

        A job marked as it waits in the queue (its hospital's read found the input missing)
        ends there (`JobService.end_lost_in_queue`), returned: no worker should claim it only
        to fail on it. A held one is ended by its worker, or where it would be queued again
        (`JobService.release`, `expire_leases`)."""
        now = utcnow()
        marked = execute_core(
            session,
            update(Job)
            .where(
                Job.id == job_id,
                Job.inputs_lost_at.is_(None),
                Job.inputs_complete.is_(True),
                Job.ended_at.is_(None),
            )
            .values(inputs_lost_at=now, updated_at=now)
            .returning(Job.patient_pseudonym),
        ).first()
        if marked is None:
            return None
        self._audit.record_in(
            session, SYSTEM, "update", "job", job_id, patient_pseudonym=marked[0],
            detail=f"inputs lost: its {what} is missing from the blob store",
        )  # fmt: skip
        return self._jobs.end_lost_in_queue(session, job_id)

    # results -------------------------------------------------------------------------------

    async def put_result(
        self,
        actor: Actor,
        job_id: str,
        name: str,
        lease_token: str | None,
        media_type: str,
        body: AsyncIterator[bytes],
        *,
        complete: bool = False,
        length: int | None = None,
    ) -> JobResult:
        """Check and store one result; with `complete`, it is the last and the job ends with it.

        Completing here saves the worker a request, and the result and the job's end share one
        transaction: a result refused or lost is never followed by a completed job.
        """
        if not RESULT_NAME.fullmatch(name):
            raise Invalid(
                f"job {job_id}: result name {name!r} is not allowed (letters, digits, . _ -)"
            )
        if actor.role != OrganisationKind.vendor:
            raise Forbidden("only the vendor holding a job uploads its results")
        if lease_token is None:
            raise Conflict(
                f"job {job_id}: present the lease token (X-Lease-Token) to upload results"
            )
        if len(media_type) > MEDIA_TYPE_CHARACTERS:
            raise Invalid(
                f"job {job_id} result {name}: the Content-Type is {len(media_type)} characters "
                f"long; at most {MEDIA_TYPE_CHARACTERS} are kept (application/dicom or "
                "application/json, with parameters)"
            )
        leased = None
        if length is None or length > CHECK_FIRST_BYTES:
            leased = await run_in_threadpool(self._jobs.check_lease, actor, job_id, lease_token)
        is_summary = media_type.startswith("application/json")
        temp = await self._blobs.receive(body, max_bytes=SUMMARY_LIMIT if is_summary else None)
        upload = ResultUpload(name, lease_token, media_type, is_summary, complete)
        run = self.threads.run if leased is not None else run_in_threadpool
        try:
            return await run(self._commit_result, actor, job_id, upload, temp, leased)
        finally:
            self._blobs.discard(temp)

    def _commit_result(
        self,
        actor: Actor,
        job_id: str,
        upload: ResultUpload,
        temp: TempBlob,
        leased: Job | None = None,
    ) -> JobResult:
        # A large result (its lease checked before it was read: `leased`) is checked and stored
        # before the transaction opens, so that neither a long check nor its trip to the object
        # store holds a database connection; a small one in the transaction, against the job
        # as read there. Its key is its own: storing it early touches nothing accepted before.
        early = self._checked_result(actor, leased, upload, temp) if leased else None
        with self._recording(result_key(job_id, upload.name)) as recorded:
            if early is not None:  # checked already: stored before a connection is taken
                recorded.store(temp)
            with self._db.session() as session:
                row, job = self._record_result(
                    session, actor, job_id, upload, temp, early, recorded
                )
                recorded.done = True
        if upload.complete:
            self._jobs.completed(job)
        return row

    def _record_result(
        self,
        session: Session,
        actor: Actor,
        job_id: str,
        upload: ResultUpload,
        temp: TempBlob,
        early: _Checked | None,
        recorded: _Recording,
    ) -> tuple[JobResult, Job]:
        """The result's row (and the job's end, with `complete`) in the caller's transaction,
        and the job as it now stands; the result is checked and stored here unless that was
        done before (`early`)."""
        # The lease may have run out while the bytes arrived: checked in the transaction that
        # records the result, and kept from the first write on. A refusal is audited in a
        # transaction of its own, before this one holds the job (on SQLite, the database).
        job = self._jobs.held(session, actor, job_id, upload.lease_token)
        checked = early or self._checked_result(actor, job, upload, temp)
        if checked.uids is not None:
            self._refuse_taken_uids(session, actor, job, upload.name, *checked.uids)
        summary = checked.summary
        recorded.store(temp)
        self._jobs.keep_lease(session, job, upload.lease_token)
        replaced = _take_out(session, _REPLACED_RESULT, {"job_id": job.id, "name": upload.name})
        recorded.replaced = replaced.blob_key if replaced is not None else None
        row = JobResult(
            job_id=job.id,
            name=upload.name,
            media_type=upload.media_type,
            size=temp.size,
            sha256=temp.sha256,
            blob_key=recorded.key,
            created_at=utcnow(),
            **checked.columns,
        )
        insert_new(session, row)
        self._audit.record_in(
            session,
            actor,
            "create",
            "result",
            f"{job.id}/{upload.name}",
            patient_pseudonym=job.patient_pseudonym,
            detail=row.kind,
        )
        if upload.complete:
            job = self._jobs.complete_in(
                session, actor, job.id, upload.lease_token, summary, with_result=True
            )
        return row, job

    def _checked_result(
        self, actor: Actor, job: Job, upload: ResultUpload, temp: TempBlob
    ) -> _Checked:
        """What the result check learned. A refusal is audited with the rule it broke."""
        try:
            if upload.is_summary:
                body = temp.path.read_bytes()
                check_summary(
                    body,
                    job_id=job.id,
                    name=f"result {upload.name}",
                    published=functools.partial(self._published_as, job.product_id),
                )
                return _Checked({**_SUMMARY_COLUMNS, "notes": []}, json.loads(body), None)
            check = check_result_file(
                temp.path, job_id=job.id, name=upload.name, study_uid=job.study_uid
            )
        except Invalid as exc:
            self._refused(actor, job, upload.name, exc)
            raise
        columns = {
            "kind": check.kind,
            "sop_class_uid": check.sop_class_uid,
            "sop_instance_uid": check.sop_instance_uid,
            "air_conformant": check.air_conformant,
            "notes": check.notes,
        }
        return _Checked(columns, None, (check.sop_instance_uid, check.series_instance_uid))

    def _refuse_taken_uids(
        self, session: Session, actor: Actor, job: Job, name: str, sop_uid: str, series_uid: str
    ) -> None:
        """A result is a new object in a series of its own. One that took an input's SOP
        Instance UID would be mapped back onto the hospital's own image (the PACS keeps one of
        the two); one in an input's series would be filed among the images as acquired; one
        that took another result's (the same file uploaded under two names) would reach the
        PACS twice as one object, which keeps one or refuses the other."""
        clash = session.execute(
            _INPUT_UIDS, {"job_id": job.id, "sop": sop_uid, "series": series_uid}
        ).first()
        if clash is not None:
            keyword, tag, what = (
                ("SOP Instance UID", "(0008,0018)", "an input instance's")
                if clash.sop_instance_uid == sop_uid
                else ("Series Instance UID", "(0020,000E)", "an input series'")
            )
        elif (
            other := session.scalars(
                _RESULT_UIDS, {"job_id": job.id, "sop": sop_uid, "name": name}
            ).first()
        ) is not None:
            keyword, tag, what = ("SOP Instance UID", "(0008,0018)", f"result {other}'s")
        else:
            return
        exc = Invalid(
            f"job {job.id} result {name}: rule 'own-uids', {keyword} {tag} is {what}: a "
            "result is a new object in a series of its own, with UIDs of its own"
        )
        self._refused(actor, job, name, exc)
        raise exc

    def _published_as(self, product_id: str, version: str) -> bool:
        """Whether the catalogue published the product's version so named (read only for a
        summary naming a version with a space at an end)."""
        with self._db.session() as session:
            return published_as(session, product_id, version)

    def _refused(self, actor: Actor, job: Job, name: str, exc: Invalid) -> None:
        self._audit.refused(
            actor,
            "create",
            "result",
            f"{job.id}/{name}",
            exc,
            patient_pseudonym=job.patient_pseudonym,
        )

    def _results_visible(
        self, session: Session, actor: Actor, job: Job, lease_token: str | None
    ) -> None:
        if actor.role == OrganisationKind.operator:
            raise Forbidden("operators see job metadata, never results")
        if actor.role == OrganisationKind.vendor:
            self._may_read_data(session, actor, job, lease_token)
        elif job.state != JobState.completed:
            raise Conflict(f"job {job.id} is {job.state}; results are available once it completes")

    def list_results(self, actor: Actor, job_id: str, lease_token: str | None) -> list[JobResult]:
        with self._audit.reading(actor, "search", "result", job_id) as read:
            job = self._jobs.visible(read.session, actor, job_id)
            self._results_visible(read.session, actor, job, lease_token)
            rows = list(
                read.session.scalars(
                    select(JobResult).where(JobResult.job_id == job_id).order_by(JobResult.id)
                )
            )
            read.succeeded(patient_pseudonym=job.patient_pseudonym)
        return rows

    def results_of(self, actor: Actor, jobs: Sequence[Job]) -> dict[str, list[JobResult]]:
        """The results of the completed jobs among `jobs`, for the hospital listing them."""
        if actor.role != OrganisationKind.hospital:
            raise Forbidden("only hospitals list jobs with their results")
        completed = {job.id: job for job in jobs if job.state == JobState.completed}
        found: dict[str, list[JobResult]] = {job_id: [] for job_id in completed}
        if not completed:
            return found
        with self._audit.reading(actor, "search", "result", "") as read:
            rows = read.session.scalars(
                select(JobResult)
                .where(JobResult.job_id.in_(list(completed)))
                .order_by(JobResult.job_id, JobResult.id)
            )
            for row in rows:
                found[row.job_id].append(row)
            for job_id, job in completed.items():  # an entry per job: one patient each
                read.succeeded(object_id=job_id, patient_pseudonym=job.patient_pseudonym)
        return found

    def result_blob(
        self,
        actor: Actor,
        job_id: str,
        name: str,
        lease_token: str | None,
        fetch: Callable[[JobResult], T],
    ) -> T:
        """What `fetch` makes of the result's blob, as :meth:`input_blob`."""
        with self._audit.reading(actor, "read", "result", f"{job_id}/{name}") as read:
            job, row = self._jobs.visible_with(
                read.session, actor, job_id, _RESULT_OF_JOB, name=name
            )
            self._results_visible(read.session, actor, job, lease_token)
            if row is not None and row.purged_at is not None:
                raise NotFound(
                    f"job {job_id}'s result {name!r} was purged at "
                    f"{as_utc(row.purged_at).isoformat()} (retention)"
                )
            if row is None:
                raise NotFound(f"job {job_id} has no result {name!r}")
            fetched = self._fetched(fetch, row, job_id, f"result {name!r}")
            read.succeeded(patient_pseudonym=job.patient_pseudonym)
        return fetched
