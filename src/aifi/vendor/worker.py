"""The worker loop: claim, heartbeat while running, upload, complete — or fail with a reason."""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aifi.http import ExchangeNotTrusted, no_such_job
from aifi.product_versions import fit_as_new_version, kept_version, version_problem
from aifi.vendor.client import (
    LONGEST_LEASE_SECONDS,
    ExchangeHTTPError,
    InputGone,
    Lease,
    LeaseLost,
    Renewal,
    UnexpectedAnswer,
    VendorClient,
)

log = logging.getLogger(__name__)

#: Exchange answers that mean "this result is not acceptable" rather than "try again".
REFUSALS = frozenset({400, 413, 415, 422})
#: What the worker or the product may meet that is the worker's trouble, not the study's: the
#: job is handed back rather than failed. Other errors are not: a job handed back is not a
#: failed attempt, so a bug handed back would go round for ever.
WORKER_TROUBLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM})
#: Seconds a worker that handed a job back waits before it claims again, so that it does not
#: take the same job straight back while a healthy worker could have it.
HAND_BACK_PAUSE = 30.0
#: Exchange answers that the worker itself is not let in (its key wrong or revoked, its
#: organisation suspended): no retry a second later changes them.
NOT_LET_IN = frozenset({401, 403})
#: Seconds between tries while the exchange does not let the worker in: each refusal is an
#: entry in the exchange's access log, so a wrong key must not knock every second.
NOT_LET_IN_PAUSE = 60.0
#: The exchange cannot take a finished result for now, past the client's own retries of about
#: 20 s: its storage has no room (507) or is down (503: its object store or database), or it
#: is out of reach (502/504 from its load balancer; a connection that fails is the same
#: trouble). The result is kept and offered again. Not a 500: that is a fault in the
#: exchange which the same result may meet every time, so waiting would only hold the job.
STORAGE_TROUBLE = {
    507: "has no room for",
    503: "cannot store",
    502: "cannot be reached to take",
    504: "cannot be reached to take",
}
#: Seconds a finished result is kept and offered again while the exchange cannot take it
#: (`STORAGE_TROUBLE`), and the first and longest pauses between tries.
STORAGE_WAIT_SECONDS = 900.0
STORAGE_FIRST_PAUSE = 1.0
STORAGE_LONGEST_PAUSE = 60.0
#: Seconds to the next heartbeat after one failed (after the client's own retries): soon, so
#: that an exchange back from an outage renews the lease before it runs out.
BEAT_AGAIN_AFTER = 1.0
#: Seconds the run loop waits after trouble at the exchange, or an error nobody foresaw,
#: before it claims again.
TROUBLE_PAUSE = 1.0


class ProductError(Exception):
    """Raised by a product for a study it cannot process; the message is the job's reason."""


@dataclass(frozen=True)
class ResultFile:
    path: Path
    name: str | None = None
    media_type: str = "application/dicom"


@dataclass
class ProductResult:
    files: list[ResultFile]
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobContext:
    """What a product gets: the job's metadata, its input files, and a folder to write into."""

    job: dict[str, Any]
    inputs: list[Path]
    output_dir: Path


Handler = Callable[[JobContext], ProductResult]


