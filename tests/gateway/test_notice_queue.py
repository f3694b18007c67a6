"""The notice queue on its own: real state, vault, disclosure log and notifier, the RIS a
loopback listener or a closed port. What a pass does when the gateway's own parts fail, when
the study left the vault, when a job has two notices, and after a restore."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aifi.gateway.config import load_config
from aifi.gateway.disclosures import DisclosureLog
from aifi.gateway.notice_queue import NO_LONGER_SENT, STUDY_GONE, NoticeSender, QueuedNotice
from aifi.gateway.notify import Hl7Endpoint, NotificationSettings, Notifier, WebhookEndpoint
from aifi.gateway.notify.receivers import Hl7Listener, WebhookReceiver
from aifi.gateway.service import Gateway
from aifi.gateway.state import GatewayState
from aifi.gateway.vault import Vault
from aifi.results.summary import AlgorithmSummary, ResultSummary, Triage, TriageFlag
from gateway.test_disclosures import offline_gateway_config
from support.older_state import as_left_by_older_version

PSEUDONYM, ORIGINAL = "2.25.77", "1.2.826.0.1.3680043.8.498.77"
KEY = "pager-key"


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class Parts:
    """A gateway's notice parts in `folder`, sending to `settings`."""

    def __init__(self, folder: Path, settings: NotificationSettings) -> None:
        self.state = GatewayState(folder / "state.db")
        self.vault = Vault(folder / "vault.db")
        self.vault.remember(
            {},
            original_study_uid=ORIGINAL,
            pseudonym_study_uid=PSEUDONYM,
            patient_pseudonym="P1",
            original_attributes={
                "PatientID": "HOSP-77",
                "PatientName": "Jansen^Anna",
                "PatientBirthDate": "19620314",
                "PatientSex": "F",
                "AccessionNumber": "ACC-77",
                "StudyInstanceUID": ORIGINAL,
            },
        )
        self.disclosures = DisclosureLog(folder / "disclosures.db", "hospital-a", "gateway")
        self.settings = settings
        self.done: list[str] = []
        self.notifier = Notifier(settings)
        self.sender = self._sender()

    def _sender(self) -> NoticeSender:
        return NoticeSender(
            hospital="hospital-a",
            state=self.state,
            vault=self.vault,
            notifier=self.notifier,
            disclosures=self.disclosures,
            stop=threading.Event(),
            changed=lambda: None,
            done=self.done.append,
        )

    def restart(self) -> None:
        """The gateway started again on the same databases: a new notifier and sender."""
        self.notifier.close()
        self.notifier = Notifier(self.settings)
        self.sender = self._sender()

    def close(self) -> None:
        self.notifier.close()
        self.state.close()
        self.vault.close()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Any]:
    made: list[Parts] = []

    def make(settings: NotificationSettings) -> Parts:
        made.append(Parts(tmp_path / str(len(made)), settings))
        return made[-1]

    yield make
    for each in made:
        each.close()


def hl7(port: int) -> Hl7Endpoint:
    """A RIS at `port`, tried once: a closed port refuses at once, and a listener that is
    slow to answer on a loaded machine is waited for rather than sent the notice again."""
    return Hl7Endpoint(host="127.0.0.1", port=port, timeout_seconds=30, retries=0)


def summary(flag: TriageFlag) -> ResultSummary:
    return ResultSummary(
        product_id="aifi-ich",
        product_version="1.2.0",
        study_instance_uid=PSEUDONYM,
        algorithm=AlgorithmSummary(name="AIFI ICH", version="1.2.0", manufacturer="AIFI"),
        findings=[],
        triage=Triage(flag=flag),
    )


def result(job: str = "x-1", flag: TriageFlag = TriageFlag.NEGATIVE, **more: Any) -> QueuedNotice:
    return QueuedNotice(
        kind="result",
        exchange_job_id=job,
        product_id="aifi-ich",
        summary=summary(flag),
        result_sop_instance_uids=["2.25.9"],
        completed_at=datetime(2026, 12, 6, 3, 0, tzinfo=UTC),
        pseudonym_study_uid=PSEUDONYM,
        original_study_uid=ORIGINAL,
        **more,
    )


