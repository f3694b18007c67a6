"""The worker loop: claim, heartbeat while running, upload, complete — or fail with a reason."""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aifi.vendor.client import (
    ExchangeHTTPError,
    InputGone,
    Lease,
    LeaseLost,
    Renewal,
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
#: The exchange's storage has no room (507), or is down (503: its object store or database,
#: past the client's own retries of about 20 s): a finished result is kept and offered again.
STORAGE_TROUBLE = {507: "has no room for", 503: "cannot store"}
#: Seconds a finished result is kept and offered again while the exchange's storage is in
#: trouble (`STORAGE_TROUBLE`), and the first and longest pauses between tries.
STORAGE_WAIT_SECONDS = 900.0
STORAGE_FIRST_PAUSE = 1.0
STORAGE_LONGEST_PAUSE = 60.0


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
            except Exception:  # a missed beat is retried at the next tick
                log.warning("heartbeat for job %s failed", self._lease.job_id, exc_info=True)
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
    ) -> None:
        """`workdir` holds each job's inputs and outputs while it runs (the system's temporary
        folder if None): put it on a disk with room for a few studies."""
        if hand_back_pause < 0 or storage_wait_seconds < 0:
            raise ValueError("the hand-back pause and the storage wait are seconds, not negative")
        self.client = client
        self.handler = handler
        self.product_ids = product_ids or []
        self.lease_seconds = lease_seconds
        self.workdir = workdir
        self.processed = 0
        self.hand_back_pause = hand_back_pause
        self.storage_wait_seconds = storage_wait_seconds
        self._handed_back = False

    def run(self, stop: threading.Event, wait_seconds: float = 5.0) -> None:
        """Process jobs until `stop` is set; a failing exchange is retried, never fatal."""
        while not stop.is_set():
            try:
                self.run_once(wait_seconds=wait_seconds)
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
                else:
                    log.warning("exchange error: %s", exc)
                    stop.wait(1.0)
            except httpx.TransportError as exc:
                log.warning("exchange unreachable: %s", exc)
                stop.wait(1.0)
            except OSError as exc:
                log.warning("the worker's own files: %s", exc)
                stop.wait(1.0)

    def run_once(self, wait_seconds: float = 0.0) -> str | None:
        """Claim and process one job; returns its id, or None when there was none."""
        lease = self.client.claim(
            self.product_ids,
            lease_seconds=self.lease_seconds,
            wait_seconds=wait_seconds,
            start=True,
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
                prepared = self._prepare(lease, folder)
                if prepared is None:
                    return
                inputs, output_dir = prepared
                try:
                    result = self.handler(
                        JobContext(job=lease.job, inputs=inputs, output_dir=output_dir)
                    )
                except ProductError as exc:
                    self._fail(lease, str(exc) or "the product refused the study")
                    return
                except Exception as exc:  # a product bug must fail the job, not the worker
                    if isinstance(exc, OSError) and exc.errno in WORKER_TROUBLE:
                        self._hand_back(lease, f"the product could not run here: {exc}")
                        return
                    log.exception("job %s: product raised", lease.job_id)
                    self._fail(lease, f"{type(exc).__name__}: {exc}")
                    return
                if beat.lost.is_set():
                    log.warning("job %s: lease lost while running; result dropped", lease.job_id)
                    return
                try:
                    self._hand_in_patiently(lease, result, beat.lost)
                except ExchangeHTTPError as exc:
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
        """The lease is gone, or the job ended with this attempt: an upload that completed it,
        whose answer was lost, is sent again by the client and refused. Telling the two apart
        spares an engineer a search for a fault that did not happen."""
        try:
            job = self.client.job(lease.job_id)
        except (ExchangeHTTPError, httpx.TransportError, ValueError):  # ValueError: not JSON
            job = {}
        if job.get("state") == "completed" and job.get("attempts") == lease.job.get("attempts"):
            log.info(
                "job %s completed: the exchange ended it with this worker's results; its "
                "answer to the last upload was lost on the way", lease.job_id,
            )  # fmt: skip
            return
        log.warning(
            "job %s: lease lost (%s); another worker will take it", lease.job_id, exc.detail
        )

    def _prepare(self, lease: Lease, folder: Path) -> tuple[list[Path], Path] | None:
        """The job's inputs in `folder` and an empty folder for the product's outputs; None
        when the job could not be prepared and was failed or handed back, so that it is not
        left held, unfinished, until its lease runs out while this worker claims the next."""
        try:
            inputs = self.client.download_inputs(lease, folder / "inputs")
            output_dir = folder / "outputs"
            output_dir.mkdir()
        except InputGone as exc:  # no worker could run the job
            self._fail(
                lease, f"input {exc.sop_instance_uid} is no longer at the exchange: {exc.detail}"
            )
            return None
        except ExchangeHTTPError as exc:
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
            self.client.release(lease, reason)
        except (ExchangeHTTPError, httpx.TransportError) as exc:
            log.warning(
                "job %s: not handed back (%s); it is offered again when its lease runs out",
                lease.job_id, exc,
            )  # fmt: skip

    def _hand_in_patiently(
        self, lease: Lease, result: ProductResult, lost: threading.Event
    ) -> None:
        """Hand the results in; while the exchange's storage is full (507) or down (503), keep
        them and try again, heartbeats going on, for up to `storage_wait_seconds`.

        The operator is paged (BlobStoreFull, BlobStoreUnavailable, ExchangeDatabaseDown) and
        sees to it; the result is ready, so running the product again on another worker, after
        the lease ran out, would only repeat the work and count attempts against the job.
        """
        deadline = time.monotonic() + self.storage_wait_seconds
        pause = STORAGE_FIRST_PAUSE
        while True:
            try:
                self._hand_in(lease, result)
                return
            except ExchangeHTTPError as exc:
                trouble = STORAGE_TROUBLE.get(exc.status)
                if trouble is None or lost.is_set() or time.monotonic() + pause > deadline:
                    raise
                log.warning(
                    "job %s: the exchange %s the result (%s); trying again in %.0f s",
                    lease.job_id, trouble, exc.detail, pause,
                )  # fmt: skip
            if lost.wait(pause):  # the lease went meanwhile: another worker has the job
                raise LeaseLost(
                    409, f"the lease ran out while the exchange {trouble} the result",
                    "PUT", f"/jobs/{lease.job_id}/results",
                )  # fmt: skip
            pause = min(pause * 2, STORAGE_LONGEST_PAUSE)

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
        self.client.fail(lease, reason)