class _Heartbeat:
    """Renews the lease at a third of its length until stopped, so slow products keep the job."""

    def __init__(self, client: VendorClient, lease: Lease, every: float) -> None:
        self._client = client
        self._lease = lease
        self._every = every
        self._stop = threading.Event()
        self.lost = threading.Event()
        #: The exchange no longer knows the job at all (`no_such_job`); `lost` is set too.
        self.gone = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{lease.job_id}", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        wait = self._every
        while not self._stop.wait(wait):
            try:
                renewal = self._client.heartbeat(self._lease)
            except LeaseLost:
                self.lost.set()
                return
            except Exception as exc:
                if no_such_job(exc):
                    _say_job_gone(self._lease, "its heartbeat was answered 404", "its work stops")
                    self.gone.set()
                    self.lost.set()
                    return
                # The exchange out of reach or in trouble: not a whole interval to the next try
                # (counted from the failure, it could come after the lease ran out, though the
                # exchange was back well before). A refusal (a revoked key, a 4xx, a 500) is
                # not knocked on every second: each may be an entry in the access log.
                wait = min(self._every, BEAT_AGAIN_AFTER) if _passing(exc) else self._every
                foreseen = isinstance(exc, ExchangeHTTPError | httpx.TransportError)
                log.warning(
                    "heartbeat for job %s failed (%s); trying again in %.0f s",
                    self._lease.job_id, exc, wait, exc_info=not foreseen,
                )  # fmt: skip
                continue
            wait = self._next_beat(renewal)

    def _next_beat(self, renewal: Renewal) -> float:
        """Seconds to the next beat: sooner than usual if the exchange granted a shorter lease
        than asked. Judged by the length granted, not by its end, so that the worker's clock
        and the exchange's need not agree."""
        if renewal.lease_seconds is None:
            return self._every
        return min(self._every, renewal.lease_seconds / 3)