def no_result(job: str = "x-1", **more: Any) -> QueuedNotice:
    return QueuedNotice(
        kind="no-result",
        exchange_job_id=job,
        product_id="aifi-ich",
        unavailable="the product could not analyse the study",
        completed_at=datetime(2026, 12, 6, 3, 0, tzinfo=UTC),
        pseudonym_study_uid=PSEUDONYM,
        original_study_uid=ORIGINAL,
        **more,
    )


def test_a_pass_the_gateway_itself_fails_shows_as_a_notice_retrying(
    parts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vault cannot be read: nothing is sent, and each channel says why, as a STAT
    notice still to be retried (no try spent), which the STAT alert sees."""
    with Hl7Listener() as ris:
        made = parts(NotificationSettings(hl7=hl7(ris.port)))

        def unreadable(_uid: str) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(made.vault, "study", unreadable)
        made.sender.queue(1, result(flag=TriageFlag.POSITIVE))
        made.sender.send_due(urgent=True)
        row = made.state.notification_outcomes(1)["hl7"]
        assert ris.received.empty()
    assert (row["ok"], row["retryable"], row["stat"], row["attempts"]) == (0, 1, 1, 0)
    assert row["detail"] == "not sent: OperationalError: disk I/O error"
    assert made.state.tally("notices") == {"hl7/stat/retrying": 1.0}
    assert len(made.state.queued_notices_of(1)) == 1 and made.done == []


def test_a_queued_row_that_cannot_be_read_is_given_up_once(parts: Any, closed_port: int) -> None:
    made = parts(NotificationSettings(hl7=hl7(closed_port)))
    job = a_job(made.state, "delivered")
    assert job == 1
    made.state.queue_notice(1, "result", '{"kind": "result"}', urgent=False)
    made.sender.send_due(urgent=False)
    assert made.done == ["x-1"]  # its acknowledgement goes at the next look
    row = made.state.notification_outcomes(1)["hl7"]
    assert (row["ok"], row["retryable"]) == (0, 0)
    assert row["detail"].startswith("given up: the queued notice cannot be read")
    assert made.state.queued_notices_of(1) == []
    assert made.state.tally("notices") == {"hl7/routine/failed": 1.0}


def test_a_study_run_stat_whose_study_left_the_vault_is_given_up_as_its_message_was(
    parts: Any, closed_port: int
) -> None:
    """A negative result of a study run STAT: a routine message, which the STAT-only pager
    would never have had; given up on the RIS alone, counted routine, paging nobody."""
    webhook = WebhookEndpoint(url=f"http://127.0.0.1:{closed_port}/", secret=KEY)
    made = parts(NotificationSettings(hl7=hl7(closed_port), webhook=webhook))
    made.vault.forget_study(ORIGINAL)
    made.sender.queue(1, result(urgent=True))
    made.sender.send_due(urgent=True)
    rows = made.state.notification_outcomes(1)
    assert list(rows) == ["hl7"] and rows["hl7"]["detail"] == STUDY_GONE
    assert made.state.tally("notices") == {"hl7/routine/failed": 1.0}
    assert made.done == ["x-1"]


def test_a_new_alert_goes_before_retries_of_older_ones(parts: Any, closed_port: int) -> None:
    """Older STAT notices wait for a receiver that is down; the new alert is sent first, and
    their retries, held off the receiver, cost no timeout."""
    with WebhookReceiver(KEY.encode()) as pager:
        webhook = WebhookEndpoint(url=pager.url, secret=KEY, retries=0, timeout_seconds=30)
        made = parts(NotificationSettings(hl7=hl7(closed_port), webhook=webhook))
        for n in range(3):
            made.sender.queue(n, result(f"old-{n}", TriageFlag.POSITIVE))
        made.sender.send_due(urgent=True)  # the RIS down: each first try fails at once
        for n in range(3):
            made.state.notice_later(n, "result", 1, 0.0)  # due again now
        made.sender.queue(9, result("new", TriageFlag.POSITIVE))
        order = [row["job_id"] for row in made.state.due_notices(True, 1e12)]
        made.sender.send_due(urgent=True)
        hl7_rows = {n: made.state.notification_outcomes(n)["hl7"] for n in (0, 1, 2, 9)}
        paged = [pager.received.get(timeout=5).payload["delivery_id"] for _ in range(4)]
    assert order == [9, 0, 1, 2]
    # The retries of the older ones held off the RIS: not tried, none of their tries spent.
    assert [hl7_rows[n]["detail"].startswith("not tried") for n in (0, 1, 2)] == [True] * 3
    assert len(set(paged)) == 4


def test_a_no_result_notice_takes_the_place_of_a_result_notice_still_queued(
    parts: Any,
) -> None:
    with Hl7Listener() as ris:
        made = parts(NotificationSettings(hl7=hl7(ris.port)))
        made.state.queue_notice(1, "result", result().model_dump_json(), urgent=False)
        made.sender.queue(1, no_result())
        made.sender.send_due(urgent=False)
        message = ris.received.get(timeout=5)
        assert ris.received.empty()
    assert "No AI result" in message.text
    assert made.state.queued_notices_of(1) == []


def test_a_notice_on_the_stat_lane_is_sent_as_the_stat_lanes(
    parts: Any, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A negative result of a study run STAT is no alert, but it goes on the STAT lane, and
    its send says so (with `hl7.keep_open` it goes before routine notices waiting)."""
    made = parts(NotificationSettings(hl7=hl7(closed_port)))
    asked: list[tuple[str, bool | None]] = []
    notify = made.notifier.notify

    def noting(notice: Any, *args: Any, urgent: bool | None = None, **kwargs: Any) -> Any:
        asked.append((notice.exchange_job_id, urgent))
        return notify(notice, *args, urgent=urgent, **kwargs)

    monkeypatch.setattr(made.notifier, "notify", noting)
    made.sender.queue(1, result("run-stat", TriageFlag.NEGATIVE, urgent=True))
    made.sender.queue(2, result("routine", TriageFlag.NEGATIVE))
    made.sender.send_due(urgent=True)
    made.sender.send_due(urgent=False)
    assert asked == [("run-stat", True), ("routine", False)]


def test_an_alert_the_stop_kept_from_leaving_is_on_its_first_pass_after_the_restart(
    parts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway stopping closes its standing HL7 connection: an alert not yet sent fails,
    nothing leaves the gateway and nothing is disclosed, and the pass is not counted. After
    the restart it is still on its first pass, so it is tried though the RIS is held off."""
    with Hl7Listener() as ris:
        endpoint = Hl7Endpoint(host="127.0.0.1", port=ris.port, timeout_seconds=30, retries=0,
                               keep_open=True)  # fmt: skip
        made = parts(NotificationSettings(hl7=endpoint))
        notify = made.notifier.notify

        def stopping(*args: Any, **kwargs: Any) -> Any:
            """The gateway's stop while the pass sends: its connection closed as the stop's
            wait ran out, and the stop seen as the pass ends."""
            made.notifier._hl7_connection.close()
            outcomes = notify(*args, **kwargs)
            made.sender._stop.set()
            return outcomes

        monkeypatch.setattr(made.notifier, "notify", stopping)
        made.sender.queue(1, result("x-1", TriageFlag.POSITIVE))
        made.sender.send_due(urgent=True)
        [queued] = made.state.queued_notices_of(1)
        cut_short = made.state.notification_outcomes(1)["hl7"]
        assert (queued["tries"], cut_short["ok"], cut_short["attempts"]) == (0, 0, 0)
        assert cut_short["detail"].endswith("closed as the gateway stopped")
        assert made.disclosures.entries() == [] and ris.received.empty()

        made.restart()
        made.notifier.outages.failed("hl7", "connection refused", unreached=True)  # meanwhile
        made.sender.send_due(urgent=True, now=float(queued["due_at"]) + 1)
        assert made.state.notification_outcomes(1)["hl7"]["ok"] == 1
        assert made.done == ["x-1"] and not ris.received.empty()
        assert [entry.outcome for entry in made.disclosures.entries()] == ["success"]


def test_a_notice_that_never_left_is_not_disclosed(parts: Any, closed_port: int) -> None:
    """The RIS refuses every connection: nothing of the patient left the hospital, so the
    disclosure log has no entry for it, while its row keeps the failure and the notice
    waits for its retry. The pager took the connection and answered 503: it may have kept
    the alert, which is disclosed as failed."""
    with WebhookReceiver(KEY.encode()) as pager:
        pager.fail_with.append(503)
        webhook = WebhookEndpoint(url=pager.url, secret=KEY, retries=0, timeout_seconds=30)
        made = parts(NotificationSettings(hl7=hl7(closed_port), webhook=webhook))
        made.sender.queue(1, result("x-1", TriageFlag.POSITIVE))
        made.sender.send_due(urgent=True)
    rows = made.state.notification_outcomes(1)
    assert (rows["hl7"]["ok"], rows["webhook"]["ok"]) == (0, 0)
    assert "refused" in rows["hl7"]["detail"] and "HTTP 503" in rows["webhook"]["detail"]
    [disclosed] = made.disclosures.entries()
    assert (disclosed.recipient, disclosed.outcome) == ("webhook notice", "failure")
    assert disclosed.patient_id == "HOSP-77"
    assert len(made.state.queued_notices_of(1)) == 1 and made.done == []


def test_an_alert_whose_key_file_is_missing_for_minutes_waits_for_it_and_then_goes(
    parts: Any, tmp_path: Path
) -> None:
    """The pager's signing key file is gone for longer than the alert's five tries would last
    (a rotation half done): no pass spends a try, so the alert is still queued, retrying (as
    GatewayStatNoticeFailing pages), and goes once the key is back; it is disclosed once,
    when it went."""
    key = tmp_path / "pager.key"
    with WebhookReceiver(KEY.encode()) as pager:
        webhook = WebhookEndpoint(url=pager.url, secret_file=key, retries=0, timeout_seconds=30)
        made = parts(NotificationSettings(webhook=webhook))
        made.sender.queue(1, result("x-1", TriageFlag.POSITIVE))
        for _ in range(6):  # each pass as its retry comes round
            made.sender.send_due(urgent=True, now=time.time() + 3600)
        row = made.state.notification_outcomes(1)["webhook"]
        assert (row["ok"], row["retryable"], row["attempts"]) == (0, 1, 0)
        assert f"not sent: [Errno 2] No such file or directory: {str(key)!r}" in row["detail"]
        assert made.state.tally("notices") == {"webhook/stat/retrying": 1.0}
        assert made.disclosures.entries() == [] and pager.received.empty()
        key.write_text(KEY)  # the rotation is done
        made.sender.send_due(urgent=True, now=time.time() + 3600)
        assert pager.received.get(timeout=5).payload["event"] == "aifi.triage.positive"
    assert made.state.notification_outcomes(1)["webhook"]["ok"] == 1
    assert made.state.queued_notices_of(1) == [] and made.done == ["x-1"]
    assert [entry.outcome for entry in made.disclosures.entries()] == ["success"]


def test_an_alert_whose_key_file_was_missing_on_its_first_pass_is_still_on_its_first_pass(
    parts: Any, tmp_path: Path
) -> None:
    """The pager is held off (it was down for an earlier alert) and its key file is gone on
    this alert's first pass: nothing asked the pager, so the pass is not counted, and once the
    key is back the next pass still tries the pager, though it is held off, as a first pass
    does. Counted, the alert would wait for the pager's recovery to be seen."""
    key = tmp_path / "pager.key"
    with WebhookReceiver(KEY.encode()) as pager:
        webhook = WebhookEndpoint(url=pager.url, secret_file=key, retries=0, timeout_seconds=30)
        made = parts(NotificationSettings(webhook=webhook))
        made.notifier.outages.failed("webhook", "connection refused", unreached=True)
        made.sender.queue(1, result("x-1", TriageFlag.POSITIVE))
        made.sender.send_due(urgent=True)
        [queued] = made.state.queued_notices_of(1)
        row = made.state.notification_outcomes(1)["webhook"]
        assert (queued["tries"], row["ok"], row["attempts"]) == (0, 0, 0)
        assert "No such file or directory" in row["detail"] and pager.received.empty()
        assert made.notifier.outages.holding_off("webhook") is not None
        key.write_text(KEY)  # the rotation is done
        made.sender.send_due(urgent=True, now=float(queued["due_at"]) + 1)
        assert pager.received.get(timeout=5).payload["event"] == "aifi.triage.positive"
    assert made.state.notification_outcomes(1)["webhook"]["ok"] == 1
    assert made.state.queued_notices_of(1) == [] and made.done == ["x-1"]
    assert [entry.outcome for entry in made.disclosures.entries()] == ["success"]


def test_a_notice_done_with_is_not_queued_again(parts: Any) -> None:
    """The job brought home again (its acknowledgement lost) queues its notice again: it is
    not sent a second time."""
    with Hl7Listener() as ris:
        made = parts(NotificationSettings(hl7=hl7(ris.port)))
        made.sender.queue(1, no_result())
        made.sender.send_due(urgent=False)
        made.sender.queue(1, no_result())
        made.sender.send_due(urgent=False)
        assert ris.received.get(timeout=5)
        assert ris.received.empty()
    assert made.state.queued_notices_of(1) == [] and made.done == ["x-1"]


def test_a_no_result_notice_queued_before_announcing_was_turned_off_is_not_sent(
    parts: Any, closed_port: int
) -> None:
    """The hospital turned `announce_unavailable` off (and restarted) while a notice that no
    result will come waited for the RIS: it leaves the queue unsent, and its job goes on to
    its acknowledgement. A result notice still goes."""
    with Hl7Listener() as ris:
        down = parts(NotificationSettings(hl7=hl7(closed_port), hold_off_seconds=0))
        down.sender.queue(1, no_result())
        down.sender.send_due(urgent=False)  # the RIS down: a try failed, to be retried
        assert down.state.notification_outcomes(1)["hl7"]["retryable"] == 1
        down.notifier.close()
        turned_off = NotificationSettings(hl7=hl7(ris.port), announce_unavailable=False)
        sender = NoticeSender(
            hospital="hospital-a", state=down.state, vault=down.vault,
            notifier=(notifier := Notifier(turned_off)), disclosures=down.disclosures,
            stop=threading.Event(), changed=lambda: None, done=down.done.append,
        )  # fmt: skip
        try:
            down.state.notice_later(1, "no-result", 1, 0.0)  # due again now
            sender.queue(2, result("x-2"))
            sender.send_due(urgent=False)
            message = ris.received.get(timeout=5)
            assert ris.received.empty()
        finally:
            notifier.close()
    assert "No AI result" not in message.text
    assert down.state.queued_notices_of(1) == [] and down.state.queued_notices_of(2) == []
    assert sorted(down.done) == ["x-1", "x-2"]
    given_up = down.state.notification_outcomes(1)["hl7"]  # not left retrying for ever
    assert (given_up["retryable"], given_up["detail"]) == (0, NO_LONGER_SENT)
    assert [entry.detail.count("x-2") for entry in down.disclosures.entries()][-1] == 1


def a_job(state: GatewayState, job_state: str) -> int:
    """Exchange job x-1 of the study, in `job_state` at the gateway."""
    with state.transaction() as db:
        job = db.execute(
            "INSERT INTO jobs (study_uid, round, product_id, idempotency_key, state, "
            "exchange_job_id, study_last_at, created_at) "
            "VALUES (?, 1, 'aifi-ich', 'k', ?, 'x-1', 0, 0)",
            (ORIGINAL, job_state),
        ).lastrowid
    assert job is not None
    return int(job)


def test_a_job_acknowledged_before_a_restore_does_not_send_its_queued_notice_again(
    tmp_path: Path,
) -> None:
    """The backup held the job with its notice queued; the lost disk sent it, and the job
    was acknowledged (which waits for its notices). After the restore the exchange says so,
    and the notice the backup held queued is done with, not sent a second time."""
    gateway = Gateway(load_config(offline_gateway_config(tmp_path)))
    try:
        job = a_job(gateway.state, "submitted")
        gateway.state.queue_notice(job, "result", result().model_dump_json(), urgent=False)
        remote = {
            "state": "completed",
            "acknowledged_at": "2026-12-06T03:00:00+00:00",
            "ended_at": "2026-12-06T02:59:00+00:00",
            "delivery": "delivered",
        }
        gateway._settle_brought_home(gateway.state.job(job), remote)
        assert gateway.state.job(job)["state"] == "delivered"
        assert gateway.state.queued_notices_of(job) == []
        assert gateway.notices_queued() == 0
    finally:
        gateway.close()


def test_a_job_waiting_for_its_notice_is_looked_at_again_within_a_poll_not_every_second(
    tmp_path: Path,
) -> None:
    """Its notice due now, but its thread busy with a receiver that hangs: the job waits a
    poll's wait before the results thread lists the exchange for it again, unless its notice
    is done with first."""
    gateway = Gateway(load_config(offline_gateway_config(tmp_path)))
    try:
        job = a_job(gateway.state, "delivered")
        gateway.state.queue_notice(job, "result", result().model_dump_json(), urgent=False)
        before = time.time()
        assert gateway._notices_waiting(job, "x-1")
        assert gateway._retry_at["x-1"] >= before + gateway.config.poll_wait_seconds
        gateway._notice_done("x-1")  # as a notice thread says
        gateway._take_notices_done()  # on the results thread
        assert "x-1" not in gateway._retry_at
        # A PACS back-off set after the wait for the notice keeps its time.
        assert gateway._notices_waiting(job, "x-1")
        gateway._collect_later(gateway.state.job(job), "x-1", OSError("the PACS refused"))
        backing_off = gateway._retry_at["x-1"]
        gateway._notice_done("x-1")
        gateway._take_notices_done()
        assert gateway._retry_at["x-1"] == backing_off
        gateway.state.notice_done(job)
        assert not gateway._notices_waiting(job, "x-1")
        [row] = gateway.state.query("SELECT notice FROM queued_notices")
        assert row["notice"] == ""  # done with: what it said, its UIDs among it, goes
    finally:
        gateway.close()


def test_a_queue_from_before_its_tries_were_kept_is_brought_up_to_this_version(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    state = GatewayState(path)
    state.queue_notice(1, "result", result().model_dump_json(), urgent=True)
    state.notice_later(1, "result", 2, 0.0)
    state.close()
    as_left_by_older_version(path, "ALTER TABLE queued_notices DROP COLUMN tries")
    state = GatewayState(path)
    try:
        [row] = state.due_notices(True, time.time())
        assert (row["passes"], row["tries"]) == (2, 2)  # its passes taken for tries
    finally:
        state.close()


@pytest.mark.parametrize("version", ["", "1.4.2+build." + "f" * 60])
def test_a_queued_stat_notice_whose_summary_an_earlier_exchange_accepted_is_still_read(
    version: str,
) -> None:
    """The exchange now refuses a summary whose product version is empty or longer than the
    catalogue's 64 characters; the gateway still reads those an earlier exchange accepted,
    queued or not, so a positive triage result keeps its findings and its STAT."""
    summary = {
        "schema_version": 1,
        "product_id": "aifi-ich",
        "product_version": version,
        "algorithm": {"name": "ICH", "version": "1", "manufacturer": "V"},
        "triage": {"flag": "positive", "priority": "high"},
    }
    assert ResultSummary.from_json(json.dumps(summary)).triage.flag is TriageFlag.POSITIVE
    queued = {
        "kind": "result",
        "exchange_job_id": "x-1",
        "product_id": "aifi-ich",
        "summary": summary,
        "completed_at": datetime(2026, 12, 6, tzinfo=UTC).isoformat(),
        "pseudonym_study_uid": "2.25.1",
        "original_study_uid": "2.25.2",
    }
    assert QueuedNotice.model_validate_json(json.dumps(queued)).message_stat
