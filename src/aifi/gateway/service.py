"""The gateway at work: receive, assemble, route, pseudonymise, upload, fetch, re-identify,
deliver. Each stage is a thread that waits on its own event and resumes from the state
database after a restart."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

import httpx
import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import evt

from aifi.app_thread import AppThread
from aifi.durable import replace_durably
from aifi.file_lock import held_alone
from aifi.gateway.adoption import Adoptions
from aifi.gateway.backup import RESTORE_STAGING, WORKDIR_LOCK, restore_cut_off
from aifi.gateway.config import ConfigError, DicomWebListener, GatewayConfig
from aifi.gateway.delays import DelayWatch
from aifi.gateway.dimse import (
    handle_echo,
    send_files,
    start_scp,
    storage_scp_ae,
    tighten_polling,
    unwritten,
)
from aifi.gateway.disclosures import Action, Anchor, DisclosureLog, NotRecorded
from aifi.gateway.exchange_client import ENDED_PAGE, CancelReason, GatewayClient
from aifi.gateway.lost_jobs import ASK_AFTER_SECONDS, LISTED_JOB, Outcome, SubmittedWatch
from aifi.gateway.metrics import MetricsServer, start_metrics_server
from aifi.gateway.notice_queue import NO_LONGER_SENT, NoticeSender, QueuedNotice
from aifi.gateway.notify import Notifier
from aifi.gateway.notify.notice import IDENTITY_KEYWORDS
from aifi.gateway.pseudonymise import (
    AlreadyOpen,
    Halted,
    NothingNew,
    NothingToSend,
    StrayInputs,
    pseudonymise_and_send,
    stray_inputs_reason,
)
from aifi.gateway.receipt import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    STUDY_MISMATCH,
    SUCCESS,
    UID,
    Receipt,
    Refusals,
)
from aifi.gateway.reidentify import reidentify_file
from aifi.gateway.routing import route_study
from aifi.gateway.secret import VAULT, keep_fingerprint, open_secret
from aifi.gateway.state import (
    GatewayState,
    LostByStore,
    ReceivedInstance,
    inputs_digest,
    lost_by_store_key,
    sent_again_for_store_loss,
    started_over_key,
)
from aifi.gateway.stow import BASE as STOW_BASE
from aifi.gateway.stow import stow_app
from aifi.gateway.vault import Vault
from aifi.http import ExchangeHTTPError, blob_gone, blob_lost
from aifi.results.delivery import NOT_DELIVERED_BECAUSE, Delivery
from aifi.results.key_image import render_result_key_image
from aifi.results.summary import ResultSummary

log = logging.getLogger(__name__)

#: Header attributes the gateway reads at receipt (routing needs no more).
HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "BodyPartExamined", "StudyDescription", "SeriesDescription",
]  # fmt: skip
#: The exchange does not take the gateway's API key (revoked, expired, rotated and not
#: replaced, mistyped): an outage of the gateway's credentials, which says nothing about any
#: job. Jobs wait for the key, as for an exchange that is down. (A 403 is the exchange's
#: answer about the job: its product suspended, the hospital not subscribed to it.)
KEY_REFUSED = 401
#: An exchange refusal (4xx but these and `KEY_REFUSED`) will not change on retry: the job is
#: refused for good.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
#: Seconds before a product whose uptake counts or manifest the exchange refused is tried
#: again for uptake.
UPTAKE_REFUSED_SECONDS = 3600.0
#: Seconds between looks for studies past `retain_hours`.
RETENTION_SWEEP_SECONDS = 60.0
#: Why a restored job's notice still to be retried is given up: the disk lost since brought
#: the job home, and its notices went out then (its acknowledgement waited for them).
SENT_BY_THE_LOST_DISK = "given up: sent by the gateway's disk that the restore replaced"
#: The longest a study waits for assembly to be tried again after a failure (a full disk):
#: short, as a stroke study waits with it.
ASSEMBLY_RETRY_SECONDS = 30.0
#: Seconds between looks at the disclosure log's newest entry, written to the journal when it
#: moved: entries newer than the last anchor in the hospital's log collector could be cut off
#: unseen, so this is the most a tampered log can hide.
ANCHOR_SECONDS = 600.0
#: How long a closing gateway waits for a notice thread whose send the closed connections cut
#: short to record how it went (milliseconds, normally).
NOTICES_AFTER_CLOSE_SECONDS = 5.0
#: What bringing a job home may meet and outlast: the exchange's refusal or absence, the
#: gateway's own disk full or failing, a disclosure that cannot be recorded yet.
PASSING_FAILURES = (ExchangeHTTPError, httpx.TransportError, OSError, sqlite3.Error, NotRecorded)


class ResultsPurged(Exception):
    """The exchange purged a job's results before this gateway fetched them: waiting and
    asking again cannot bring them back."""

    delivery = Delivery.purged


class ResultsLost(ResultsPurged):
    """A job's result is missing from the exchange's blob store, though retention did not
    take it (restored to an earlier moment): it cannot be fetched, and the gateway sends the
    study again when it can (`_send_again_for_lost_results`)."""

    delivery = Delivery.lost


class ResultsRefused(Exception):
    """A job's results cannot be filed in the hospital's PACS as they are (unreadable, reusing
    the study's own UIDs, a name no result may have): fetched again they would be the same, so
    the job ends with the reason and nothing of it is delivered."""

    delivery = Delivery.unfileable


class ResultsUnmapped(ResultsRefused):
    """A job's results cannot be mapped back to the patient's study: the vault no longer
    knows it, or the exchange names another study for the job. Not the vendor's doing."""

    delivery = Delivery.unmapped


#: A result's name as the exchange allows it; the gateway keeps it as a file name.
RESULT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class BroughtHome(Halted):
    """The exchange's job was brought home, and acknowledged, by this gateway before it was
    restored from a backup that did not know it: nothing is to be sent, or brought home,
    again (its results are in the PACS)."""

    WHEN = "the gateway was restored from a backup"


class StartsAnew(Halted):
    """The exchange's job this round's key finds is not this round's to take: the hospital let
    it go unbrought, or adopted it as another job, which ended without results or holds other
    instances (`aifi gateway-unknown-jobs`). The round goes as a new job (the message: why),
    for its results to come home."""


def _brought_home(local: Mapping[str, Any]) -> bool:
    """Whether a job's end was brought home on an earlier pass: delivered, or ended with what
    became of its results on its row. A completed job an older version ended undelivered has
    no reason there (NULL, as for one delivered): it is brought home again, as it was then."""
    if local["result_seen_at"] is None:
        return False
    if local["state"] == "delivered":
        return True
    return local["state"] == "ended" and (
        local["exchange_state"] != "completed" or local["delivery"] is not None
    )


#: What a notice that no result will come says, by how the job ended: the gateway's own
#: words, never the vendor's (which may name the study's pseudonyms).
NO_RESULT_BECAUSE = {
    "failed": "the product could not analyse the study",
    "expired": "the product did not finish the analysis in time",
    "cancelled": "the analysis was cancelled",
    Delivery.unfileable: "the product's results could not be filed in the PACS",
    Delivery.purged: "the results were deleted at the exchange before they could be fetched",
    Delivery.lost: (
        "the national exchange lost the product's results before they could be fetched; send "
        "the study again from the PACS to have it analysed"
    ),
}


#: What the notice says of an adopted job the exchange lost (restored to an earlier moment).
LOST_BY_EXCHANGE = (
    "the national exchange lost the job; send the study again from the PACS to have it analysed"
)

#: What the notice says of a job that failed or expired after the exchange lost images of its
#: study from its store: the product could not be run on them, through no fault of its own.
INPUTS_LOST_BY_EXCHANGE = (
    "the national exchange lost images of the study before the product could analyse them; "
    "send the study again from the PACS to have it analysed"
)


#: What the notice says of a job the gateway could not send again after the exchange's store
#: lost images of its study, or the product's results.
LOST_BY_STORE_NOTICE: dict[LostByStore, str] = {
    "images": INPUTS_LOST_BY_EXCHANGE,
    "results": NO_RESULT_BECAUSE[Delivery.lost],
}


def no_result_reason(
    exchange_state: str, delivery: str | None, *, inputs_lost: bool = False
) -> str | None:
    """The reason a notice gives for a job that ended without its results in the PACS; None
    when there is nothing to tell (delivered, let go, or not mapped back to anyone).
    `inputs_lost`: the exchange found images of the job's study missing from its store."""
    if exchange_state == "completed":
        return NO_RESULT_BECAUSE.get(delivery) if delivery else None
    if inputs_lost and exchange_state in ("failed", "expired"):
        return INPUTS_LOST_BY_EXCHANGE
    return NO_RESULT_BECAUSE.get(exchange_state)


def _urgent(job: Mapping[str, Any]) -> bool:
    """An ended job the radiologist must hear of first: run STAT, or its result triage
    positive (`ResultNotice.stat`). What the listing holds is only read here: a summary
    that is not what it should be reads as not urgent, and `_queue_result_notice` says why."""
    summary = job.get("summary")
    triage = summary.get("triage") if isinstance(summary, dict) else None
    flag = triage.get("flag") if isinstance(triage, dict) else None
    return job.get("priority") == "stat" or flag == "positive"


def _ran_stat(local: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
    """The job ran STAT: the exchange gives the route's priority or its product's default;
    a job from before it listed one, the route's as this gateway recorded it."""
    return (job.get("priority") or local["priority"]) == "stat"


def _unless_unknown(ask: Callable[[str], dict[str, Any] | None], job: str) -> dict[str, Any] | None:
    """The exchange's answer about a job; None when it does not know it (404)."""
    try:
        return ask(job)
    except ExchangeHTTPError as exc:
        if exc.status != 404:
            raise
        return None


def _lost_by_store(job: Mapping[str, Any]) -> LostByStore | None:
    """What the exchange's store lost of the exchange `job`, as the exchange lists it: images
    of its study, when it ended unanalysed for them (`inputs_lost_at`); the product's results,
    when it completed and its gateway said so with its acknowledgement. None otherwise."""
    if job["state"] in ("failed", "expired") and job.get("inputs_lost_at"):
        return "images"
    if job["state"] == "completed" and job.get("delivery") == Delivery.lost:
        return "results"
    return None


def _gone_from_spool(instances: list[dict[str, Any]]) -> list[str]:
    """The spool files of `instances` that are not there."""
    return [str(row["path"]) for row in instances if not Path(row["path"]).is_file()]


class ExchangeEnded(Exception):
    """The exchange ended the job an earlier attempt created before it opened (unfinished for
    too long, or cancelled by its operator): not for this gateway to open again."""


#: How long a job made before a restore, whose spool files are gone, is tried again before it
#: is refused: time to put the spool back, counted from the first try that missed them (in this
#: run of the gateway: a restart gives them the time again). Other jobs missing spool files are
#: tried again until the files are back (a volume not mounted, say).
SPOOL_GONE_SECONDS = 600.0


def backoff(attempts: int) -> float:
    return float(min(2 ** min(attempts, 8), 300))


def key_refused(exc: BaseException) -> TypeGuard[ExchangeHTTPError]:
    """Whether the exchange refused the gateway's API key rather than answered the request."""
    return isinstance(exc, ExchangeHTTPError) and exc.status == KEY_REFUSED


def _refused_for_good(exc: ExchangeHTTPError) -> bool:
    """An answer about the request that a retry will not change (not the key, not busy)."""
    return 400 <= exc.status < 500 and exc.status not in RETRYABLE_STATUSES | {KEY_REFUSED}


def key_refused_reason(exc: ExchangeHTTPError) -> str:
    """What the engineer must do when the exchange does not take the gateway's API key."""
    return (
        f"the exchange does not accept the gateway's API key ({exc}): revoked, expired or "
        "mistyped; put the hospital's current key in exchange.api_key_file and restart the "
        "gateway. Nothing is lost: jobs wait and are tried again"
    )


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        client: GatewayClient | None = None,
        changed: threading.Condition | None = None,
    ) -> None:
        if not config.pacs:
            # `GatewayConfig` refuses this; a configuration copied or built past it too: every
            # result would be taken for delivered and acknowledged, and reach nobody.
            raise ConfigError("no PACS to deliver results to: list at least one under `pacs`")
        self.config = config
        workdir = config.workdir
        self.spool = workdir / "spool"
        self.outbox = workdir / "outbox"
        self.results_dir = workdir / "results"
        #: Instances on their way in, by C-STORE or STOW-RS (the spool's file system, so
        #: taking one in is a rename).
        self.incoming = workdir / "incoming"
        # Identifiable studies and results live here: the service account's alone.
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        #: Held from before the databases open until they close (`close`).
        self._workdir_lock = ExitStack()
        self._hold_workdir()
        opened = ExitStack()
        try:
            # First: a workdir whose secret is gone is left as it is found (`SecretMissing`),
            # and one given another secret than its vault was keyed with (`SecretChanged`).
            secret = config.resolved_secret_file
            created = not secret.exists()
            self.key = open_secret(secret, workdir)
            self.vault = Vault(workdir / VAULT)
            opened.callback(self.vault.close)
            keep_fingerprint(self.vault, self.key, secret, created)
            for folder in (self.spool, self.outbox, self.results_dir):
                folder.mkdir(mode=0o700, exist_ok=True)
            self.state = GatewayState(workdir / "state.db")
            opened.callback(self.state.close)
            self.disclosures = DisclosureLog(
                workdir / "disclosures.db", config.hospital, f"gateway {config.dicom.ae_title}"
            )
            opened.callback(self.disclosures.close)
            self.client = client or GatewayClient.connecting(config.exchange)
        except BaseException:
            opened.close()  # what this start opened, newest first, then the workdir's lock
            self._workdir_lock.close()
            raise
        opened.pop_all()  # kept: `close` closes them
        self.notifier = Notifier(config.notifications)
        self._stop = threading.Event()
        # Stopped, the gateway ends its calls to the exchange rather than ride out an outage:
        # what they were doing is in its state, done again at the next start.
        self.client.give_up_when(self._stop)
        self.client.on_product_read = self._keep_product
        self._anchored: Anchor | None = None
        self._assemble = threading.Event()
        self._submit = threading.Event()
        #: Notified on every job change, for whoever waits on the gateway (tests, the demo).
        #: Several gateways in one process (the demo) may share one, to be watched together.
        self.changed = changed or threading.Condition()
        #: Result notices and notices that no result will come, sent on threads of their own.
        self.notices = NoticeSender(
            hospital=config.hospital,
            state=self.state,
            vault=self.vault,
            notifier=self.notifier,
            disclosures=self.disclosures,
            stop=self._stop,
            changed=self._notify,
            done=self._notice_done,
            spooled=self._spooled_identity,
        )
        #: STAT jobs whose result is late: their delay is told, once.
        self.delays = DelayWatch(
            hospital=config.hospital,
            state=self.state,
            vault=self.vault,
            settings=config.notifications,
            # As last read (`_keep_product`), however long ago: the look never asks the exchange.
            catalogue=self.state.remembered_product,
            announce=self.notices.announce_delay,
            close=self.notices.close_told,
            covered=self.state.covered_by_another,
            stop=self._stop,
        )
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._stow: AppThread | None = None
        #: Instances and STOW-RS requests refused at receipt, for the metrics.
        self.refusals = Refusals()
        self.metrics: MetricsServer | None = None
        self._retry_at: dict[str, float] = {}
        #: Products whose uptake counts the exchange refused (the hospital never subscribed
        #: to them), and whose manifest it would not show (never admitted, nor subscribed to),
        #: each with when to try again (`report_uptake`).
        self._counts_refused: dict[str, float] = {}
        self._product_unseen: dict[str, float] = {}
        #: Jobs brought home whose results did not reach the PACS, by exchange job, and why:
        #: said to the exchange with their acknowledgement.
        self._not_delivered: dict[str, Delivery] = {}
        #: Ended exchange jobs this gateway has no record of, and the hospital's decisions.
        self.adoptions = Adoptions(
            self.state,
            self.vault,
            self.key,
            self.client,
            self._disclose_sent,
            self._retry_at,
            self._not_delivered,
        )
        #: Failed tries at bringing a job home, by exchange job, should the disk that failed
        #: them also refuse to record them.
        self._collect_attempts: dict[str, int] = {}
        #: Jobs whose notices the notice threads are done with, for the results thread.
        self._notices_done: set[str] = set()
        self._notices_done_lock = threading.Lock()
        #: The retries set to wait for a job's notices (`_notices_waiting`): only these end
        #: early when a notice is done with, not a back-off set since. Results thread only.
        self._notices_awaited: dict[str, float] = {}
        #: Studies an open association is still sending, by association: a study is not
        #: complete while its sender is connected, whatever the quiet timer says.
        self._sending: dict[int, set[str]] = {}
        self._sending_lock = threading.Lock()
        self._closed = False
        #: What `_keep_product` last kept in the state, by product.
        self._products_kept: dict[str, dict[str, Any]] = {}
        #: Whether a restore's jobs were checked with the exchange (`reconcile_restore`), by
        #: whichever of the sender and the results thread came first.
        self._reconciled = False
        self._reconciling = threading.Lock()
        #: When each job's spool files were first missed (`submit`).
        self._spool_gone_since: dict[int, float] = {}
        #: When the results thread next asks about the jobs it sent (`ask_about_submitted`),
        #: and what became of those the exchange lost.
        self._submitted_watch = SubmittedWatch()

    # life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.recover_spool()
        # What was arriving when the gateway stopped (by C-STORE or STOW-RS) was never
        # acknowledged: the sender sends it again.
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(mode=0o700)
        ae = storage_scp_ae(self.config.dicom.ae_title, self.incoming)
        if self.config.dicom.allowed_calling_aes:
            ae.require_calling_aet = list(self.config.dicom.allowed_calling_aes)
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_CONN_OPEN, tighten_polling),
            (evt.EVT_RELEASED, self.handle_association_end),
            (evt.EVT_ABORTED, self.handle_association_end),
            (evt.EVT_CONN_CLOSE, self.handle_association_end),
        ]
        self._server = start_scp(ae, self.config.dicom.host, self.config.dicom.port, handlers)
        if self.config.dicomweb is not None:
            try:
                self._stow = self._start_stow(self.config.dicomweb)
            except OSError:  # its port taken: stop listening for C-STORE too, then say why
                self._server.shutdown()
                self._server = None
                raise
        if self.config.metrics_port is not None:
            self.metrics = start_metrics_server(
                self.state,
                self.config.metrics_port,
                self.config.metrics_host,
                self.refusals,
                self.studies_being_sent,
                self.config.retain_hours * 3600,
                self.unknown_jobs_left,
                self.notifier.outages.down,
                self._submitted_watch.outcomes,
            )
        for name, target in (
            ("assembler", self._assemble_loop),
            ("submitter", self._submit_loop),
            ("results", self._results_loop),
            ("stat-notices", lambda: self.notices.run(urgent=True)),
            ("notices", lambda: self.notices.run(urgent=False)),
            ("delays", self.delays.run),
            ("retention", self._retention_loop),
            ("anchors", self._anchor_loop),
        ):
            thread = threading.Thread(
                target=target, name=f"{self.config.hospital}-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._assemble.set()
        self._submit.set()

    @property
    def port(self) -> int:
        """The SCP's port (useful when configured as 0: any free port)."""
        return int(self._server.server_address[1]) if self._server else self.config.dicom.port

    def _start_stow(self, web: DicomWebListener) -> AppThread:
        app = stow_app(self, web.senders, self.incoming)
        cert, key = web.tls_cert_file, web.tls_key_file
        return AppThread(
            app,
            web.host,
            web.port,
            name="stow",
            ssl_certfile=str(cert) if cert else None,
            ssl_keyfile=str(key) if key else None,
        ).start()

    @property
    def stow_url(self) -> str | None:
        """Where senders send by STOW-RS (the base URL they are configured with), if on."""
        return f"{self._stow.url}{STOW_BASE}" if self._stow is not None else None

    def stop(self) -> None:
        self._stop.set()
        self._assemble.set()
        self._submit.set()
        self.notices.wake()
        self.delays.wake()
        if self._server is not None:
            self._server.shutdown()
        if self._stow is not None:
            self._stow.stop()
        # A notice thread may be in the middle of a send: waited for, up to two minutes in all
        # (one deadline for both lanes, which send at once), so that its outcome is recorded
        # and the notice is not sent again after a restart.
        others = self.config.poll_wait_seconds + 35
        notices_until = time.monotonic() + max(
            others, min(120.0, self.notifier.longest_send_seconds() + 5)
        )
        for thread in self._threads:
            if thread.name.endswith("notices"):
                thread.join(timeout=max(0.0, notices_until - time.monotonic()))
            else:
                thread.join(timeout=others)
        if self.metrics is not None:
            self.metrics.close()
        self.close()

    def close(self) -> None:
        """Close what the gateway holds open: its connections, its databases and, last, its
        workdir. For a gateway stopped, or never started."""
        if self._closed:
            return
        self._closed = True
        self.client.close()
        self.notifier.close()
        # A notice thread the stop's wait gave up on, its send cut short by the connections
        # closed, records how it went before the state closes (or its record would be lost).
        for thread in self._threads:
            if thread.name.endswith("notices") and thread.is_alive():
                thread.join(timeout=NOTICES_AFTER_CLOSE_SECONDS)
        self.state.close()
        self.vault.close()
        self._anchor_or_say_why()  # the last entries of this run, before the log closes
        self.disclosures.close()
        self._workdir_lock.close()

    def _hold_workdir(self) -> None:
        """One gateway at a time on a workdir, from before it opens a database: a second would
        send every study twice, and a restore (`aifi gateway-restore`) must not put databases
        back under one, nor have one make new ones while it works. A restore that was cut off
        must be run again first."""
        workdir = self.config.workdir
        lock = workdir / WORKDIR_LOCK
        if not self._workdir_lock.enter_context(held_alone(lock)):
            self._workdir_lock.close()
            raise OSError(
                f"another gateway, or a restore, is running on {workdir} (it holds {lock})"
            )
        if (cut_off := restore_cut_off(workdir)) is not None:
            self._workdir_lock.close()
            raise OSError(cut_off)
        for left in workdir.glob(f"{RESTORE_STAGING}*"):  # a restore killed while it copied
            shutil.rmtree(left, ignore_errors=True)

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait_until(self, predicate: Any, timeout: float) -> bool:
        """Block until `predicate()` holds (re-checked at each job change) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(min(remaining, 1.0))
        return True

    # receipt -------------------------------------------------------------------------------

    def handle_store(self, event: evt.Event) -> int:
        """C-STORE: persist the instance and index it; nothing else happens before the
        acknowledge."""
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        if (failed := unwritten(event)) is not None:  # the disk filled up while it arrived
            log.error("instance from %s: cannot store it (%s)", calling_ae, failed)
            self.refusals.instance("dimse", calling_ae, OUT_OF_RESOURCES)
            return OUT_OF_RESOURCES
        receipt = self.receive(Path(event.dataset_path), calling_ae, id(event.assoc))
        if not receipt.stored:
            self.refusals.instance("dimse", calling_ae, receipt.status)
        return receipt.status

    def receive(
        self, received: Path, sender: str, sending: int, study_uid: str | None = None
    ) -> Receipt:
        """Take one instance in, whichever way it came (C-STORE or STOW-RS): its bytes and name
        durable in the spool and indexed before the sender hears "stored".

        `sending` names the association or request it came in: the study is not complete while
        that is open (see :meth:`sending_ended`). `study_uid`: the study the sender addressed
        (STOW-RS to `/studies/{uid}`); an instance of another is refused.
        """
        try:
            header = pydicom.dcmread(received, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            sop_class = str(header.get("SOPClassUID", ""))
            sop_uid = str(header.get("SOPInstanceUID", ""))
            study = str(header.get("StudyInstanceUID", ""))
            if not UID.match(study) or not UID.match(sop_uid) or not UID.match(sop_class):
                raise ValueError("a Study, SOP Instance or SOP Class UID is missing or not a UID")
            series_uid = str(header.get("SeriesInstanceUID", ""))
        except Exception as exc:
            log.warning("instance from %s refused: dataset cannot be parsed (%s)", sender, exc)
            received.unlink(missing_ok=True)
            return Receipt(CANNOT_UNDERSTAND, reason=f"cannot be parsed as DICOM: {exc}")
        if study_uid is not None and study != study_uid:
            received.unlink(missing_ok=True)
            return Receipt(
                STUDY_MISMATCH,
                sop_class,
                sop_uid,
                study,
                f"belongs to study {study}, not to {study_uid} where it was sent",
            )
        target = self.spool / study / f"{sop_uid}.dcm"
        try:
            # Bytes and name on the disk before the sender hears "stored".
            replace_durably(received, target)
            self.state.record_instance(
                ReceivedInstance(
                    sop_instance_uid=sop_uid,
                    study_uid=study,
                    series_uid=series_uid,
                    sop_class_uid=sop_class,
                    modality=str(header.get("Modality", "")),
                    body_part=str(header.get("BodyPartExamined", "")),
                    study_description=str(header.get("StudyDescription", "")),
                    series_description=str(header.get("SeriesDescription", "")),
                    path=target,
                    size=target.stat().st_size,
                    calling_ae=sender,
                ),
                self.config.dicom.quiet_for(sender),
            )
        except (OSError, sqlite3.Error) as exc:  # a full or failing disk, the index's too
            log.error("instance from %s: cannot store it (%s)", sender, exc)
            received.unlink(missing_ok=True)
            # Not indexed, so not kept (the sender sends it again); sent before, it stays.
            self.state.drop_unindexed(target, sop_uid, study)
            return Receipt(OUT_OF_RESOURCES, sop_class, sop_uid, study, f"cannot store: {exc}")
        with self._sending_lock:
            self._sending.setdefault(sending, set()).add(study)
        self._assemble.set()
        return Receipt(SUCCESS, sop_class, sop_uid, study)

    def handle_association_end(self, event: evt.Event) -> None:
        """A sender released, aborted or dropped its association."""
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        self.sending_ended(id(event.assoc), calling_ae)

    def studies_being_sent(self) -> set[str]:
        """The studies an open association or STOW-RS request is still sending."""
        with self._sending_lock:
            return set().union(*self._sending.values())

    def sending_ended(self, sending: int, sender: str) -> None:
        """An association or a STOW-RS request ended: the quiet timer of each study it sent
        starts now, so a slow sender is never cut off mid-study."""
        with self._sending_lock:
            studies = self._sending.pop(sending, set())
        if not studies:
            return
        for study_uid in studies:
            try:
                self.state.restart_quiet_timer(study_uid, self.config.dicom.quiet_for(sender))
            except (OSError, sqlite3.Error) as exc:  # its old timer stands: due, not forgotten
                log.error("study %s: its quiet timer could not restart (%s)", study_uid, exc)
        self._assemble.set()

    def _still_sending(self) -> set[str]:
        with self._sending_lock:
            return set().union(*self._sending.values()) if self._sending else set()

    def recover_spool(self) -> int:
        """Index instances that reached the spool but not the database (a crash in between)."""
        known = self.state.known_paths()
        recovered = 0
        for path in self.spool.glob("*/*.dcm"):
            if str(path) in known:
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
                indexed = self.state.study_of_instance(str(header.SOPInstanceUID))
                if indexed is not None and indexed != str(header.StudyInstanceUID):
                    # Indexed under another study since (the PACS moved it): this copy was
                    # left behind by a crash, and no sender was told it was stored.
                    log.warning("spool file %s: its instance is now another study's", path.name)
                    self.state.drop_unindexed(
                        path, str(header.SOPInstanceUID), str(header.StudyInstanceUID)
                    )
                    continue
                self.state.record_instance(
                    ReceivedInstance(
                        sop_instance_uid=str(header.SOPInstanceUID),
                        study_uid=str(header.StudyInstanceUID),
                        series_uid=str(header.get("SeriesInstanceUID", "")),
                        sop_class_uid=str(header.SOPClassUID),
                        modality=str(header.get("Modality", "")),
                        body_part=str(header.get("BodyPartExamined", "")),
                        study_description=str(header.get("StudyDescription", "")),
                        series_description=str(header.get("SeriesDescription", "")),
                        path=path,
                        size=path.stat().st_size,
                        calling_ae="",
                    ),
                    self.config.dicom.quiet_seconds,
                )
                recovered += 1
            except Exception as exc:
                log.warning("spool file %s cannot be indexed: %s", path.name, exc)
        return recovered

    # assembly and routing ------------------------------------------------------------------

    def _assemble_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._assemble.clear()
            try:
                self.assemble_due(time.time())
                timeout = self._next_assembly_in()
                failures = 0
            except Exception:  # a full or failing disk: the due study is due again at once
                failures += 1
                timeout = min(backoff(failures), ASSEMBLY_RETRY_SECONDS)
                log.exception("study assembly failed; trying again in %.0f s", timeout)
            self._assemble.wait(timeout)  # new instances, or a sender leaving, try sooner

    def _next_assembly_in(self) -> float:
        """Seconds until the next study's quiet timer runs out.

        Studies still being sent wait for their association's end, which wakes the assembler.
        """
        sending = self._still_sending()
        waiting = [
            row["due_at"]
            for row in self.state.query(
                "SELECT study_uid, due_at FROM studies WHERE state = 'receiving'"
            )
            if row["study_uid"] not in sending
        ]
        return 3600.0 if not waiting else max(0.0, min(waiting) - time.time())

    def assemble_due(self, now: float) -> int:
        """Route every study whose quiet timer has run out; returns how many jobs were made."""
        made = 0
        sending = self._still_sending()
        due = [s for s in self.state.due_studies(now) if s["study_uid"] not in sending]
        for study in due:
            instances = self.state.study_instances(study["study_uid"])
            jobs = route_study(self.config.routes, instances, study["calling_ae"])
            made += self.state.route_study(
                study["study_uid"], study["round"], study["due_at"], jobs,
                study_pseudonym=self.key.uid(study["study_uid"]),
            )  # fmt: skip
        if due:
            self._submit.set()  # jobs to send, and studies to count for uptake
        if made:
            self.delays.wake()  # a STAT job's time to answer begins
            self._notify()
        return made

    # submission ----------------------------------------------------------------------------

    def _submit_loop(self) -> None:
        routes_reported = False
        failures = 0
        while not self._stop.is_set():
            self._submit.clear()
            try:
                if not routes_reported:
                    routes_reported = self.report_routes()
                self.report_uptake()
                self.send_pending()
                if self._stop.is_set():
                    return
                due = self.state.next_pending_at()
            except Exception:  # a full disk refusing even the retry's record: wait, go on
                failures += 1
                log.exception("sending jobs failed; trying again in %.0f s", backoff(failures))
                self._stop.wait(backoff(failures))
                continue
            failures = 0
            timeout = 3600.0 if due is None else max(0.0, due - time.time())
            self._submit.wait(timeout)

    def send_pending(self, now: float | None = None) -> list[int]:
        """One pass of the sender: every job due at `now` (default: now), in order; their ids.

        A job whose sending fails unexpectedly (a fault in the gateway, a write refused where
        none was expected) is tried again after its back-off, and the jobs behind it go on:
        one job's trouble holds up no other, a STAT study among them. A retry that cannot even
        be put on record (the gateway's disk full) ends the pass; the loop waits and tries
        again.
        """
        if not self._reconciled:
            # Nothing goes before the exchange has said what the lost disk sent; what it
            # raises meets the sender loop's back-off.
            self.reconcile_restore()
        sent: list[int] = []
        for job in self.state.pending_jobs(time.time() if now is None else now):
            if self._stop.is_set():
                break
            sent.append(int(job["id"]))
            try:
                self.submit(job)
            except Exception as exc:
                log.exception("job %s: sending failed unexpectedly", job["id"])
                self._retry(job, f"sending failed unexpectedly: {type(exc).__name__}: {exc}")
        return sent

    def report_routes(self) -> bool:
        """Tell the exchange which studies go to each product (its record of processing says
        so to the hospital's privacy officer); True once every product's rules were taken."""
        rules: dict[str, list[dict[str, Any]]] = {}
        for route in self.config.routes:
            rule = route.model_dump(exclude={"product", "priority"}, exclude_none=True)
            rules.setdefault(route.product, []).append(rule)
        try:
            for product_id, product_rules in rules.items():
                self.client.report_routes(product_id, product_rules)
        except (ExchangeHTTPError, httpx.TransportError, OSError) as exc:
            log.warning("routing rules not reported to the exchange yet: %s", exc)
            return False
        return True

    def report_uptake(self) -> None:
        """Count, per product, the studies it could have read (routed or not), and report the
        monthly totals: the exchange's uptake figure is routed ÷ eligible."""
        products = sorted({route.product for route in self.config.routes})
        try:
            for study in self.state.uncounted_studies():
                instances = self.state.study_instances(study["study_uid"])
                manifests = self._uptake_manifests(products)
                eligible = [
                    p for p, manifest in manifests.items()
                    if any(_accepted(manifest, row) for row in instances)
                ]  # fmt: skip
                self.state.count_eligible(
                    study["study_uid"], study["round"], study["month"], eligible
                )
            for row in self.state.unreported_counts():
                product = str(row["product_id"])
                if self._counts_refused.get(product, 0.0) > time.monotonic():
                    continue
                try:
                    self.client.report_eligible(product, row["month"], row["studies"])
                except ExchangeHTTPError as exc:
                    if not _refused_for_good(exc):
                        raise
                    # A product the hospital never subscribed to: its counts wait (they go
                    # once it subscribes), the other products' still go.
                    self._counts_refused[product] = time.monotonic() + UPTAKE_REFUSED_SECONDS
                    log.warning("uptake counts of %s not taken by the exchange; offered again "
                                "in an hour: %s", product, exc.detail)  # fmt: skip
                    continue
                self.state.mark_reported(product, row["month"], row["studies"])
        except (ExchangeHTTPError, httpx.TransportError, OSError) as exc:
            log.warning("uptake counts not reported yet: %s", exc)

    def _uptake_manifests(self, products: list[str]) -> dict[str, Any]:
        """The manifests of the routed products that uptake is counted for: not one the
        exchange will not show this hospital (never admitted, nor subscribed to), so that a
        route to it holds up no other product's count."""
        manifests = {}
        for product in products:
            if self._product_unseen.get(product, 0.0) > time.monotonic():
                continue
            try:
                manifests[product] = self.client.product(product)["manifest"]
            except ExchangeHTTPError as exc:
                if not _refused_for_good(exc):
                    raise
                self._product_unseen[product] = time.monotonic() + UPTAKE_REFUSED_SECONDS
                log.warning("uptake of %s not counted; looked at again in an hour: %s",
                            product, exc.detail)  # fmt: skip
        return manifests

    def submit(self, job: Any) -> None:
        """Pseudonymise and upload one job; refusals end it with a reason, outages retry.

        A job reads its study's instances from the spool as it is sent. If another job of the
        study for the same product sent exactly the instances this one would send (those not
        refused on the way), and did not fail, nothing is sent: the job ends 'skipped', with
        the reason, and no disclosure (nothing was disclosed). So a job sent late, after a late
        instance opened the study's next round, and that round's job do not run the product
        twice on the same instances (`GatewayState.skip_if_sent_before`). The check comes
        after pseudonymisation, just before the job is opened: what would be sent is known.

        Jobs are sent by one thread, the submitter (`_submit_loop`), one at a time: between the
        check for such a job and this job's send, no other job is sent, so two jobs with the
        same instances cannot both pass the check. A second sender would need the check and
        the send held together under a lock of their own.
        """
        job_id = int(job["id"])
        opened: dict[str, Any] = {}  # the exchange's job, once this attempt made or found it
        try:
            product = self.client.product(job["product_id"])
            manifest = product["manifest"]
            series = set(json.loads(job["series_uids"]))

            def selected() -> list[dict[str, Any]]:
                return [
                    row for row in self.state.study_instances(job["study_uid"])
                    if row["series_uid"] in series and _accepted(manifest, row)
                ]  # fmt: skip

            instances = selected()
            if not instances:
                self._refuse_sent(
                    job,
                    opened,
                    f"no series of the study is accepted by {job['product_id']}",
                    CancelReason.nothing_accepted,
                )
                return
            if _gone_from_spool(instances) and (gone := _gone_from_spool(instances := selected())):
                # Read twice: an instance the PACS moved to another study meanwhile leaves the
                # study's list along with its file.
                self._spool_gone(job, opened, gone, len(instances))
                return
            self._spool_gone_since.pop(job_id, None)
            may_be_open = bool(job["may_be_open"])
            sent_with: str | None = None  # what the job is sent with, for later jobs' check

            def create(
                study_uid: str, patient: str, count: int | None, retries: int | None = None
            ) -> dict[str, Any]:
                return self.client.create_job(
                    job["product_id"],
                    study_uid,
                    patient,
                    job["idempotency_key"],
                    job["priority"],
                    instances=count,
                    retries=retries,
                )

            def open_job(study_uid: str, patient: str, sending: list[Mapping[str, Any]]) -> str:
                nonlocal sent_with
                digest = inputs_digest(sending)
                skipped = self.state.skip_if_sent_before(job_id, digest, len(sending))
                if skipped is not None:
                    raise NothingNew(skipped)
                sent_with, count = digest, len(sending)
                refused: ExchangeHTTPError | None = None
                if not may_be_open:
                    # On record before the request: a lost answer, or the gateway stopped
                    # mid-request, may leave the job open at the exchange, and such a job
                    # is never skipped (`skip_if_sent_before`).
                    self.state.update_job(job_id, may_be_open=1)
                try:
                    # One try while nothing may be open yet: a connection refused then
                    # means the request never left, whatever tries before it met.
                    created = create(study_uid, patient, count, 0 if not may_be_open else None)
                except httpx.ConnectError:
                    if not may_be_open:  # the request never left: nothing opened by it
                        self.state.update_job(job_id, may_be_open=0)
                    raise
                except ExchangeHTTPError as exc:
                    if exc.status != 409:
                        raise
                    # The exchange's job, opened by an earlier attempt, will not take this
                    # count: it opened (below), or it holds more instances than this job
                    # sends, some of them no longer the study's (moved to another study).
                    refused, created = exc, create(study_uid, patient, None)
                not_ours = self.state.link_exchange_job(job_id, str(created["id"]))
                if not_ours == "let_go":
                    raise StartsAnew(
                        f"its exchange job {created['id']} was let go unbrought (`aifi "
                        "gateway-unknown-jobs`); the study sent again goes as a new job"
                    )
                if not_ours is not None:
                    self._adopted_before(job_id, not_ours, created, sending, digest)
                opened.update(created)
                cancelled_to_start_over = created.get("reason") == stray_inputs_reason(
                    str(created["id"])
                )
                if not created.get("inputs_complete") and cancelled_to_start_over:
                    # An earlier attempt cancelled it to start the job over (`_start_over`),
                    # and went no further: this one starts over, as that one would have.
                    raise StrayInputs(str(created["id"]), int(created["input_count"]))
                if not created.get("inputs_complete") and created.get("state") != "requested":
                    # Found again by its key, whatever the count: it takes no inputs now.
                    raise ExchangeEnded(
                        f"the exchange ended job {created['id']} before it opened "
                        f"({created.get('state')}: {created.get('reason') or 'no reason'})"
                    ) from refused
                if created.get("acknowledged_at"):
                    # Sent and brought home by this gateway before it was restored from a
                    # backup taken earlier (`aifi gateway-restore`): it stands as it opened.
                    raise BroughtHome(str(created["id"]))
                if refused is None:
                    return str(created["id"])
                if created.get("inputs_complete"):
                    # An earlier attempt opened it to vendors and its end went unrecorded
                    # (its answer lost, the disclosure log full): the job stands as it
                    # opened; a late instance goes with the study's next round.
                    raise AlreadyOpen(str(created["id"])) from refused
                if int(created["input_count"]) > count:
                    raise StrayInputs(str(created["id"]), int(created["input_count"]))
                raise refused

            def already_uploaded(exchange_id: str) -> set[str]:
                # A job that holds nothing yet (the usual case: just created) needs no asking.
                return self.client.input_uids(exchange_id) if opened["input_count"] else set()

            try:
                exchange_id, prepared = pseudonymise_and_send(
                    key=self.key,
                    vault=self.vault,
                    instances=instances,
                    options=frozenset(manifest.get("data_needed", [])),
                    clean_pixel_regions=list(self.config.clean_pixel_regions) or None,
                    outbox=self.outbox / str(job_id),
                    threads=self.config.upload_threads,
                    open_job=open_job,
                    already_uploaded=already_uploaded,
                    upload=self.client.put_input,
                )
            except (AlreadyOpen, StrayInputs, BroughtHome) as exc:
                if isinstance(exc, StrayInputs) and not opened.get("inputs_complete"):
                    raise  # not opened yet: cancelled, and the job sent as a new one
                # Opened by an earlier attempt, whatever came or went since (an instance
                # moved to another study, another added): it stands as it opened.
                exchange_id, sent = str(opened["id"]), int(opened["input_count"])
                sent_with = (  # opened with the instances the study had then
                    self._digest_if_sent(exchange_id, sent, instances)
                    if isinstance(exc, BroughtHome)
                    else None
                )
                note: str | None = (
                    f"opened by an earlier attempt and brought home before {BroughtHome.WHEN}"
                    if isinstance(exc, BroughtHome)
                    else "opened by an earlier attempt; later instances go with the study's "
                    "next round"
                )
            else:
                sent = prepared.sent
                if not (opened.get("instances") == sent and prepared.uploaded):
                    # The last upload did not open the job by itself (nothing was left to
                    # upload, or the exchange holds another count): say all inputs are there.
                    self.client.mark_ready(exchange_id, sent)
                note = (
                    f"{len(prepared.refused)} instance(s) not sent: "
                    + "; ".join(sorted(set(prepared.refused.values())))
                    if prepared.refused
                    else None
                )
            patient, study = self._patient_of(str(opened["study_uid"]), job["study_uid"])
            options = ", ".join(sorted(manifest.get("data_needed", []))) or "none"
            self._disclose_sent(
                exchange_id,
                patient_id=patient,
                study_uid=study,
                recipient=f"{job['product_id']} {product['version']} of {product['vendor']}, "
                "through the exchange",
                detail=f"exchange job {exchange_id}: {sent} instance(s) as study "
                f"{opened['study_uid']} of patient {opened['patient_pseudonym']}; Annex E "
                f"options beyond the basic profile: {options}" + (f"; {note}" if note else ""),
            )
            self.state.mark_submitted(job_id, note, sent_with)
            if opened.get("acknowledged_at"):
                self._settle_brought_home_or_later(self.state.job(job_id), opened)
        except ExchangeEnded as exc:
            self._refuse_sent(job, opened, str(exc), CancelReason.exchange_ended)
        except NothingToSend as exc:
            self._refuse_sent(job, opened, str(exc), CancelReason.nothing_to_send)
        except NothingNew as exc:
            log.info("job %s skipped, nothing sent: %s", job_id, exc)
        except StrayInputs as exc:
            self._start_over(job, opened, exc)
        except StartsAnew as exc:
            log.warning("job %s: %s", job_id, exc)
            self.state.start_over(job_id, str(exc))
        except ExchangeHTTPError as exc:
            if key_refused(exc):
                self._retry(job, key_refused_reason(exc), level=logging.ERROR)
            elif _refused_for_good(exc):
                self._refuse_sent(
                    job,
                    opened,
                    f"the exchange refused the job: {exc.detail}",
                    CancelReason.exchange_refused,
                )
            else:
                self._retry(job, str(exc))
        except httpx.TransportError as exc:
            self._retry(job, f"exchange unreachable: {exc}")
        except (OSError, sqlite3.Error) as exc:  # the gateway's own disk: full, or failing
            self._retry(job, f"the gateway's storage refused a write: {exc}")
        except NotRecorded as exc:
            # Sent, but not on record: sent again later (the exchange takes it once), and
            # recorded then; it does not count as submitted until it is.
            self._retry(job, str(exc))
        finally:
            self._notify()  # whatever became of the job, those waiting on a change hear of it

    def _adopted_before(
        self,
        job_id: int,
        owner: Mapping[str, Any],
        held: Mapping[str, Any],
        sending: list[Mapping[str, Any]],
        digest: str,
    ) -> None:
        """This round's key finds an exchange job adopted as another job (`owner`) before the
        round was sent. Holding the same instances, and completed at the exchange, the owner
        brings them home, and the round is skipped (`NothingNew`); else the round goes as a
        new job (`StartsAnew`). Never linked to the exchange job a second time: one of the
        two would never be brought home."""
        exchange_id = str(held["id"])
        adopted = (
            f"its exchange job {exchange_id} is job {owner['id']}'s, adopted before this round "
            "was sent"
        )
        if (
            held["state"] == "completed"
            and owner["state"] in ("submitted", "delivered")
            and self._digest_if_sent(exchange_id, int(held["input_count"]), sending) == digest
        ):
            reason = f"{adopted}, with these same {len(sending)} instance(s)"
            self.state.skip_taken(job_id, int(owner["id"]), digest, reason)
            raise NothingNew(reason)
        raise StartsAnew(
            f"{adopted}, which "
            + (
                "ended without results"
                if held["state"] != "completed" or owner["state"] not in ("submitted", "delivered")
                else "holds other instances, or no longer lists them"
            )
            + "; this round goes as a new job"
        )

    def _spool_gone(
        self, job: Any, opened: dict[str, Any], gone: list[str], instances: int
    ) -> None:
        """A job some of whose spool files are gone (`gone`, of its `instances`): a job the
        exchange opened needs none of them and stands as it opened; a job made before a
        restore that left them behind is refused after `SPOOL_GONE_SECONDS`, to be sent again
        from the PACS; any other waits until they are back (a volume not mounted, say)."""
        job_id = int(job["id"])
        gone_from_spool = (
            f"{len(gone)} of the study's {instances} instance(s) are gone from the spool "
            f"(such as {gone[0]})"
        )
        held = self.client.job(job["exchange_job_id"]) if job["exchange_job_id"] else {}
        first_seen = self._spool_gone_since.setdefault(job_id, time.time())
        if held.get("inputs_complete"):
            # Opened by an attempt before a restore: nothing of the spool is needed.
            self._spool_gone_since.pop(job_id, None)
            self._stands_as_opened(job, held, gone_from_spool)
        elif not self.state.restored_after(float(job["created_at"])):
            # Not a disk lost and put back: the spool's volume not mounted, say, or failing.
            # Tried again, never refused for it: the study is the hospital's.
            self._retry(job, f"{gone_from_spool}; tried again until they are back")
        elif time.time() - first_seen < SPOOL_GONE_SECONDS:
            # Restored without them, or the spool not put back yet.
            self._retry(
                job,
                f"{gone_from_spool} since the gateway was restored from a backup; tried again "
                f"for {SPOOL_GONE_SECONDS / 60:.0f} minutes in case the spool is put back, "
                "then refused",
            )
        else:
            self._spool_gone_since.pop(job_id, None)
            self._refuse_sent(
                job,
                opened,
                f"{gone_from_spool}: not put back with the restore of the gateway; send the "
                "study again from the PACS",
                CancelReason.spool_gone,
            )

    def _start_over(self, job: Any, opened: dict[str, Any], exc: StrayInputs) -> None:
        """Cancel the exchange's job that holds instances this job no longer sends, and send
        the job again as a new one. It never opened (a job whose inputs were complete stands
        as it opened: `AlreadyOpen`), so no vendor took it. What the earlier attempts sent is
        put on record all the same: disclosed to the exchange, purged there with the job."""
        job_id, exchange_id = int(job["id"]), exc.exchange_job_id
        log.warning("job %s: %s; cancelling it, and sending the job as a new one", job_id, exc)
        try:
            if self._withdraw(exchange_id, CancelReason.stray_inputs).get("inputs_complete"):
                # Opened meanwhile: it stands as it opened, which the next try finds
                # (`AlreadyOpen`).
                self._retry(job, f"{exc}; it opened to vendors meanwhile, and stands")
                return
        except (ExchangeHTTPError, httpx.TransportError) as failed:
            self._retry(job, f"{exc}; cancelling it failed: {failed}")
            return
        patient, study = self._patient_of(str(opened["study_uid"]), job["study_uid"])
        try:
            self._disclose_sent(
                exchange_id,
                patient_id=patient,
                study_uid=study,
                recipient="the exchange",
                detail=f"exchange job {exchange_id}: {exc.held} instance(s) as study "
                f"{opened['study_uid']} of patient {opened['patient_pseudonym']}, sent by "
                f"earlier attempts; cancelled before any vendor took it ({exc}), purged with it",
            )
        except NotRecorded as failed:
            # Tried again later: the cancelled job, found again by its key, is cancelled
            # again (409) and put on record then.
            self._retry(job, f"{exc}; cancelled, not on record yet: {failed}")
            return
        self.state.start_over(job_id, f"{exc}: cancelled, sent again as a new job")
        self._acknowledge_unopened(job_id, exchange_id)

    def _refuse_sent(
        self, job: Any, opened: Mapping[str, Any], reason: str, why: CancelReason
    ) -> None:
        """Refuse a job, first settling what its attempts left at the exchange. `reason` is
        the hospital's (it may name spool files and so the study's own UIDs); the exchange is
        told `why` alone.

        An earlier attempt, or this one before the refusal, may have made the exchange's job
        and uploaded instances to it. Left as it is, a job still taking inputs would wait at
        the exchange for a week and then expire, and the instances it holds would be missing
        from the disclosure log. So a job still taking inputs is cancelled, with the reason;
        what it holds, or what a job the exchange ended itself holds, is put on record; and
        the ended job is acknowledged: nothing of it is to be brought home.

        A job an earlier attempt opened to vendors (its end not on record: the answer lost,
        the log full) stands as it opened: it is recorded and submitted, not refused, and its
        results come home. An exchange or a log that cannot be reached now: tried again. A job
        whose only creating request had no answer (`may_be_open`) is looked up by its key.
        """
        job_id = int(job["id"])
        exchange_id = str(opened.get("id") or job["exchange_job_id"] or "")
        try:
            if not exchange_id and job["may_be_open"]:
                # A request that may have made it had no answer: ask by the job's key.
                made = self.client.job_by_key(job["idempotency_key"])
                exchange_id = str(made["id"]) if made is not None else ""
                if exchange_id and self.state.link_exchange_job(job_id, exchange_id) is not None:
                    # Adopted as another job, or let go (`aifi gateway-unknown-jobs`): not
                    # this job's, which has nothing of its own at the exchange.
                    exchange_id = ""
            if not exchange_id:
                self._refuse(job_id, reason)  # nothing of it at the exchange
                return
            try:
                held = self.client.job(exchange_id)
            except ExchangeHTTPError as gone:
                if gone.status != 404:
                    raise
                self._refuse(job_id, reason)  # the exchange holds nothing of it any more
                return
            if held.get("inputs_complete"):
                self._stands_as_opened(job, held, reason)
                return
            if held["state"] == "requested":
                held = self._withdraw(exchange_id, why)
                if held.get("inputs_complete"):
                    self._stands_as_opened(job, held, reason)
                    return
            self._disclose_unopened(job, held, reason)
        except (ExchangeHTTPError, httpx.TransportError) as failed:
            which = f"exchange job {exchange_id}" if exchange_id else "its exchange job"
            self._retry(job, f"{reason}; settling {which} failed: {failed}")
            return
        except NotRecorded as failed:
            self._retry(job, f"{reason}; exchange job {exchange_id} not on record yet: {failed}")
            return
        self._refuse(job_id, reason)
        self._acknowledge_unopened(job_id, exchange_id)

    def _withdraw(self, exchange_id: str, why: CancelReason) -> dict[str, Any]:
        """Cancel the exchange's job while it still takes inputs; the job as it is then:
        cancelled now, ended before (cancelled by a try before), or opened to vendors meanwhile
        by an earlier try's request the exchange finished late (`inputs_complete`), which the
        exchange does not cancel (409)."""
        try:
            return self.client.cancel_job(exchange_id, why)
        except ExchangeHTTPError as refused:
            if refused.status != 409:
                raise
            return self.client.job(exchange_id)

    def _acknowledge_unopened(self, job_id: int, exchange_id: str) -> None:
        """Tell the exchange a job that ended before it opened is settled: nothing of it is
        to be brought home. If that fails, the results thread acknowledges it (`collect`)."""
        try:
            self.state.make_durable()
            self.client.acknowledge(exchange_id)
        except (ExchangeHTTPError, httpx.TransportError) as failed:
            log.warning(
                "job %s: ended job %s not acknowledged yet (%s)", job_id, exchange_id, failed
            )
            return
        self._record_acknowledged([exchange_id])

    def _stands_as_opened(self, job: Any, held: Mapping[str, Any], reason: str) -> None:
        """An earlier attempt opened the exchange's job to vendors, and this one cannot send
        the job (`reason`): the job stands as it opened, on record and submitted."""
        note = f"opened by an earlier attempt; this one could not send it: {reason}"
        self._disclose_opened(job, held, note)
        self.state.mark_submitted(int(job["id"]), note)
        if held.get("acknowledged_at"):  # and brought home, before a restore (`BroughtHome`)
            self._settle_brought_home_or_later(self.state.job(int(job["id"])), held)

    def _disclose_opened(self, job: Any, held: Mapping[str, Any], note: str) -> None:
        """Put on record what an exchange job opened to vendors holds, by an attempt that
        could not record it itself."""
        product = self.client.product(job["product_id"])
        patient, study = self._patient_of(str(held["study_uid"]), job["study_uid"])
        self._disclose_sent(
            str(held["id"]),
            patient_id=patient,
            study_uid=study,
            recipient=f"{job['product_id']} {product['version']} of {product['vendor']}, "
            "through the exchange",
            detail=f"exchange job {held['id']}: {held['input_count']} instance(s) as study "
            f"{held['study_uid']} of patient {held['patient_pseudonym']}; {note}",
        )

    def _disclose_unopened(self, job: Any, held: Mapping[str, Any], reason: str) -> None:
        """Put on record what a refused job's exchange job holds, ended before it opened."""
        if not int(held["input_count"]):
            return  # nothing of the study went: the job was made, never filled
        patient, study = self._patient_of(str(held["study_uid"]), job["study_uid"])
        self._disclose_sent(
            str(held["id"]),
            patient_id=patient,
            study_uid=study,
            recipient="the exchange",
            detail=f"exchange job {held['id']}: {held['input_count']} instance(s) as study "
            f"{held['study_uid']} of patient {held['patient_pseudonym']}, sent before the job "
            f"was refused ({reason}); ended ({held['state']}) before any vendor took it, "
            "purged with it",
        )

    def _disclose_sent(
        self, exchange_id: str, *, patient_id: str, study_uid: str, recipient: str, detail: str
    ) -> None:
        """Put what went to an exchange job on the disclosure log, once per exchange job.

        A retry after a later step failed (the job's state not written, the cancel's answer
        lost) reaches the same exchange job again, and finds its entry: the log says what
        left the hospital, not how many tries it took to say so.

        Raises
        ------
        NotRecorded
            When the log cannot be written.
        """
        prefix = f"exchange job {exchange_id}:"
        try:
            earlier = self.disclosures.entries(study_uid=study_uid)
        except sqlite3.Error as exc:  # the write says why, if it fails too
            log.warning("disclosure log not read before writing to it: %s", exc)
            earlier = []
        if any(e.action == Action.disclosed and e.detail.startswith(prefix) for e in earlier):
            return
        self.disclosures.record(
            Action.disclosed,
            patient_id=patient_id,
            study_uid=study_uid,
            recipient=recipient,
            detail=detail,
        )

    def _patient_of(self, pseudonym_study_uid: str, fallback_study_uid: str) -> tuple[str, str]:
        """The hospital's Patient ID and Study Instance UID behind a pseudonymised study, for
        the disclosure log; the vault keeps them until the study's retention ends."""
        known = self.vault.study(pseudonym_study_uid)
        if known is None:
            return "(not in the vault)", fallback_study_uid
        original_study, attributes = known
        return str(attributes.get("PatientID", "")), original_study

    def _refuse(self, job_id: int, reason: str) -> None:
        """End a job unsent, with `reason`. One sent again because the exchange's store lost
        images of its study or the product's results (`_take_back_lost_by_store`) was the
        radiologist's to hear of: its notice that no result will come is queued with the
        refusal, unless another job of its study brings the product's result."""
        log.warning("job %s refused: %s", job_id, reason)
        local = self.state.job(job_id)
        replaced = local["replaced_exchange_job_id"] if local else None
        notice = None
        if local is not None and replaced:
            lost: LostByStore = "results" if local["replaced_for"] == "results" else "images"
            if not self._count_lost_ended(job_id, lost):
                notice = self._lost_notice(local, str(replaced), LOST_BY_STORE_NOTICE[lost])
        self.state.refuse(
            job_id,
            reason,
            notice.model_dump_json() if notice else None,
            urgent=notice is not None and notice.stat,
        )
        if notice is not None:
            self.notices.wake()

    def _retry(self, job: Any, reason: str, level: int = logging.WARNING) -> None:
        delay = backoff(int(job["attempts"]))
        log.log(level, "job %s: %s; retrying in %.0f s", job["id"], reason, delay)
        self.state.retry_job_later(int(job["id"]), reason, delay)

    # results -------------------------------------------------------------------------------

    def _results_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if not self._reconciled:
                    self.reconcile_restore()
                waiting = self._bring_home()
                if self._submitted_watch.due(time.time()):
                    self._submitted_watch.asked(time.time())
                    self.ask_about_submitted()
                if waiting is not None:
                    self._wait_for_news(*waiting)
                failures = 0
            except (ExchangeHTTPError, httpx.TransportError, OSError, sqlite3.Error) as exc:
                failures += 1
                if key_refused(exc):
                    log.error("results not brought home: %s", key_refused_reason(exc))
                else:
                    log.warning("result poll failed: %s", exc)
                self._stop.wait(backoff(failures))
            except Exception:  # never let results stop coming home for good: log, wait, go on
                failures += 1
                log.exception("result poll failed")
                self._stop.wait(backoff(failures))

    def reconcile_restore(self) -> None:
        """After a restore from a backup (`aifi gateway-restore`), ask the exchange what the
        lost disk did after the backup, before anything is sent or brought home.

        A submitted job the lost disk brought home (acknowledged) is ended as it ended
        (`_settle_brought_home`): the exchange lists only jobs not brought home yet, so it
        would wait for ever. A pending job the lost disk sent is found by its key and linked
        to its exchange job (`_found_by_key`): it is not skipped for another job of its study
        (`skip_if_sent_before`), and its send finds that job. Every answer but "not known"
        (404) that is not one is raised, for the caller to try again after its back-off: the
        restore is checked whole, never with a job skipped.
        """
        with self._reconciling:
            restore = self.state.restore_to_reconcile()
            while restore is not None:
                sent = self.state.query(
                    "SELECT * FROM jobs WHERE state = 'submitted' AND exchange_job_id IS NOT NULL"
                )
                for local in sent:
                    remote = _unless_unknown(self.client.job, str(local["exchange_job_id"]))
                    if remote is not None and remote.get("acknowledged_at"):
                        self._settle_brought_home(local, remote)
                for local in self.state.query(
                    "SELECT * FROM jobs WHERE state = 'pending' AND exchange_job_id IS NULL"
                ):
                    if found := self._found_by_key(str(local["idempotency_key"])):
                        self._link_found(int(local["id"]), *found)
                self.state.restore_reconciled(int(restore["id"]))
                log.info("restored from a backup: the jobs it held checked with the exchange")
                self.notices.wake()  # delays the backup held queued may go now
                restore = self.state.restore_to_reconcile()
            self._reconciled = True
        self._notify()

    def _found_by_key(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """The exchange job `key` finds, made by a disk lost since (`aifi gateway-restore`),
        and the key it goes under: one that disk cancelled to start its job over, unopened
        (`_start_over`), gives way to the job it went on to make under the next key
        (`:again<N>`), as far as the exchange holds them. None when the key finds nothing."""
        made = _unless_unknown(self.client.job_by_key, key)
        while made is not None:
            cancelled = made.get("reason") == stray_inputs_reason(str(made["id"]))
            if made.get("inputs_complete") or not cancelled:
                break
            after = _unless_unknown(self.client.job_by_key, started_over_key(key))
            if after is None:
                break
            key, made = started_over_key(key), after
        return (key, made) if made is not None else None

    def _link_found(self, job_id: int, key: str, made: Mapping[str, Any]) -> None:
        """Link a pending job to the exchange job found by its key (`_found_by_key`), under
        that key: its send finds that job even if the spool lacks its study, and it is never
        skipped for another job of its study (`skip_if_sent_before`). Adopted as another job,
        or let go, it is left: the job's send finds that."""
        self.state.link_exchange_job(job_id, str(made["id"]), key)

    def ask_about_submitted(self, now: float | None = None) -> list[int]:
        """Ask the exchange about jobs sent a while ago that have not come home
        (`lost_jobs`), and see to what it lost; the jobs taken back to be sent again.

        One listing of the hospital's jobs not acknowledged, a page of up to 1,000 a request,
        holds every job the exchange still has under way or ended; only a sent job missing
        from it is asked about by itself. Nothing is done unless the key is this hospital's:
        with another's, every job of this one's is unknown (404), and sent again it would go
        under the other's account. What the exchange lost (`_forgotten`, `send_again`):

        - a job it does not know ("no job", 404: restored to a moment before the job was
          made) is sent again as a new exchange job, or, if its results came home before and
          reached not every PACS yet, delivered from the copy kept here; an adopted job
          (`aifi gateway-unknown-jobs`) cannot be sent again and ends, saying so;
        - a job it holds unopened with inputs missing (restored to a moment before the last
          of them arrived) takes the rest;
        - a job it says this gateway brought home already ends as it ended
          (`_settle_brought_home`).
        """
        now = time.time() if now is None else now
        sent = self.state.query(
            "SELECT * FROM jobs WHERE state = 'submitted' AND exchange_job_id IS NOT NULL "
            "AND submitted_at <= ? ORDER BY id",
            (now - ASK_AFTER_SECONDS,),
        )
        if not sent or not self._key_is_ours():
            return []
        held = self.client.unacknowledged_jobs()
        again: list[int] = []
        for local in sent:
            if self._stop.is_set():
                break
            job_id, exchange_id = int(local["id"]), str(local["exchange_job_id"])
            remote = held.get(exchange_id)
            if remote is None:
                remote = self.client.job_unless_forgotten(exchange_id)
            if remote is None:
                if self._forgotten(local, exchange_id):
                    again.append(job_id)
            elif remote.get("acknowledged_at"):
                self._settle_brought_home(local, remote)
            elif remote["state"] == "requested" and not remote["inputs_complete"]:
                unopened = "the exchange holds it unopened, inputs lost"
                if self._home_already(local, exchange_id, unopened):
                    if self.state.job(job_id)["state"] == "delivered":
                        # Withdrawn once every PACS has the results (before, its end would
                        # be taken for the job's): listed as ended, it is acknowledged as a
                        # job brought home.
                        self._withdraw(exchange_id, CancelReason.results_home)
                    continue
                reason = (
                    f"inputs sent again: the exchange holds {remote['input_count']} of them "
                    f"for its job {exchange_id}, unopened (restored to an earlier moment?)"
                )
                if self.state.send_again(job_id, exchange_id, reason, forgotten=False):
                    log.warning("job %s: %s", job_id, reason)
                    self._submitted_watch.count(Outcome.inputs_sent_again)
                    again.append(job_id)
        if again:
            self._submit.set()
        self._notify()
        return again

    def _key_is_ours(self) -> bool:
        """Whether the exchange takes the gateway's key for this hospital's (`--check` says
        the same); logged as an error when it does not."""
        mine = self.client.organisations()
        if mine.get(self.config.hospital) == "hospital":
            return True
        holders = ", ".join(f"{org} ({kind})" for org, kind in mine.items()) or "nobody"
        log.error(
            "the API key belongs to %s, not to hospital %r: jobs the exchange may have lost "
            "are not sent again until the key is this hospital's", holders, self.config.hospital,
        )  # fmt: skip
        return False

    def _forgotten(self, local: Mapping[str, Any], exchange_id: str) -> bool:
        """See to a job the exchange does not know (`ask_about_submitted`); whether it is to
        be sent again."""
        job_id = int(local["id"])
        lost = (
            f"the exchange no longer knows its job {exchange_id} (restored to an earlier moment?)"
        )
        if self._home_already(local, exchange_id, lost):
            return False
        if int(local["round"]) == 0:  # adopted: no round of the study to send again
            covering = self.state.covering_job(job_id)
            if covering is not None:  # the radiologist gets the product's result from it
                reason = f"{lost}; adopted, its study's job {covering['id']} stands for it"
                if self.state.end_forgotten(job_id, exchange_id, reason):
                    log.warning("job %s: %s", job_id, reason)
                    self._submitted_watch.count(Outcome.covered)
                return False
            reason = f"{lost}; adopted, it cannot be sent again: send the study again from the PACS"
            notice = self._lost_notice(local, exchange_id)
            if self.state.end_forgotten(
                job_id,
                exchange_id,
                reason,
                notice.model_dump_json() if notice else None,
                urgent=notice is not None and notice.stat,
            ):
                log.error("job %s: %s", job_id, reason)
                self._submitted_watch.count(Outcome.ended)
                self.notices.wake()
            return False
        reason = f"sent again: {lost}"
        if not self.state.send_again(job_id, exchange_id, reason, forgotten=True):
            return False
        log.warning("job %s: %s", job_id, reason)
        self._submitted_watch.count(Outcome.sent_again)
        return True

    def _home_already(self, local: Mapping[str, Any], exchange_id: str, lost: str) -> bool:
        """A job whose results came home before the exchange lost it (`lost` says how), each
        of them fetched, and filed in some PACS but not all: delivered from the copy kept
        here, the product not run again. False when its results are not all here."""
        if local["result_seen_at"] is None:
            return False
        listed = self._kept_whole(int(local["id"]), exchange_id)
        if listed is None:
            return False
        log.warning("job %s: %s: its results go on from the copy kept here", local["id"], lost)
        if self.collect(listed):  # once: delivered, it is no longer asked about
            self._submitted_watch.count(Outcome.delivered_from_copy)
        return True

    def _kept_whole(self, job_id: int, exchange_id: str) -> dict[str, Any] | None:
        """The exchange's listing of a job brought home, as `collect` kept it, when it is of
        `exchange_id` and every result it lists was fetched: its delivery needs nothing of
        the exchange's."""
        try:
            listed = dict(json.loads(self._listed_job(job_id).read_text()))
        except (OSError, ValueError, TypeError):
            return None  # not brought home, or before a restore moved its folder aside
        if str(listed.get("id")) != exchange_id:
            return None
        fetched = self.fetched_results(job_id)
        names = [str(result["name"]) for result in listed.get("results") or []]
        if not names or not all((fetched / name).is_file() for name in names):
            return None
        return listed

    def _settle_brought_home(self, local: Mapping[str, Any], remote: Mapping[str, Any]) -> None:
        """End a job the exchange says this gateway brought home already (acknowledged), as it
        ended then: a restore from an earlier backup made the gateway forget it. Unless the
        exchange's store lost its images or results, and it was sent again in its place
        (`_sent_again_after_backup`): it is taken back to be sent again. Nothing is
        fetched or delivered again, which would put a second copy in the PACS and give the
        RIS a second notice. A completed job counts as delivered unless the acknowledgement
        said its results did not reach the PACS, and why (`acknowledge`); an exchange job
        acknowledged by a gateway too old to say so counts as delivered."""
        if self._sent_again_after_backup(local, remote):
            return
        note = f"brought home before {BroughtHome.WHEN} (acknowledged {remote['acknowledged_at']})"
        acknowledged = datetime.fromisoformat(str(remote["acknowledged_at"])).timestamp()
        ended = remote.get("ended_at")
        common = {
            "exchange_state": remote["state"],
            "exchange_ended_at": datetime.fromisoformat(ended).timestamp() if ended else None,
            "ended_at": time.time(),
        }
        missed = remote.get("delivery") not in (None, Delivery.delivered)
        if remote["state"] == "completed" and missed:
            why = NOT_DELIVERED_BECAUSE.get(remote["delivery"], remote["delivery"])
            reason = f"results not delivered: {why}; {note}"
            self.state.update_job(
                int(local["id"]), state="ended", reason=reason, delivery=remote["delivery"],
                **common,
            )  # fmt: skip
        elif remote["state"] == "completed":
            self.state.update_job(
                int(local["id"]), state="delivered", delivered_at=acknowledged, reason=note,
                **common,
            )  # fmt: skip
        else:
            reason = f"{remote.get('reason') or remote['state']}; {note}"
            self.state.update_job(int(local["id"]), state="ended", reason=reason, **common)
        # Acknowledged, so its notices went out (the acknowledgement waits for them): one the
        # backup still held queued is not sent a second time, and a delay it told was
        # followed there.
        self.state.notice_done(int(local["id"]))
        self.state.give_up_notifications(int(local["id"]), (), SENT_BY_THE_LOST_DISK)
        self.state.delay_followed(int(local["id"]))
        if exchange_id := remote.get("id") or local["exchange_job_id"]:
            self._record_acknowledged([str(exchange_id)], acknowledged)
        log.info("job %s: %s", local["id"], note)

    def _settle_brought_home_or_later(
        self, local: Mapping[str, Any], remote: Mapping[str, Any]
    ) -> None:
        """`_settle_brought_home` for a job just recorded as sent: when the exchange cannot
        answer what it asks (the job sent again in its place), the job is left sent, and
        `ask_about_submitted` settles it on its next round."""
        try:
            self._settle_brought_home(local, remote)
        except (ExchangeHTTPError, httpx.TransportError) as exc:
            log.warning(
                "job %s: brought home before %s; settled later (%s)",
                local["id"], BroughtHome.WHEN, exc,
            )  # fmt: skip

    def _digest_if_sent(
        self, exchange_id: str, count: int, instances: Sequence[Mapping[str, Any]]
    ) -> str | None:
        """What a job brought home before a restore was sent with, as `inputs_digest`, when
        it is these `instances`: its input UIDs at the exchange are theirs. Another job of the
        study with the same instances is then skipped, not run a second time
        (`skip_if_sent_before`). None when that cannot be known (the exchange purged the list
        after its retention): a count alone could skip a round with other instances, and lose
        its result, where None at worst runs the product twice."""
        if count != len(instances):
            return None
        held = self.client.input_uids(exchange_id)
        if held != {self.key.uid(str(row["sop_instance_uid"])) for row in instances}:
            return None
        return inputs_digest(instances)

    def _wait_for_news(self, retry_at: float, last: str) -> None:
        """Every job listed waits for its retry (at `retry_at`): long-poll meanwhile for jobs
        listed after `last`, the last of them, so that a job ending now is brought home now,
        not when the others' retries come round (up to five minutes)."""
        remaining = retry_at - time.time()
        if remaining > 0.1:
            self.client.ended_jobs(wait=min(self.config.poll_wait_seconds, remaining), after=last)

    def _bring_home(self) -> tuple[float, str] | None:
        """Collect the ended jobs the exchange lists, a page at a time, acknowledging each
        page's worth brought home. If every job listed is waiting for its retry: when the
        first retry is due, and the last job listed; otherwise None.

        A full page with jobs that could not be brought home (a PACS refusing one product's
        results, jobs this gateway does not know) leads to the next, so that such jobs never
        hide the jobs behind them — a stroke result among them.
        """
        after: str | None = None
        last = ""
        retries: list[float] = []
        collected = False
        for exchange_id in self.adoptions.decided_since_met():  # now, not in five minutes
            self._retry_at.pop(exchange_id, None)
        listed: set[str] = set()
        asked = time.time()
        while not self._stop.is_set():
            page = self.client.ended_jobs(
                wait=self.config.poll_wait_seconds if after is None else 0, after=after
            )
            now = time.time()
            last = str(page[-1]["id"]) if page else last
            listed.update(str(job["id"]) for job in page)
            if len(page) < ENDED_PAGE:
                self._forget_unlisted(listed, asked)
            brought_home: list[str] = []
            for job in sorted(page, key=_urgent, reverse=True):  # a stroke result first
                if self._stop.is_set():
                    break
                job_id = str(job["id"])
                self._take_notices_done()
                if self._retry_at.get(job_id, 0) > now:
                    retries.append(self._retry_at[job_id])
                    continue
                collected = True
                if self.collect(job):
                    brought_home.append(job_id)
            self.acknowledge(brought_home)
            if len(page) < ENDED_PAGE or len(brought_home) == len(page):
                break
            after = last
        return (min(retries), last) if retries and not collected else None

    def notices_queued(self) -> int:
        """Notices queued and not yet done with (sent, refused, or given up)."""
        return sum(count for count, _oldest in self.state.queued_notices().values())

    def unknown_jobs_left(self) -> int:
        """Ended exchange jobs this gateway has no record of, left unacknowledged (until the
        hospital decides, or while a decision waits), as of the last listing: for the
        exporter."""
        return len(self.adoptions)

    def _forget_unlisted(self, listed: set[str], asked: float) -> None:
        """The exchange listed every ended job not brought home (`listed`): what this gateway
        keeps of others (a retry due, an unknown job met) is of jobs brought home since, by
        another gateway on the hospital's account say, and goes; it would grow for ever."""
        for held in (self._retry_at, self._not_delivered, self._notices_awaited):
            for exchange_id in [exchange_id for exchange_id in held if exchange_id not in listed]:
                del held[exchange_id]
        self.adoptions.forget_unlisted(listed)
        with self._noting_acknowledgements():
            settled, reopened = self.state.match_listing(listed, asked)
            if settled or reopened:
                log.info(
                    "acknowledged at the exchange, as its listing shows: %d job(s) ended here;"
                    " not acknowledged: %d taken for acknowledged", settled, reopened,
                )  # fmt: skip

    def acknowledge(self, exchange_ids: list[str]) -> None:
        """Tell the exchange these jobs are home, in one request, and which of them brought
        no results to the PACS, and why: the operator counts them, and this gateway reads it
        back should a restore make it forget the job (`_settle_brought_home`).

        If that fails the jobs come back in the next poll; bringing them home again finds
        every result delivered and every notice sent already (or the same reason they cannot
        be), and only the acknowledgement is repeated.
        """
        if not exchange_ids:
            return
        self.state.make_durable()  # what was brought home, before the exchange forgets it
        said = {
            exchange_id: self._not_delivered[exchange_id]
            for exchange_id in exchange_ids
            if exchange_id in self._not_delivered
        }
        try:
            self._acknowledge_saying(exchange_ids, said)
        except (ExchangeHTTPError, httpx.TransportError, OSError) as exc:
            log.warning(
                "%d job(s) brought home but not acknowledged yet: %s", len(exchange_ids), exc
            )
            return
        for exchange_id in said:
            del self._not_delivered[exchange_id]
        self._record_acknowledged(exchange_ids)

    def _acknowledge_saying(self, exchange_ids: list[str], said: dict[str, Delivery]) -> None:
        """`acknowledge_many`, saying what became of results (`said`) as far as the exchange
        understands it. An exchange older than this gateway refuses a reason it does not know
        (422): results its store lost are said as purged (gone before they were fetched, a
        reason every exchange knows), and failing that the jobs are acknowledged without
        saying, rather than left at the exchange for ever."""
        older: dict[str, Delivery] = {
            job: Delivery.purged if why == Delivery.lost else why for job, why in said.items()
        }
        tries: list[dict[str, Delivery] | None] = [said]
        if older != said:
            tries.append(older)
        tries.append(None)
        for attempt, saying in enumerate(tries):
            try:
                self.client.acknowledge_many(exchange_ids, saying)
                return
            except ExchangeHTTPError as refused:
                if refused.status != 422 or not said or attempt == len(tries) - 1:
                    raise
                log.warning(
                    "the exchange refused the reasons (%s): acknowledged %s", refused,
                    "with those it knows" if tries[attempt + 1] else "without",
                )  # fmt: skip

    def _record_acknowledged(self, exchange_ids: list[str], at: float | None = None) -> None:
        """Note that the exchange took these jobs' acknowledgement, for `aifi gateway-jobs`."""
        with self._noting_acknowledgements():
            self.state.acknowledged(exchange_ids, at)

    @contextmanager
    def _noting_acknowledgements(self) -> Iterator[None]:
        """Only `aifi gateway-jobs` reads what is noted of acknowledgements: the disk failing
        here loses no job, and the note is left (the next complete listing mends it)."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            log.warning("acknowledgements not noted in the state (%s)", exc)

    def collect(self, job: dict[str, Any]) -> bool:
        """Bring an ended job home: deliver its results to every PACS (True when done). A job
        whose results the exchange purged before they were fetched is ended with that reason.

        The caller acknowledges the jobs brought home, a poll's worth together (`acknowledge`).
        """
        exchange_id = str(job["id"])
        local = self.state.job_by_exchange_id(exchange_id)
        if local is None and job.get("reason") == stray_inputs_reason(exchange_id):
            # Cancelled by a gateway as it started a job over (`_start_over`), its
            # acknowledgement not through: nothing came of it to bring home. Other jobs this
            # gateway does not know are left for whoever made them.
            log.info("ended job %s was cancelled to start its job over; acknowledged", exchange_id)
            return True
        if local is None and (again := self.state.job_replacing(exchange_id)) is not None:
            # Sent again in its place (`_take_back_lost_by_store`), its acknowledgement not
            # through: its end was seen to then.
            if again["replaced_for"] == "results":
                self._not_delivered[exchange_id] = Delivery.lost
            log.info(
                "ended job %s was sent again as job %s; acknowledged", exchange_id, again["id"]
            )
            return True
        if local is not None:
            self.adoptions.known(exchange_id)
        else:
            try:
                unknown = self.adoptions.meet(job)
            except (OSError, sqlite3.Error) as exc:  # the gateway's disk: tried again later
                self.adoptions.failed(exchange_id, exc)
                return False
            if not isinstance(unknown, dict):
                return unknown
            local = unknown
        if local["state"] == "pending":
            # Sent by an attempt that is not on record yet (its disclosure could not be
            # written, or the exchange's answer was lost): brought home after the retry that
            # records it, so that no result comes back for a disclosure the log lacks.
            self._retry_at[exchange_id] = max(float(local["next_attempt_at"]), time.time()) + 1
            return False
        if local["state"] == "refused":
            settled = self._settle_refused(local, job)
            if settled is not None:
                return settled
        if _brought_home(local):
            # Brought home on an earlier pass whose acknowledgement did not get through, or
            # held as its notice that no result will come could not be queued: said again as
            # it ended, not done again (its study may have left the vault since). A notice
            # queued already stays as it is.
            if local["delivery"]:
                self._not_delivered[exchange_id] = Delivery(local["delivery"])
            if self._notices_waiting(int(local["id"]), exchange_id):
                return False  # before queueing again: nothing to queue while one waits
            if local["state"] == "ended" and not self._queue_no_result(local, job):
                return False
            if self._notices_waiting(int(local["id"]), exchange_id):
                return False
            self._settled(exchange_id)
            return True
        try:
            if local["result_seen_at"] is None:
                # Nothing of this job was fetched yet: a folder under its id is another job's,
                # left from before a restore gave its id out again; never delivered as this.
                shutil.rmtree(self.results_dir / str(local["id"]), ignore_errors=True)
                ended = job.get("ended_at")
                self.state.update_job(
                    int(local["id"]),
                    result_seen_at=time.time(),
                    exchange_ended_at=datetime.fromisoformat(ended).timestamp() if ended else None,
                )
            if job["state"] == "completed":
                self._keep_listing(int(local["id"]), job)
                try:
                    delivered = self._deliver(local, exchange_id, job)
                except (ResultsPurged, ResultsRefused) as exc:
                    self._not_delivered[exchange_id] = exc.delivery
                    if not isinstance(exc, ResultsLost) or not self._send_again_for_lost_results(
                        local, job, exc
                    ):
                        log.error("job %s: %s", exchange_id, exc)
                        self.state.update_job(
                            int(local["id"]), state="ended", exchange_state="completed",
                            reason=str(exc), ended_at=time.time(), delivery=exc.delivery.value,
                        )  # fmt: skip
                        if not self._queue_no_result(self._row(local), job):
                            return False
                else:
                    if delivered is None:
                        return False
                    self.state.update_job(
                        int(local["id"]), state="delivered", exchange_state="completed",
                        delivered_at=time.time(), ended_at=time.time(),
                        results_delivered=delivered,
                    )  # fmt: skip
            elif not self._send_again_for_lost_images(local, job):
                self.state.update_job(
                    int(local["id"]), state="ended", exchange_state=job["state"],
                    reason=job.get("reason") or job["state"], ended_at=time.time(),
                )  # fmt: skip
                if not self._queue_no_result(self._row(local), job):
                    return False
        except PASSING_FAILURES as exc:
            self._collect_later(local, exchange_id, exc)
            return False
        except Exception as exc:  # never let one job's trouble hold up the jobs behind it
            log.exception("job %s: collecting results failed unexpectedly", exchange_id)
            self._collect_later(local, exchange_id, exc)
            return False
        finally:
            self._notify()
        if self._notices_waiting(int(local["id"]), exchange_id):
            return False
        self._settled(exchange_id)
        return True

    def _send_again_for_lost_images(self, local: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
        """Take a job that failed or expired because the exchange lost images of its study
        from its store (`inputs_lost_at`) back to be sent again, as a new exchange job from
        the spool, and say whether it was: the radiologist gets the product's result, late,
        rather than a notice to send the study again (`_take_back_lost_by_store`). Those not
        taken back end (`images_lost_ended`), with the notice unless another job of the study
        brings the product's result (`covered`)."""
        if _lost_by_store(job) != "images":
            return False
        reason = (
            f"sent again: the exchange lost images of its study before the product read them "
            f"(its job {job['id']} {job['state']}: {job.get('reason') or 'no reason given'})"
        )
        return self._send_again_lost_by_store(local, job, "images", reason)

    def _send_again_for_lost_results(
        self, local: Mapping[str, Any], job: Mapping[str, Any], lost: ResultsLost
    ) -> bool:
        """Take a completed job whose result the exchange's store lost before it was fetched
        (`lost` says which) back to be sent again, as `_send_again_for_lost_images` does: the
        product is run again, and its result reaches the PACS rather than a notice to send the
        study again. Those not taken back end (`results_lost_ended`), with that notice unless
        another job of the study brings the product's result (`covered`)."""
        reason = (
            f"sent again: the exchange's store lost the product's results of its job "
            f"{job['id']} before they were fetched ({lost})"
        )
        return self._send_again_lost_by_store(local, job, "results", reason)

    def _send_again_lost_by_store(
        self, local: Mapping[str, Any], job: Mapping[str, Any], lost: LostByStore, reason: str
    ) -> bool:
        """Take the job back (`_take_back_lost_by_store`) and count it as sent again, or count
        it as ended (`_count_lost_ended`); whether it was taken back."""
        if self._take_back_lost_by_store(local, job, lost, reason):
            self._submitted_watch.count(
                Outcome.images_sent_again if lost == "images" else Outcome.results_sent_again
            )
            return True
        self._count_lost_ended(int(local["id"]), lost)
        return False

    def _take_back_lost_by_store(
        self,
        local: Mapping[str, Any],
        job: Mapping[str, Any],
        lost: LostByStore,
        reason: str,
        *,
        restored: bool = False,
        only_if_found: bool = False,
    ) -> bool:
        """`GatewayState.send_again_anew` for a job whose exchange `job` the exchange's store
        `lost` the images or results of; whether it was taken back. Never an adopted job (no
        round of the study to send), nor a job sent again for this before.

        A job the exchange holds under the key it goes under now, made by a disk lost since
        (`_found_by_key`), is linked at once, whether the job is `restored` (one the lost
        disk brought home) or met ended after a restore (its acknowledgement was lost): it
        stands as it opened, even if the spool lacks the study, and the results thread never
        meets it as a job of nobody's. The exchange is asked only when such a disk may have
        been: the gateway was restored since the job was made, or the job is `restored`, or
        the spool lacks the study; a gateway never restored sends the study again without
        a request that could fail (and, failing, have the lost result read again). With none
        and the spool lacking the study (a restore without it, a volume not mounted), a job
        is not taken back (sent again, it would wait for the study), unless `restored`: the
        lost disk took it back before its backup was put back without the spool, and nobody
        heard of it; its send then waits for the spool to be put back, and is refused with
        the notice if it is not (`_spool_gone`). With `only_if_found`, a job is taken back
        only when the exchange holds such a job."""
        if int(local["round"]) == 0 or sent_again_for_store_loss(str(local["idempotency_key"])):
            return False
        study_uid = str(local["study_uid"])
        gone = _gone_from_spool(self.state.study_instances(study_uid))
        found: tuple[str, dict[str, Any]] | None = None
        if gone or restored or self.state.restored_after(float(local["created_at"])):
            found = self._found_by_key(lost_by_store_key(str(local["idempotency_key"])))
        if found is None:
            if only_if_found:
                return False
            if gone and not restored:
                log.warning(
                    "study %s: not sent again: %d of its instance(s) are gone from the spool",
                    study_uid, len(gone),
                )  # fmt: skip
                return False
        to_link = (found[0], str(found[1]["id"])) if found is not None else None
        if not self.state.send_again_anew(int(local["id"]), str(job["id"]), reason, lost, to_link):
            return False
        log.warning("job %s: %s", local["id"], reason)
        self._submit.set()
        return True

    def _sent_again_after_backup(self, local: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
        """Whether a job the exchange says this gateway brought home already (its exchange
        `job` acknowledged: a restore made the gateway forget it) is one whose images or
        results the exchange's store lost, taken back now to be sent again
        (`_take_back_lost_by_store`): the lost disk took it back, and sent it again or was
        about to, rather than ending it as its lost job ended. The job it sent is found by
        its key, and not met as one of nobody's. Nothing is counted: the lost disk counted
        it.

        A completed job acknowledged as `purged` may be one whose results the store lost,
        said so to an exchange that does not know `lost` (`_acknowledge_saying`): it is taken
        back only if the exchange holds the job sent again in its place."""
        lost = _lost_by_store(job)
        purged = job["state"] == "completed" and job.get("delivery") == Delivery.purged
        if lost is None and not purged:
            return False
        lost = lost or "results"
        reason = f"sent again: the exchange's store lost the {lost} of its job {job['id']}"
        return self._take_back_lost_by_store(
            local, job, lost, reason, restored=True, only_if_found=purged
        )

    def _count_lost_ended(self, job_id: int, lost: LostByStore) -> bool:
        """Count a job that ended because the exchange's store `lost` its study's images or
        the product's results, not sent again: `covered` when another job of its study brings
        the product's result (its notice is not sent), else `images_lost_ended` or
        `results_lost_ended`, which page. Whether it was covered."""
        covered = self.state.covering_job(job_id) is not None
        ended = Outcome.images_lost_ended if lost == "images" else Outcome.results_lost_ended
        self._submitted_watch.count(Outcome.covered if covered else ended)
        return covered

    def _notices_waiting(self, local_id: int, exchange_id: str) -> bool:
        """The job's notices are still queued: its acknowledgement waits for them (an
        acknowledged job is one whose notices went out, as `_settle_brought_home` takes it),
        looked at again once they are done with (`_notice_done`), and otherwise not before
        their next try is due, nor within a poll's wait: a notice thread busy with a receiver
        that hangs must not make the results thread list the exchange every second."""
        # A delay notice is of a job under way: one still queued is not sent once it ended.
        queued = [row for row in self.state.queued_notices_of(local_id) if row["kind"] != "delayed"]
        if not queued:
            return False
        due = min(float(row["due_at"]) for row in queued)
        now = time.time()
        retry = max(due, now + max(self.config.poll_wait_seconds, 1.0))
        self._retry_at[exchange_id] = self._notices_awaited[exchange_id] = retry
        return True

    def _notice_done(self, exchange_id: str) -> None:
        """A job's notice is done with (said by a notice thread): its acknowledgement goes at
        the next look, not at the retry `_notices_waiting` set (`_take_notices_done`)."""
        with self._notices_done_lock:
            self._notices_done.add(exchange_id)

    def _take_notices_done(self) -> None:
        """On the results thread, which alone keeps the retries. Only a retry set to wait
        for the job's notices ends early: a PACS back-off set since keeps its time."""
        with self._notices_done_lock:
            done, self._notices_done = self._notices_done, set()
        for exchange_id in done:
            awaited = self._notices_awaited.pop(exchange_id, None)
            if awaited is not None and self._retry_at.get(exchange_id) == awaited:
                del self._retry_at[exchange_id]

    def _settled(self, exchange_id: str) -> None:
        """The job is brought home: nothing of it waits for a retry any more."""
        self._retry_at.pop(exchange_id, None)
        self._collect_attempts.pop(exchange_id, None)
        self._notices_awaited.pop(exchange_id, None)

    def _settle_refused(self, local: Mapping[str, Any], job: Mapping[str, Any]) -> bool | None:
        """An ended exchange job of a job refused here: True when settled (acknowledge it),
        False to try later, None when it opened to vendors and is brought home as any other.

        Refused here, its exchange job ended before it opened (`_refuse_sent`, or an older
        version's refusal, which left it to expire): nothing to bring home, what it holds goes
        on record if it is not yet, and the refusal stands. An older version could refuse a
        job an earlier attempt had opened to vendors unrecorded: that job stands as it opened,
        on record before anything of it comes home, and ends as its exchange job ended. While
        the record cannot be written, the job waits as it is: a retry's error does not take
        the refusal's reason (as `_collect_later` would).
        """
        exchange_id, reason = str(job["id"]), str(local["reason"])
        try:
            if not job.get("inputs_complete"):
                self._disclose_unopened(local, job, reason)
                log.info("ended job %s is refused job %s's; acknowledged", exchange_id, local["id"])
                return True
            note = f"opened by an earlier attempt, later refused: {reason}"
            self._disclose_opened(local, job, note)
        except (ExchangeHTTPError, httpx.TransportError, NotRecorded) as exc:
            log.warning("ended job %s not on record yet (%s); tried again later", exchange_id, exc)
            self._retry_at[exchange_id] = time.time() + 60
            return False
        return None

    def _listed_job(self, job_id: int) -> Path:
        """Where a job brought home keeps the exchange's listing of it (`collect`)."""
        return self.results_dir / str(job_id) / LISTED_JOB

    def _keep_listing(self, job_id: int, job: Mapping[str, Any]) -> None:
        """Keep the exchange's listing of a completed job beside its results, unless kept
        already: should the exchange forget the job before every PACS has them, they are
        delivered from here (`_home_already`). Kept at every pass that lacks it: a job
        fetched before this release, or again after a restore of the gateway, gets it too."""
        saved = self._listed_job(job_id)
        if saved.is_file():
            return
        saved.parent.mkdir(parents=True, exist_ok=True)
        partial = saved.with_name(saved.name + ".part")
        partial.write_text(json.dumps(job))
        partial.replace(saved)

    def fetched_results(self, job_id: int) -> Path:
        """Where a job's results are kept as the exchange sent them (pseudonymised), until
        the study's retention ends; their re-identified copies are kept beside them."""
        return self.results_dir / str(job_id) / "from-exchange"

    def _collect_later(self, local: dict[str, Any], exchange_id: str, exc: Exception) -> None:
        """Try the job again after a back-off, the jobs behind it meanwhile.

        A full disk refuses the result, and may refuse this record of it too: the attempts
        are counted in memory as well, so that the retries still spread out.
        """
        attempts = max(int(local["attempts"]), self._collect_attempts.get(exchange_id, 0)) + 1
        self._collect_attempts[exchange_id] = attempts
        self._retry_at[exchange_id] = time.time() + backoff(attempts)
        log.warning(
            "job %s: collecting results failed (attempt %d, next in %.0f s): %s",
            exchange_id, attempts, backoff(attempts), exc,
        )  # fmt: skip
        try:
            self.state.update_job(int(local["id"]), attempts=attempts, reason=str(exc))
        except sqlite3.Error as unrecorded:
            log.warning("job %s: the failure is not on record: %s", exchange_id, unrecorded)

    def _deliver(self, local: dict[str, Any], exchange_id: str, job: dict[str, Any]) -> int | None:
        """Re-identify each DICOM result, queue the result notice (sent on its own thread, a
        STAT alert at once), then C-STORE the results to every PACS; None while a
        destination still fails.

        Every result is re-identified before anything is sent, so a job with one result that
        cannot be filed (:class:`ResultsRefused`) delivers none of them.
        """
        local_id = int(local["id"])
        folder = self.results_dir / str(local_id)
        # What the exchange sent and what goes to the PACS apart: a result's name is the
        # vendor's, and no name may stand for another result's re-identified copy.
        fetched, restored_dir = self.fetched_results(local_id), folder / "reidentified"
        fetched.mkdir(parents=True, exist_ok=True)
        restored_dir.mkdir(exist_ok=True)
        known = self.vault.study(str(job["study_uid"]))
        if known is None:
            raise ResultsUnmapped(
                f"the vault no longer knows study {job['study_uid']} of job {exchange_id} "
                "(its retention ended, or a restore lost it): its results cannot be mapped "
                "back to the patient; nothing was delivered"
            )
        if known[0] != local["study_uid"]:
            raise ResultsUnmapped(
                f"the exchange lists job {exchange_id} for study {job['study_uid']}, which is "
                "not the study this gateway sent it for; nothing was delivered"
            )
        patient, study = str(known[1].get("PatientID", "")), known[0]
        product = f"{job['product_id']} (exchange job {exchange_id})"
        ready: list[tuple[str, Path]] = []
        listed = job.get("results")
        for result in listed if listed is not None else self.client.results(exchange_id):
            name = str(result["name"])
            if not RESULT_NAME.fullmatch(name):
                raise ResultsRefused(f"result name {name!r} is not one a result may have")
            downloaded = fetched / name
            if not downloaded.exists():
                if result.get("purged_at"):
                    raise ResultsPurged(
                        f"result {name} was purged at the exchange at {result['purged_at']}, "
                        "before this gateway fetched it (not fetched within the exchange's "
                        "retention time); nothing was delivered"
                    )
                try:
                    self.client.download_result(exchange_id, name, downloaded)
                except ExchangeHTTPError as exc:
                    if not blob_gone(exc):  # else asked again would be gone again
                        raise
                    if blob_lost(exc):
                        raise ResultsLost(
                            f"result {name} is missing from the exchange's store, though its "
                            f"retention did not take it ({exc.detail}); nothing was delivered"
                        ) from exc
                    raise ResultsPurged(
                        f"result {name} is gone from the exchange ({exc.detail}); nothing was "
                        "delivered"
                    ) from exc
            if not str(result["media_type"]).startswith("application/dicom"):
                continue
            restored = restored_dir / name
            if not restored.exists():
                try:
                    reidentify_file(downloaded, restored, self.vault, original_study_uid=study)
                except (OSError, sqlite3.Error, MemoryError):
                    raise  # this gateway's disk or vault: tried again
                except Exception as exc:  # what the vendor made: the same when fetched again
                    raise ResultsRefused(
                        f"result {name} cannot be filed in the PACS "
                        f"({type(exc).__name__}: {exc}); nothing of this job was delivered"
                    ) from exc
            # Whether re-identified now or on an earlier pass (which may have stopped before
            # its entry was written: a crash, the log's disk full).
            self._disclose_reidentified(patient, study, f"result {name} of {product}")
            ready.append((name, restored))
        self._queue_result_notice(local, job, known, [path for _name, path in ready])
        self._key_image(local_id, [path for _name, path in ready], folder / "key-image.png")
        complete = True
        for destination in self.config.pacs:
            pending = [
                (name, path) for name, path in ready
                if not self.state.delivered(local_id, name, destination.name)
            ]  # fmt: skip
            if not pending:
                continue
            outcomes = send_files(
                [path for _name, path in pending],
                destination.host,
                destination.port,
                destination.ae_title,
                self.config.calling_ae_title,
            )
            for (name, _path), outcome in zip(pending, outcomes, strict=True):
                self.disclosures.record(
                    Action.delivered,
                    patient_id=patient,
                    study_uid=study,
                    recipient=f"PACS {destination.name} ({destination.ae_title})",
                    ok=outcome.ok,
                    detail=f"result {name} of {product}"
                    + (f": {outcome.error}" if outcome.error else ""),
                )
                self.state.record_delivery(local_id, name, destination.name, None, outcome.error)
                complete = complete and outcome.ok
        if not complete:
            attempts = int(self.state.job(local_id)["attempts"]) + 1
            self.state.update_job(local_id, attempts=attempts, reason="delivery to the PACS failed")
            self._retry_at[exchange_id] = time.time() + backoff(attempts)
            return None
        return len(ready)

    def _disclose_reidentified(self, patient_id: str, study_uid: str, detail: str) -> None:
        """Put a result's re-identification on the disclosure log, once.

        The re-identified copy is kept before its entry is written, and a pass that stopped
        in between (the gateway killed, the log's disk full) leaves the copy without one: the
        next pass finds the copy, and writes the entry then. So the entry is looked for first,
        and written only when the log does not hold it; a log that cannot be read raises
        (tried again later) rather than risk a second entry.

        Raises
        ------
        NotRecorded
            When the log cannot be written.
        """
        earlier = self.disclosures.entries(study_uid=study_uid)
        if any(e.action == Action.reidentified and e.detail == detail for e in earlier):
            return
        self.disclosures.record(
            Action.reidentified,
            patient_id=patient_id,
            study_uid=study_uid,
            recipient="this gateway",
            detail=detail,
        )

    def _queue_result_notice(
        self,
        local: Mapping[str, Any],
        job: dict[str, Any],
        known: tuple[str, dict[str, str]],
        results: list[Path],
    ) -> None:
        """Queue the result notice for every configured channel (`aifi.gateway.notice_queue`).

        `known`: the job's study as the vault holds it, which the delivery has already looked
        up and checked. Queued again as a delivery is retried, it stays as first queued.
        """
        local_id = int(local["id"])
        if not self.config.notifications.configured:
            self.state.give_up_notifications(local_id, (), NO_LONGER_SENT)
            return
        summary = None
        if job.get("summary"):
            try:
                summary = ResultSummary.model_validate(job["summary"])
            except ValueError as exc:
                log.warning(
                    "job %s: summary unreadable (%s); notice without findings", job["id"], exc
                )
        uids = [
            str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                .SOPInstanceUID)
            for path in results
        ]  # fmt: skip
        ended = job.get("ended_at")
        queued = QueuedNotice(
            kind="result",
            exchange_job_id=str(job["id"]),
            product_id=str(job["product_id"]),
            summary=summary,
            result_sop_instance_uids=uids,
            completed_at=datetime.fromisoformat(ended) if ended else None,
            urgent=_ran_stat(local, job),
            pseudonym_study_uid=str(job["study_uid"]),
            original_study_uid=known[0],
        )
        self.notices.queue(local_id, queued)

    def _row(self, local: Mapping[str, Any]) -> Mapping[str, Any]:
        """The job's row as it stands now (an adopted job's too), after an update."""
        return self.state.job(int(local["id"]))

    def _queue_no_result(self, local: Mapping[str, Any], job: dict[str, Any]) -> bool:
        """Queue the notice that this ended job brings no result, and why (sent on its own
        thread, `aifi.gateway.notice_queue`); True when queued (or there is nothing to tell),
        False to try again later.

        A radiologist who waits for a product's finding, or reads a triage product's silence
        as a negative, must hear that none is coming. The reason is the gateway's own words
        (`NO_RESULT_BECAUSE`): the vendor's may name the study's pseudonyms, which have no
        place beside the patient's identity. A study the vault no longer knows (or not as the
        job's) cannot be named to anyone: nothing is sent for it.
        """
        exchange_id, local_id = str(job["id"]), int(local["id"])
        settings = self.config.notifications
        reason = no_result_reason(
            str(local["exchange_state"]),
            local["delivery"],
            inputs_lost=job.get("inputs_lost_at") is not None,
        )
        try:
            if reason is None:  # nothing to tell; what a result notice still had to retry
                self.state.give_up_notifications(local_id, (), "given up: no result to announce")
                return True
            if reason in LOST_BY_STORE_NOTICE.values() and (
                covering := self.state.covering_job(local_id)
            ):
                # Sending the study again, as the notice would advise, makes no new job: the
                # other one brings the product's result.
                self.state.give_up_notifications(
                    local_id, (), f"its study's job {covering['id']} brings the product's result"
                )
                return True
            if not settings.configured or not settings.announce_unavailable:
                self.state.give_up_notifications(local_id, (), NO_LONGER_SENT)
                return True
            known = self.vault.study(str(job["study_uid"]))
            if known is None or known[0] != local["study_uid"]:
                log.warning(
                    "job %s: no notice that no result will come: its study cannot be mapped back",
                    exchange_id,
                )
                self.state.give_up_notifications(local_id, (), "its study cannot be mapped back")
                return True
            self.notices.queue(local_id, self._no_result_notice(local, job, reason))
            return True
        except PASSING_FAILURES as exc:
            failure = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # never let one job's notice hold up the jobs behind it
            log.exception("job %s: the notice that no result will come failed", exchange_id)
            failure = f"{type(exc).__name__}: {exc}"
        attempts = self._collect_attempts.get(exchange_id, 0) + 1
        self._collect_attempts[exchange_id] = attempts
        self._retry_at[exchange_id] = time.time() + backoff(attempts)
        log.warning(
            "job %s: the notice that no result will come is queued again in %.0f s (%s)",
            exchange_id, backoff(attempts), failure,
        )  # fmt: skip
        return False

    def _no_result_notice(
        self, local: Mapping[str, Any], job: Mapping[str, Any], reason: str
    ) -> QueuedNotice:
        """The notice that the job `job` (as the exchange lists it) brings no result, and
        `reason` why; its study mapped back already."""
        ended = job.get("ended_at")
        # As the job ran: the exchange gives the route's priority or the product's.
        stat = _ran_stat(local, job)
        name, version = self._product_names(str(job["product_id"]))
        # The version that ran the job, as the exchange kept it: the catalogue's may be a
        # later one by now (the catalogue's stands in where the exchange kept none: a job it
        # lost, one from before it kept versions, or an exchange too old to say).
        version = job.get("product_version") or version
        return QueuedNotice(
            kind="no-result",
            exchange_job_id=str(job["id"]),
            product_id=str(job["product_id"]),
            product_name=name,
            product_version=version,
            completed_at=datetime.fromisoformat(ended) if ended else None,
            unavailable=reason,
            stat_study=stat,
            urgent=stat,
            pseudonym_study_uid=str(job["study_uid"]),
            original_study_uid=str(local["study_uid"]),
        )

    def _lost_notice(
        self, local: Mapping[str, Any], exchange_id: str, reason: str = LOST_BY_EXCHANGE
    ) -> QueuedNotice | None:
        """The notice that a job the exchange lost (an adopted one, or its images or results:
        `reason` says which) brings no result: its study must be sent again from the PACS, and the
        radiologist who waits for the product's finding must not wait on. None when the
        hospital hears of no such thing, or the vault no longer knows the study (nothing can
        name it)."""
        settings = self.config.notifications
        if not settings.configured or not settings.announce_unavailable:
            return None
        pseudonym = self.vault.pseudonym_of(str(local["study_uid"]))
        if pseudonym is None:
            log.warning(
                "job %s: no notice that no result will come: its study left the vault",
                local["id"],
            )
            return None
        lost = {
            "id": exchange_id,
            "product_id": local["product_id"],
            "study_uid": pseudonym,
            "ended_at": datetime.now(UTC).isoformat(),
        }
        return self._no_result_notice(local, lost, reason)

    def _product_names(self, product_id: str) -> tuple[str | None, str | None]:
        """The product's name and version from the catalogue, for a notice without a summary
        to take them from; None (the id stands for them) if the exchange cannot say."""
        try:
            entry = self.client.product(product_id)
        except (ExchangeHTTPError, httpx.TransportError) as exc:
            log.info("product %s: name not known for its notice (%s)", product_id, exc)
            return None, None
        return str(entry["name"]), str(entry["version"])

    def _spooled_identity(self, study_uid: str) -> dict[str, str] | None:
        """The patient and study as the hospital's images name them, read from the spool:
        for a notice about a study the vault does not know yet (never prepared for sending).
        From the first instance by series, then instance, and only when every instance names
        the same patient: a series filed under the wrong study must not put another
        patient's name on the order. None otherwise."""
        identity: dict[str, str] | None = None
        for row in self.state.query(
            "SELECT path FROM instances WHERE study_uid = ? ORDER BY series_uid, sop_instance_uid",
            (study_uid,),
        ):
            try:
                header = pydicom.dcmread(
                    row["path"], stop_before_pixels=True, specific_tags=list(IDENTITY_KEYWORDS)
                )
            except (OSError, InvalidDicomError) as exc:
                log.info("a spooled instance cannot be read to name its study: %s", exc)
                return None
            read = {
                keyword: str(header.get(keyword, "") or "").strip() for keyword in IDENTITY_KEYWORDS
            }
            if not read["PatientID"] or (identity and read["PatientID"] != identity["PatientID"]):
                log.warning("a study's spooled instances do not name one patient: not named")
                return None
            identity = identity or read
        return identity

    def _keep_product(self, product_id: str, entry: Mapping[str, Any]) -> None:
        """Keep what a late STAT job (and the STAT waiting gauge) needs of a catalogue entry
        just read: its priority, turnaround, name and version. In `state.db`, so a gateway
        restarted while the exchange is out of reach still knows which products run STAT.
        Written only when it changed; a failure to keep it never fails the read."""
        manifest = entry.get("manifest") or {}
        kept = {
            "name": entry.get("name"),
            "version": entry.get("version"),
            "manifest": {
                key: manifest[key]
                for key in ("priority", "turnaround_sla_seconds")
                if key in manifest
            },
        }
        if self._products_kept.get(product_id) == kept:
            return
        try:
            self.state.remember_product(product_id, kept)
        except sqlite3.Error as exc:
            log.warning("product %s: its catalogue entry is not kept (%s)", product_id, exc)
            return
        self._products_kept[product_id] = kept

    def _key_image(self, local_id: int, results: list[Path], target: Path) -> None:
        """Keep a key image for the web pages; a failure here never holds up delivery."""
        if target.exists():
            return
        try:
            render_result_key_image(results, self._spooled, target)
        except Exception as exc:  # a picture is a convenience, the result is what matters
            log.warning("job %s: no key image (%s)", local_id, exc)

    def _spooled(self, sop_instance_uid: str) -> Path | None:
        rows = self.state.query(
            "SELECT path FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        )
        return Path(rows[0]["path"]) if rows else None

    # retention -----------------------------------------------------------------------------

    def _retention_loop(self) -> None:
        while not self._stop.wait(RETENTION_SWEEP_SECONDS):
            try:
                self.purge_expired()
            except Exception:  # a failed sweep is retried at the next; nothing was half-done
                log.exception("retention sweep failed")

    def purge_expired(self, now: float | None = None) -> int:
        """Remove what the gateway holds of studies done `retain_hours` ago: the spool's
        instances (identifiable), the results downloaded and re-identified, any outbox left by
        a crash, the patient attributes and UID pairs the vault kept to re-identify results. A
        study with a job still to send or under way is never touched. Returns how many studies
        were purged.

        The study's row and its jobs' rows stay (what was sent where, and when); an instance
        that arrives for a purged study opens a new round with what arrives then.
        """
        now = time.time() if now is None else now
        retain = self.config.retain_hours * 3600
        purged = 0
        for study_uid in self.state.purgeable_studies(now, retain):
            gone = self.state.purge_study(study_uid, now, retain, forget=self.vault.forget_study)
            if gone is None:  # an instance reopened it meanwhile
                continue
            for job_id in gone.job_ids:
                shutil.rmtree(self.results_dir / str(job_id), ignore_errors=True)
                shutil.rmtree(self.outbox / str(job_id), ignore_errors=True)
            purged += 1
            log.info(
                "study %s purged after its jobs ended: %d instance(s), %.1f MB, results of "
                "%d job(s)",
                study_uid, gone.instances, gone.bytes / 1e6, len(gone.job_ids),
            )  # fmt: skip
        return purged

    # disclosure anchors --------------------------------------------------------------------

    def _anchor_loop(self) -> None:
        self._anchor_or_say_why()
        while not self._stop.wait(ANCHOR_SECONDS):
            self._anchor_or_say_why()

    def _anchor_or_say_why(self) -> None:
        try:
            self.anchor_disclosures()
        except Exception:  # a log that cannot be read now is anchored at the next look
            log.exception("disclosure log anchor could not be read")

    def anchor_disclosures(self) -> Anchor | None:
        """Write the disclosure log's newest anchor to the journal when it moved since the last
        one written. The journal leaves the host for the hospital's log collector, so whoever
        can write `disclosures.db` cannot also rewrite what `aifi disclosures --verify --anchor`
        checks it against."""
        anchor = self.disclosures.anchor()
        if anchor is not None and anchor != self._anchored:
            log.info(
                "disclosure log anchor %s (check the log against it: aifi disclosures --verify "
                "--anchor %s)",
                anchor, anchor,
            )  # fmt: skip
            self._anchored = anchor
        return anchor

    # reporting -----------------------------------------------------------------------------

    def jobs(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self.state.query("SELECT * FROM jobs ORDER BY id")]


def _accepted(manifest: dict[str, Any], row: Any) -> bool:
    accepts = manifest.get("accepts") or {}

    def ok(values: list[str], value: str) -> bool:
        return not values or value.strip().upper() in {v.upper() for v in values}

    return (
        ok(accepts.get("modalities", []), row["modality"])
        and ok(accepts.get("body_parts", []), row["body_part"])
        and ok(accepts.get("sop_classes", []), row["sop_class_uid"])
    )