class Worker:
    def __init__(
        self,
        client: VendorClient,
        handler: Handler,
        *,
        product_ids: list[str] | None = None,
        lease_seconds: float = 60.0,
        workdir: Path | None = None,
        hand_back_pause: float = HAND_BACK_PAUSE,
        storage_wait_seconds: float = STORAGE_WAIT_SECONDS,
        product_versions: Mapping[str, str] | None = None,
    ) -> None:
        """`workdir` holds each job's inputs and outputs while it runs (the system's temporary
        folder if None): put it on a disk with room for a few studies.

        `product_versions` names the version of each product this worker runs, as the
        catalogue names it. A job it fails is then counted under that version by the
        exchange's evaluation: a worker still running 1.0 after the vendor published 2.0
        fails jobs created for 2.0. (A result's summary names its own version.)"""
        if hand_back_pause < 0 or storage_wait_seconds < 0:
            raise ValueError("the hand-back pause and the storage wait are seconds, not negative")
        for product_id, version in (product_versions or {}).items():
            # Refused now: the exchange would refuse every failure this worker reports.
            if kept_version(version) is None:
                raise ValueError(
                    f"product {product_id!r}: {version_problem(version, 'this worker runs')}"
                )
            if not fit_as_new_version(version):
                log.warning(
                    "product %r: version %r has a space at an end: the exchange takes it only "
                    "as the catalogue published it so, before it refused such versions",
                    product_id, version,
                )  # fmt: skip
        if not 0 < lease_seconds <= LONGEST_LEASE_SECONDS:
            # Refused now: the exchange would refuse every claim (422), and the worker would
            # only log it, once a second, for ever.
            raise ValueError(
                f"a lease of {lease_seconds:g} s: the exchange grants more than 0 and at most "
                f"{LONGEST_LEASE_SECONDS:.0f} s; a slower product keeps its job by heartbeats"
            )
        self.client = client
        self.handler = handler
        self.product_ids = product_ids or []
        self.lease_seconds = lease_seconds
        self.workdir = workdir
        self.processed = 0
        self.hand_back_pause = hand_back_pause
        self.storage_wait_seconds = storage_wait_seconds
        self.product_versions = dict(product_versions or {})
        self._handed_back = False

    def run(self, stop: threading.Event, wait_seconds: float = 5.0) -> None:
        """Process jobs until `stop` is set; a failing exchange is retried, never fatal.

        A product's own errors fail its job (`process`); what reaches this loop is trouble at
        the exchange, on the way to it, or in the worker's own files, and, last, anything
        nobody foresaw: each is logged and the worker claims again after a pause, since a
        worker that ends leaves its vendor's queue unserved until someone restarts it."""
        while not stop.is_set():
            try:
                self.run_once(wait_seconds=wait_seconds, stop=stop)
                if self._handed_back:
                    self._handed_back = False
                    stop.wait(self.hand_back_pause)
            except ExchangeHTTPError as exc:
                if exc.status in NOT_LET_IN:
                    log.error(
                        "the exchange does not let this worker in (%s); trying again in %.0f s "
                        "(aifi worker --check shows what to change)", exc, NOT_LET_IN_PAUSE,
                    )  # fmt: skip
                    stop.wait(NOT_LET_IN_PAUSE)
                elif isinstance(exc, UnexpectedAnswer):
                    log.warning(
                        "the exchange's answer was not the API's (%s): something in front of "
                        "it answered, or --exchange is not its address", exc,
                    )  # fmt: skip
                    stop.wait(TROUBLE_PAUSE)
                else:
                    log.warning("exchange error: %s", exc)
                    stop.wait(TROUBLE_PAUSE)
            except httpx.TransportError as exc:
                log.warning("exchange unreachable: %s", exc)
                stop.wait(TROUBLE_PAUSE)
            except OSError as exc:
                log.warning("the worker's own files: %s", exc)
                stop.wait(TROUBLE_PAUSE)
            except Exception:  # the last resort: a bug in the worker or a library it uses
                log.exception("the worker met an error nobody foresaw; claiming again shortly")
                stop.wait(TROUBLE_PAUSE)

    def run_once(
        self, wait_seconds: float = 0.0, stop: threading.Event | None = None
    ) -> str | None:
        """Claim and process one job; returns its id, or None when there was none. Once
        `stop` is set, a claim that cannot connect gives up (`VendorClient.claim`); a job
        claimed is seen through."""
        lease = self.client.claim(
            self.product_ids,
            lease_seconds=self.lease_seconds,
            wait_seconds=wait_seconds,
            start=True,
            stop=stop,
        )
        if lease is None:
            return None
        self.process(lease)
        self.processed += 1
        return lease.job_id

    def process(self, lease: Lease) -> None:
        try:
            folder = Path(
                tempfile.mkdtemp(prefix=f"aifi-job-{lease.job_id[:8]}-", dir=self.workdir)
            )
        except OSError as exc:
            self._hand_back_for_own_disk(lease, f"the worker has no folder to work in: {exc}", exc)
            return
        try:
            with _Heartbeat(self.client, lease, self.lease_seconds / 3) as beat:
                if lease.job.get("state") != "in-progress":  # claimed without `start`
                    self.client.heartbeat(lease)  # moves the job to in-progress
                prepared = self._prepare(lease, folder, beat)
                if prepared is None:
                    return
                inputs, output_dir = prepared
                try:
                    # `object`: a vendor's product is any callable, typed or not.
                    result: object = self.handler(
                        JobContext(job=lease.job, inputs=inputs, output_dir=output_dir)
                    )
                except ProductError as exc:
                    if not beat.gone.is_set():  # else said when found: nothing to fail
                        self._fail(lease, str(exc) or "the product refused the study")
                    return
                except Exception as exc:  # a product bug must fail the job, not the worker
                    if isinstance(exc, OSError) and exc.errno in WORKER_TROUBLE:
                        if not beat.gone.is_set():
                            self._hand_back(lease, f"the product could not run here: {exc}")
                        return
                    log.exception("job %s: product raised", lease.job_id)
                    if not beat.gone.is_set():
                        self._fail(lease, f"{type(exc).__name__}: {exc}")
                    return
                if beat.gone.is_set():  # said when it was found: nothing to hand in or fail
                    return
                if not isinstance(result, ProductResult):
                    # A bug in the product, as an exception is: the job fails now, so the
                    # hospital hears of it at once rather than after the lease runs out.
                    reason = _not_a_result(result)
                    log.error("job %s: %s", lease.job_id, reason)
                    self._fail(lease, reason)
                    return
                if beat.lost.is_set():
                    log.warning("job %s: lease lost while running; result dropped", lease.job_id)
                    return
                try:
                    self._hand_in_patiently(lease, result, beat)
                except ExchangeHTTPError as exc:
                    if no_such_job(exc):
                        _say_job_gone(lease, str(exc), "its result is dropped")
                        return
                    if isinstance(exc, LeaseLost) or exc.status not in REFUSALS:
                        raise
                    # The exchange refused what the product made: the hospital should hear
                    # why now, not after the lease runs out.
                    self._fail(lease, f"the exchange refused a result: {exc.detail}")
        except LeaseLost as exc:
            self._say_lease_lost(lease, exc)
        except OSError as exc:
            if exc.errno not in WORKER_TROUBLE:
                raise
            # This worker's own disk (its inputs, its results): not the study's fault.
            self._hand_back(lease, f"the worker could not write its files: {exc}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _say_lease_lost(self, lease: Lease, exc: LeaseLost) -> None:
        """The lease is gone, or the job ended with this attempt: a call that ended it (the
        upload that completed it, a `fail`), whose answer was lost, is sent again by the
        client and refused. Telling the two apart spares an engineer a search for a fault
        that did not happen."""
        job = self._job_now(lease)
        if job.get("attempts") == lease.job.get("attempts"):
            if job.get("state") == "completed":
                log.info(
                    "job %s completed: the exchange ended it with this worker's results; its "
                    "answer to the last upload was lost on the way", lease.job_id,
                )  # fmt: skip
                return
            if job.get("state") == "failed":
                log.info(
                    "job %s failed, as this worker told the exchange (%s); its answer was "
                    "lost on the way", lease.job_id, job.get("reason"),
                )  # fmt: skip
                return
        log.warning(
            "job %s: lease lost (%s); another worker will take it", lease.job_id, exc.detail
        )

    def _job_now(self, lease: Lease) -> dict[str, Any]:
        """The job as the exchange has it now; empty when it cannot be asked."""
        try:
            return self.client.job(lease.job_id)
        except (ExchangeHTTPError, httpx.TransportError):
            return {}

    def _was_handed_back(self, lease: Lease) -> bool:
        """Whether the job was handed back at this worker's attempt, though the exchange's
        answer to `release` was lost: the hand-back takes the claim's attempt back, so the
        job stands at one attempt fewer, waiting (or failed, when the exchange's store lost
        one of its inputs: such a job ends as it is handed back), or at the same attempt held
        anew by the worker that claimed it next (a lease that ran out would leave it one
        more)."""
        job = self._job_now(lease)
        ours, now = lease.job.get("attempts"), job.get("attempts")
        if not isinstance(ours, int) or not isinstance(now, int):
            return False
        waiting = job.get("state") == "requested" and now == ours - 1
        taken_again = job.get("state") in ("accepted", "in-progress") and now == ours
        # A job whose input the exchange's store lost ends as it is handed back.
        ended_for_lost = (
            job.get("state") == "failed"
            and job.get("inputs_lost_at") is not None
            and now == ours - 1
        )
        return waiting or taken_again or ended_for_lost

    def _prepare(
        self, lease: Lease, folder: Path, beat: _Heartbeat
    ) -> tuple[list[Path], Path] | None:
        """The job's inputs in `folder` and an empty folder for the product's outputs; None
        when the job could not be prepared and was failed or handed back, so that it is not
        left held, unfinished, until its lease runs out while this worker claims the next, or
        is gone (its heartbeat may have found it so first, and said it)."""
        try:
            inputs = self.client.download_inputs(lease, folder / "inputs")
            output_dir = folder / "outputs"
            output_dir.mkdir()
        except ExchangeHTTPError as exc:
            if no_such_job(exc):  # not an input gone but the job itself: nothing to fail
                if not beat.gone.is_set():
                    _say_job_gone(lease, str(exc), "the product was not run")
                return None
            if isinstance(exc, InputGone):  # no worker could run the job
                self._fail(
                    lease,
                    f"input {exc.sop_instance_uid} is no longer at the exchange: {exc.detail}",
                )
                return None
            if isinstance(exc, LeaseLost) or exc.status in NOT_LET_IN:
                raise  # the run loop says what the worker must change, and waits
            # After the client's own retries: another worker, or this one later, may fare
            # better; the study is not at fault.
            self._hand_back(lease, f"the exchange did not give the job's inputs: {exc}")
            return None
        except OSError as exc:
            self._hand_back_for_own_disk(lease, f"the worker could not write its files: {exc}", exc)
            return None
        return inputs, output_dir

    def _hand_back_for_own_disk(self, lease: Lease, reason: str, error: OSError) -> None:
        """The worker's own folder failed it: hand the job back, not fail it (the study is
        fine). A full disk clears by itself; anything else (read-only, no permission, an I/O
        error, not a folder) will fail every job until an engineer sees to it, so it is logged
        as an error."""
        full = error.errno in WORKER_TROUBLE
        self._hand_back(lease, reason, level=logging.WARNING if full else logging.ERROR)

    def _hand_back(self, lease: Lease, reason: str, *, level: int = logging.WARNING) -> None:
        """Give the job back for any worker to claim now, and pause before claiming again."""
        log.log(level, "job %s handed back: %s", lease.job_id, reason)
        self._handed_back = True
        try:
            answer = self.client.release(lease, reason)
            if answer.get("state") == "failed":  # not queued again: an input is lost
                log.warning("job %s ended as it was handed back: %s", lease.job_id,
                            answer.get("reason"))  # fmt: skip
        except (ExchangeHTTPError, httpx.TransportError) as exc:
            if no_such_job(exc):
                _say_job_gone(lease, str(exc), "there is nothing to hand back")
                return
            if isinstance(exc, LeaseLost) and self._was_handed_back(lease):
                log.info(
                    "job %s: the exchange took the hand-back; its answer was lost on the way",
                    lease.job_id,
                )  # fmt: skip
                return
            log.warning(
                "job %s: not handed back (%s); it is offered again when its lease runs out",
                lease.job_id, exc,
            )  # fmt: skip

    def _hand_in_patiently(self, lease: Lease, result: ProductResult, beat: _Heartbeat) -> None:
        """Hand the results in; while the exchange cannot take them (`STORAGE_TROUBLE`, or
        it cannot be reached), keep them and try again, heartbeats going on, for up to
        `storage_wait_seconds`, never sooner than its `Retry-After`. If it still cannot, hand
        the job back, for this worker or another to run when the exchange is back.

        The operator is paged (BlobStoreFull, BlobStoreUnavailable, ExchangeDatabaseDown,
        ExchangeReplicaDown) and sees to it; the result is ready, so running the product
        again on another worker, after the lease ran out, would only repeat the work and
        count attempts against the job. A job the heartbeat found gone (`no_such_job`: said
        then) has nowhere to take the result: it is dropped quietly.
        """
        deadline = time.monotonic() + self.storage_wait_seconds
        backoff = STORAGE_FIRST_PAUSE
        while True:
            try:
                self._hand_in(lease, result)
                return
            except (ExchangeHTTPError, httpx.TransportError) as exc:
                trouble = _hand_in_trouble(exc)
                if beat.gone.is_set():
                    return
                if trouble is None or beat.lost.is_set():
                    raise
                wait = _storage_pause(backoff, exc)
                if time.monotonic() + wait > deadline:
                    self._hand_back(
                        lease,
                        f"the exchange {trouble} the result for {self.storage_wait_seconds:.0f} "
                        f"s: {exc}",
                    )
                    return
                log.warning(
                    "job %s: the exchange %s the result (%s); trying again in %.0f s",
                    lease.job_id, trouble, exc, wait,
                )  # fmt: skip
            if beat.lost.wait(wait):  # the lease went meanwhile: another worker has the job
                if beat.gone.is_set():
                    return
                raise LeaseLost(
                    409, f"the lease ran out while the exchange {trouble} the result",
                    "PUT", f"/jobs/{lease.job_id}/results",
                )  # fmt: skip
            backoff = min(backoff * 2, STORAGE_LONGEST_PAUSE)

    def _hand_in(self, lease: Lease, result: ProductResult) -> None:
        """Upload every result; the last upload also completes the job (one request fewer)."""
        files = list(result.files)
        for number, item in enumerate(files, start=1):
            last = number == len(files) and not result.summary
            self.client.upload_result(
                lease, item.path, name=item.name, media_type=item.media_type, complete=last
            )
        if result.summary:
            self.client.upload_summary(lease, result.summary, complete=True)
        elif not files:
            self.client.complete(lease, None)  # the exchange refuses it: nothing to hand in

    def _fail(self, lease: Lease, reason: str) -> None:
        log.info("job %s failed: %s", lease.job_id, reason)
        try:
            version = self.product_versions.get(str(lease.job.get("product_id")))
            self.client.fail(lease, reason, product_version=version)
        except ExchangeHTTPError as exc:
            if not no_such_job(exc):
                raise
            _say_job_gone(lease, str(exc), "its failure has nowhere to go")


def _not_a_result(returned: object) -> str:
    """The reason for a job whose product returned something other than a ProductResult:
    what it returned, by its type only (its content may be large, or hold what the log and
    the hospital should not see), and what it should have returned."""
    kind = "None" if returned is None else f"a value of type {type(returned).__qualname__}"
    return (
        f"the product returned {kind}, not the ProductResult (aifi.vendor.ProductResult) a "
        "product must return"
    )


def _say_job_gone(lease: Lease, answer: str, outcome: str) -> None:
    """The exchange no longer knows the job: it was restored to a moment before the job was
    made. Whatever the worker made of it has nowhere to go (`outcome` says what); the
    hospital's gateway sends the study again as a new job, which any worker claims. Nothing
    to fail or hand back."""
    log.warning(
        "job %s: the exchange no longer knows the job (%s; restored to an earlier moment?); "
        "%s, the hospital's gateway sends the study again",
        lease.job_id, answer, outcome,
    )  # fmt: skip


def _passing(exc: Exception) -> bool:
    """Whether a failed call met trouble that passes by itself (the exchange or the way to it
    down, a page not the API's), rather than a refusal the same call meets again."""
    if isinstance(exc, ExchangeNotTrusted):
        return False
    if isinstance(exc, httpx.TransportError | UnexpectedAnswer):
        return True
    return isinstance(exc, ExchangeHTTPError) and exc.status in (502, 503, 504)


def _hand_in_trouble(exc: ExchangeHTTPError | httpx.TransportError) -> str | None:
    """What keeps the exchange from taking a finished result for now, put for the log; None
    when waiting would not help: a refusal, a lost lease, a certificate that does not verify,
    a fault in the exchange (500) that the same result may meet every time."""
    if isinstance(exc, ExchangeNotTrusted):
        return None
    if isinstance(exc, httpx.TransportError):
        return "cannot be reached to take"
    if isinstance(exc, UnexpectedAnswer):
        return "did not answer as its API does when offered"
    return STORAGE_TROUBLE.get(exc.status)


def _storage_pause(backoff: float, exc: ExchangeHTTPError | httpx.TransportError) -> float:
    """Seconds before the result is offered again: the back-off, or what the exchange's
    `Retry-After` asked if that is longer, at most `STORAGE_LONGEST_PAUSE`. Every worker
    offering its results again at once to a store that said when it could take them only
    adds to its trouble."""
    asked = exc.retry_after if isinstance(exc, ExchangeHTTPError) else None
    return max(backoff, min(asked or 0.0, STORAGE_LONGEST_PAUSE))
