"""Benchmark: how fast a triage-positive (STAT) result reaches the radiologist's systems.

For each of N triage-positive notices, the time from `Notifier.notify()` to the moment the
loopback receivers got the alert: the HL7 ORU^R01 with priority S at an MLLP listener
(hl7apy's server, which parses and validates it before it answers) and the signed webhook at
an HTTP receiver (which verifies the signature). The FHIR report is sent alongside, as in the
gateway. A STAT alert counts as delivered when both have arrived; the target is < 2 s (p95).

A second, shorter run points FHIR at a port where nothing listens (retried with backoff): the
alerts must not wait for it, since channels run side by side.

Then the same through the gateway's notice queue (`aifi.gateway.notice_queue`), as a result
coming home takes it: from `NoticeSender.queue()` (the row written to a real state, the
patient's identity read from a real vault at send, every try disclosed) to received, against
the direct figures of the same run. Last, a burst: `--degraded-alerts` alerts queued at once
while FHIR is down, each timed from its queueing; none may wait behind another's FHIR
retries.

    python benchmarks/alert_latency.py [--alerts 50] [--degraded-alerts 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aifi.gateway.disclosures import DisclosureLog
from aifi.gateway.notice_queue import NoticeSender, QueuedNotice
from aifi.gateway.notify import (
    FhirEndpoint,
    Hl7Endpoint,
    NotificationSettings,
    Notifier,
    OriginalStudy,
    ResultNotice,
    WebhookEndpoint,
    build_notice,
)
from aifi.gateway.notify.receivers import FhirReceiver, Hl7Listener, WebhookReceiver
from aifi.gateway.state import GatewayState
from aifi.gateway.vault import Vault
from aifi.results.summary import (
    AlgorithmSummary,
    FindingSummary,
    MeasuredValue,
    Priority,
    ResultSummary,
    Triage,
    TriageFlag,
)

TARGET_STAT_SECONDS = 2.0
KEY = b"benchmark-webhook-key"


def positive_notice(index: int) -> ResultNotice:
    summary = ResultSummary(
        product_id="aifi-ich",
        product_version="1.0",
        study_instance_uid=f"2.25.{1000 + index}",
        algorithm=AlgorithmSummary(name="AIFI ICH", version="1.0", manufacturer="AIFI"),
        findings=[
            FindingSummary(
                finding="Hemorrhage",
                finding_code="SCT:50960005",
                site="Brain",
                tracking_id="lesion 1",
                tracking_uid=f"2.25.{5000 + index}",
                measurements={"Volume": MeasuredValue(value=12.5 + index, unit="mL")},
            )
        ],
        triage=Triage(flag=TriageFlag.POSITIVE, priority=Priority.HIGH),
        label="reference algorithm, not for clinical use",
    )
    return build_notice(
        hospital="bench-hospital",
        exchange_job_id=f"bench-{index:05d}",
        product_id="aifi-ich",
        summary=summary,
        study=OriginalStudy(
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.{index + 1}",
            patient_id=f"MRN{index:06d}",
            patient_name="Test^Patient",
            patient_sex="O",
        ),
        result_sop_instance_uids=[f"2.25.{9000 + index}"],
        completed_at=datetime.now(UTC),
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_for(fhir_url: str, hl7: Hl7Listener, hook: WebhookReceiver) -> NotificationSettings:
    fast: dict[str, Any] = {"retries": 2, "retry_backoff_seconds": 0.25}
    return NotificationSettings(
        hl7=Hl7Endpoint(host="127.0.0.1", port=hl7.port, **fast),
        fhir=FhirEndpoint(base_url=fhir_url, timeout_seconds=2, **fast),
        webhook=WebhookEndpoint(url=hook.url, secret=KEY.decode(), **fast),
    )


def figures_of(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 4),
        "p95": round(percentile(values, 0.95), 4),
        "max": round(max(values), 4),
    }


def run(alerts: int, fhir_url: str, hl7: Hl7Listener, hook: WebhookReceiver) -> dict[str, Any]:
    """Send `alerts` STAT notices one after another; latencies per channel and for both."""
    settings = settings_for(fhir_url, hl7, hook)
    hl7_seconds: list[float] = []
    hook_seconds: list[float] = []
    stat_seconds: list[float] = []
    notify_seconds: list[float] = []
    failed = 0
    with Notifier(settings) as notifier:
        for index in range(alerts):
            notice = positive_notice(index)
            started = time.monotonic()
            outcomes = notifier.notify(notice)
            notify_seconds.append(time.monotonic() - started)
            failed += sum(1 for o in outcomes if o.channel != "fhir" and not o.ok)
            message = hl7.received.get(timeout=10)
            alert = hook.received.get(timeout=10)
            hl7_seconds.append(message.received_at - started)
            hook_seconds.append(alert.received_at - started)
            stat_seconds.append(max(message.received_at, alert.received_at) - started)

    return {
        "alerts": alerts,
        "failed_stat_channels": failed,
        "hl7_received_seconds": figures_of(hl7_seconds),
        "webhook_received_seconds": figures_of(hook_seconds),
        "stat_alert_seconds": figures_of(stat_seconds),
        "notify_call_seconds": figures_of(notify_seconds),
    }


def queued(notice: ResultNotice, index: int) -> QueuedNotice:
    """`notice` as the results thread queues it: all but the patient's identity."""
    return QueuedNotice(
        kind="result",
        exchange_job_id=notice.exchange_job_id,
        product_id=notice.product_id,
        summary=notice.summary,
        result_sop_instance_uids=list(notice.result_sop_instance_uids),
        completed_at=notice.completed_at,
        pseudonym_study_uid=f"2.25.{1000 + index}",
        original_study_uid=notice.study.study_instance_uid,
    )


def run_queued(
    alerts: int, fhir_url: str, hl7: Hl7Listener, hook: WebhookReceiver, *, burst: bool
) -> dict[str, Any]:
    """`alerts` STAT notices through the gateway's queue and its STAT thread, each timed from
    its queueing to both receivers having it: one after another, or all queued at once."""
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as folder:
        state, vault = GatewayState(Path(folder) / "state.db"), Vault(Path(folder) / "vault.db")
        notifier = Notifier(settings_for(fhir_url, hl7, hook))
        sender = NoticeSender(
            hospital="bench-hospital",
            state=state,
            vault=vault,
            notifier=notifier,
            disclosures=DisclosureLog(Path(folder) / "disclosures.db", "bench", "gateway"),
            stop=stop,
            changed=lambda: None,
        )
        notices = [positive_notice(index) for index in range(alerts)]
        for index, notice in enumerate(notices):
            vault.remember(
                {},
                original_study_uid=notice.study.study_instance_uid,
                pseudonym_study_uid=f"2.25.{1000 + index}",
                patient_pseudonym=f"P{index}",
                original_attributes={
                    "PatientID": notice.study.patient_id,
                    "PatientName": "Test^Patient",
                    "PatientSex": "O",
                    "StudyInstanceUID": notice.study.study_instance_uid,
                },
            )
        lane = threading.Thread(target=sender.run, args=(True,), daemon=True)
        lane.start()
        started: dict[str, float] = {}
        arrived: dict[str, list[float]] = {}
        try:
            for index, notice in enumerate(notices):
                started[notice.exchange_job_id] = time.monotonic()
                sender.queue(index + 1, queued(notice, index))
                if not burst:
                    arrived[notice.exchange_job_id] = [
                        hl7.received.get(timeout=30).received_at,
                        hook.received.get(timeout=30).received_at,
                    ]
            while burst and len(arrived) < alerts:
                message = hl7.received.get(timeout=60)
                job = message.message.oru_r01_patient_result.oru_r01_order_observation
                arrived.setdefault(job.obr.obr_3.to_er7().split("^")[0], []).append(
                    message.received_at
                )
            for _ in range(alerts if burst else 0):
                alert = hook.received.get(timeout=60)
                arrived[alert.payload["exchange_job_id"]].append(alert.received_at)
        finally:
            stop.set()
            sender.wake()
            lane.join(timeout=30)
            notifier.close()
            state.close()
            vault.close()
    seconds = [max(arrived[job]) - started[job] for job in started]
    return {"alerts": alerts, "burst": burst, "stat_alert_seconds": figures_of(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--alerts", type=int, default=50)
    parser.add_argument("--degraded-alerts", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the figures and targets here")
    args = parser.parse_args()
    console = Console()
    # the FHIR-down run fails on purpose: keep its warnings off the table
    logging.getLogger("aifi.gateway.notify").setLevel(logging.ERROR)
    with Hl7Listener() as hl7, WebhookReceiver(KEY) as hook, FhirReceiver() as fhir:
        run(3, fhir.base_url, hl7, hook)  # warm-up: imports, HL7 structure tables
        normal = run(args.alerts, fhir.base_url, hl7, hook)
        down = f"http://127.0.0.1:{closed_port()}/fhir"
        degraded = run(args.degraded_alerts, down, hl7, hook)
        through_queue = run_queued(args.alerts, fhir.base_url, hl7, hook, burst=False)
        burst = run_queued(args.degraded_alerts, down, hl7, hook, burst=True)
    p95 = normal["stat_alert_seconds"]["p95"]
    degraded_p95 = degraded["stat_alert_seconds"]["p95"]
    queued_p95 = through_queue["stat_alert_seconds"]["p95"]
    burst_p95 = burst["stat_alert_seconds"]["p95"]
    figures: dict[str, Any] = {
        "normal": normal,
        "fhir_down": degraded,
        "queued": through_queue,
        "queued_burst_fhir_down": burst,
        # The queue's cost against the direct call, measured in the same run.
        "queued_p50_over_direct_p50": round(
            through_queue["stat_alert_seconds"]["p50"] / normal["stat_alert_seconds"]["p50"], 2
        ),
        "targets": {
            "stat_alert_seconds_p95": {
                "measured": p95,
                "target": f"< {TARGET_STAT_SECONDS:g}",
                "met": p95 < TARGET_STAT_SECONDS and normal["failed_stat_channels"] == 0,
            },
            "stat_alert_seconds_p95_fhir_down": {
                "measured": degraded_p95,
                "target": f"< {TARGET_STAT_SECONDS:g}",
                "met": degraded_p95 < TARGET_STAT_SECONDS and degraded["failed_stat_channels"] == 0,
            },
            "stat_alert_seconds_p95_queued": {
                "measured": queued_p95,
                "target": f"< {TARGET_STAT_SECONDS:g}",
                "met": queued_p95 < TARGET_STAT_SECONDS,
            },
            "stat_alert_seconds_p95_queued_burst_fhir_down": {
                "measured": burst_p95,
                "target": f"< {TARGET_STAT_SECONDS:g}",
                "met": burst_p95 < TARGET_STAT_SECONDS,
            },
        },
    }
    table = Table(title="STAT alert: notify() → received (seconds)")
    table.add_column("run")
    table.add_column("channel")
    table.add_column("p50", justify="right")
    table.add_column("p95", justify="right")
    table.add_column("max", justify="right")
    for name, result in (("normal", normal), ("FHIR down", degraded)):
        for label, key in (
            ("HL7 ORU (S)", "hl7_received_seconds"),
            ("webhook", "webhook_received_seconds"),
            ("both (STAT alert)", "stat_alert_seconds"),
            ("notify() returns", "notify_call_seconds"),
        ):
            values = result[key]
            table.add_row(
                f"{name} ×{result['alerts']}",
                label,
                f"{values['p50']:.3f}",
                f"{values['p95']:.3f}",
                f"{values['max']:.3f}",
            )
    console.print(table)
    queue_table = Table(title="STAT alert through the gateway's notice queue: queued → received")
    for column in ("run", "p50", "p95", "max"):
        queue_table.add_column(column, justify="left" if column == "run" else "right")
    for name, result in (
        (f"one after another ×{through_queue['alerts']}", through_queue),
        (f"{burst['alerts']} queued at once, FHIR down", burst),
    ):
        values = result["stat_alert_seconds"]
        queue_table.add_row(name, *(f"{values[key]:.3f}" for key in ("p50", "p95", "max")))
    console.print(queue_table)
    console.print(f"queued p50 / direct notify() p50: {figures['queued_p50_over_direct_p50']:.2f}×")
    for name, target in figures["targets"].items():
        mark = "met" if target["met"] else "NOT met"
        console.print(f"{name}: {target['measured']:.3f} s (target {target['target']} s): {mark}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
