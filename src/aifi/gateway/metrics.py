"""Prometheus figures for a hospital gateway, read from its durable state at each scrape.

The gateway's SQLite state already records every study, job and delivery, so the exporter
keeps no counters of its own: a restarted gateway reports the same figures it had before, and
the numbers can never disagree with what the gateway will actually do next. The exception is
what was refused at receipt, which leaves nothing in the state (`Refusals`).

A scrape reads one snapshot on a connection of its own, so it never holds up receipt or
delivery. Counts by state come from tallies the state's triggers keep, and every other
figure reads only what is under way or in the spool, so a scrape costs the same in a
gateway's third year as on its first day.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aifi.gateway.notify.notifier import FHIR, HL7, WEBHOOK
from aifi.gateway.receipt import Refusals
from aifi.gateway.state import GatewayState, StateReads

#: skipped: not sent, as another job of the study took the same instances for the product.
JOB_STATES = ("pending", "submitted", "ended", "delivered", "refused", "skipped")
STUDY_STATES = ("receiving", "routed", "unrouted", "purged")
DELIVERY_STATES = ("delivered", "failed")
#: Every channel and outcome is reported from the start, at 0: an alert on the change of a
#: series cannot see a first failure that creates it.
NOTICE_CHANNELS = (HL7, FHIR, WEBHOOK)
NOTICE_OUTCOMES = ("sent", "retrying", "failed")
#: Jobs waiting to try a step again, by step: an upload, and an outcome come home whose
#: results did not all reach the PACS.
RETRYING = {
    "upload": "state = 'pending' AND attempts > 0",
    "result": "state = 'submitted' AND result_seen_at IS NOT NULL AND attempts > 0",
}
#: Jobs delivered this recently make up the turnaround figures.
TURNAROUND_WINDOW_SECONDS = 3600.0
TURNAROUND_QUANTILES = (0.5, 0.9, 0.99)


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class GatewayCollector(Collector):
    """Jobs, studies and deliveries by state, queue ages and turnaround, from `state`; what
    was refused at receipt, from `refusals`."""

    def __init__(
        self,
        state: GatewayState,
        refusals: Refusals | None = None,
        hospital: str = "",
        sending: Callable[[], Collection[str]] = frozenset,
        retain_seconds: float | None = None,
        unknown_jobs: Callable[[], int] = lambda: 0,
        receivers_down: Callable[[], Collection[str]] = frozenset,
        lost_by_exchange: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self._state = state
        #: What became of the jobs the exchange lost (`lost_jobs.Outcome`), since the start.
        self._lost_by_exchange = lost_by_exchange
        #: The notice receivers whose last notice failed (`Notifier.outages`).
        self._receivers_down = receivers_down
        #: Ended exchange jobs the gateway has no record of, left unacknowledged.
        self._unknown_jobs = unknown_jobs
        self._refusals = refusals or Refusals()
        self._hospital = hospital
        #: The studies an open association or request is still sending (they wait for it).
        self._sending = sending
        #: How long a study is kept after it was done with (None: not reported).
        self._retain_seconds = retain_seconds

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("aifi_gateway_state_up", "1 when the gateway's state answered")
        try:
            with self._state.snapshot() as view:
                families = list(self._families(view, time.time()))
        except Exception:
            up.add_metric([], 0.0)
            yield up
            yield self._unknown()  # kept in memory: an alert on it must not go quiet
            yield self._receivers()
            yield self._lost()
            yield from self._refused()  # a failing disk is when "cannot-store" matters most
            return
        up.add_metric([], 1.0)
        yield up
        yield from families
        yield self._unknown()
        yield self._receivers()
        yield self._lost()
        yield from self._refused()

    def _lost(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "aifi_gateway_jobs_lost_by_exchange",
            "Sent jobs the exchange no longer held as sent (it was restored to an earlier "
            "moment, or its store lost images of the study or the product's results), by what "
            "the gateway did: "
            "sent_again (as a new exchange job), inputs_sent_again (the rest of its inputs), "
            "delivered_from_copy (its results had come home: the product not run again), "
            "ended (adopted: the study to be sent again from the PACS), covered (adopted, or "
            "its images or results lost and not sent again, and another job of the study "
            "brings the product's result), images_sent_again (its images lost: sent again as "
            "a new exchange job), images_lost_ended (its images lost, and it could not be "
            "sent again: the study to be sent again from the PACS), results_sent_again and "
            "results_lost_ended (the same, for the product's results lost before they were "
            "fetched). Since the gateway started.",
            labels=["outcome"],
        )
        for outcome, count in sorted(self._lost_by_exchange().items()):
            family.add_metric([outcome], float(count))
        return family

    def _unknown(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "aifi_gateway_unknown_exchange_jobs",
            "Ended exchange jobs of the hospital's that this gateway has no record of (made by "
            "a disk a restore replaced, say), left unacknowledged until the hospital adopts "
            "them or lets them go (aifi gateway-unknown-jobs)",
        )
        family.add_metric([], float(self._unknown_jobs()))
        return family

    def _receivers(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "aifi_gateway_notice_receiver_down",
            "1 while a notice receiver (hl7, fhir, webhook) failed the last notice tried on it "
            "(unreachable, no answer in time, or failing every retry); notices then "
            "hold off trying it for a while. One that could not be connected to is 0 again "
            "once it takes a connection (checked after each pause, nothing sent); one that "
            "took the connection, once a notice gets through. Known since the gateway "
            "started.",
            labels=["channel"],
        )
        down = self._receivers_down()
        for channel in NOTICE_CHANNELS:
            family.add_metric([channel], 1.0 if channel in down else 0.0)
        return family

    def _refused(self) -> Iterator[CounterMetricFamily]:
        instances = CounterMetricFamily(
            "aifi_gateway_refused_instances",
            "Instances refused at receipt, by way in (dimse, stow), sender and reason "
            "(not-dicom, cannot-store, wrong-study)",
            labels=["way", "sender", "reason"],
        )
        for (way, sender, reason), count in sorted(self._refusals.instances().items()):
            instances.add_metric([way, sender, reason], float(count))
        yield instances
        requests = CounterMetricFamily(
            "aifi_gateway_stow_refused_requests",
            "STOW-RS requests refused whole, by HTTP status (401: wrong name or password)",
            labels=["status"],
        )
        for status, count in sorted(self._refusals.requests().items()):
            requests.add_metric([status], float(count))
        yield requests

    def _families(self, view: StateReads, now: float) -> Iterator[GaugeMetricFamily]:
        def scalar(sql: str, params: tuple[Any, ...] = ()) -> float:
            rows = view.query(sql, params)
            value = next(iter(rows[0].values())) if rows else None
            return float(value) if value is not None else 0.0

        jobs = view.tally("jobs")
        family = GaugeMetricFamily("aifi_gateway_jobs", "Jobs by gateway state", labels=["state"])
        for state in JOB_STATES:
            family.add_metric([state], float(jobs.get(state, 0)))
        yield family
        family = GaugeMetricFamily(
            "aifi_gateway_jobs_undelivered",
            "Jobs the AI product completed whose results this gateway did not deliver: "
            "refused as they could not be filed in the PACS, purged at the exchange before "
            "they were fetched, or lost from its store and not sent again (each job's reason "
            "says which)",
        )
        family.add_metric([], float(view.tally("undelivered").get("", 0)))
        yield family

        studies = view.tally("studies")
        family = GaugeMetricFamily(
            "aifi_gateway_studies", "Studies by assembly state", labels=["state"]
        )
        for state in STUDY_STATES:
            family.add_metric([state], float(studies.get(state, 0)))
        yield family

        deliveries = view.tally("deliveries")
        family = GaugeMetricFamily(
            "aifi_gateway_deliveries",
            "Result deliveries to PACS destinations by outcome (failed ones are retried)",
            labels=["state"],
        )
        for state in DELIVERY_STATES:
            family.add_metric([state], float(deliveries.get(state, 0)))
        yield family

        notices = view.tally("notices")  # keyed channel/priority/outcome
        family = GaugeMetricFamily(
            "aifi_gateway_notices",
            "Result notices (HL7, FHIR, webhook) by channel, priority and outcome: sent, "
            "retrying, or failed for good",
            labels=["channel", "priority", "outcome"],
        )
        for channel in NOTICE_CHANNELS:
            for priority in ("stat", "routine"):
                for outcome in NOTICE_OUTCOMES:
                    count = notices.get(f"{channel}/{priority}/{outcome}", 0.0)
                    family.add_metric([channel, priority, outcome], count)
        yield family
        queued = view.queued_notices()
        family = GaugeMetricFamily(
            "aifi_gateway_notices_queued",
            "Notices queued to be sent, or sent again, by priority (stat: a triage-positive "
            "result, or any notice of a study run STAT)",
            labels=["priority"],
        )
        oldest = GaugeMetricFamily(
            "aifi_gateway_notice_queue_age_seconds",
            "How long the oldest notice queued has waited to be done with, by priority "
            "(0 when none)",
            labels=["priority"],
        )
        for priority, urgent in (("stat", True), ("routine", False)):
            count, since = queued.get(urgent, (0, None))
            family.add_metric([priority], float(count))
            oldest.add_metric([priority], max(0.0, now - since) if since else 0.0)
        yield family
        yield oldest

        # A study whose quiet time is over becomes jobs within moments; one that stays is held
        # up before any job exists, where the job figures below cannot see it (a full disk:
        # the assembler cannot write the state).
        # A study whose sender is still connected waits for it, however long: not held up.
        sending = self._sending()
        overdue = [
            row["due_at"]
            for row in view.query(
                "SELECT study_uid, due_at FROM studies WHERE state = 'receiving' AND due_at < ?",
                (now,),
            )
            if row["study_uid"] not in sending
        ]
        yield _since(
            "aifi_gateway_assembly_overdue_seconds",
            "How long the oldest study has been past its quiet time without becoming jobs, its "
            "sender gone (0 when none)",
            min(overdue, default=0.0),
            now,
        )
        yield _since(
            "aifi_gateway_upload_queue_age_seconds",
            "Age of the oldest job not yet handed to the exchange",
            scalar("SELECT MIN(created_at) FROM jobs WHERE state = 'pending'"),
            now,
        )
        # Acute triage has minutes, not the quarter of an hour the other figures allow: the
        # oldest STAT study whose result is not yet in the PACS, wherever it stands; STAT by
        # its route, or by its product's priority as the gateway last read the catalogue.
        yield _since(
            "aifi_gateway_stat_waiting_seconds",
            "Time since the last instance arrived of the oldest STAT study whose AI result is "
            "not yet in the PACS (0 when none waits)",
            scalar(
                "SELECT MIN(j.study_last_at) FROM jobs AS j "
                "LEFT JOIN products_seen AS p ON p.product_id = j.product_id "
                "WHERE j.state IN ('pending', 'submitted') AND (j.priority = 'stat' OR "
                "(j.priority IS NULL AND json_extract(p.entry, '$.manifest.priority') = 'stat'))"
            ),
            now,
        )
        yield _since(
            "aifi_gateway_awaiting_result_age_seconds",
            "Age of the oldest job sent to the exchange whose outcome has not come back",
            scalar("SELECT MIN(submitted_at) FROM jobs WHERE state = 'submitted'"),
            now,
        )

        if self._retain_seconds is not None:
            # Identifiable instances kept past the hospital's retention time: the sweep that
            # purges them every minute is failing (minimum necessary, GatewayRetentionOverdue).
            done = view.longest_done_at()
            yield _since(
                "aifi_gateway_retention_overdue_seconds",
                "How long past its retention time the spool has kept a study (0 when none)",
                done + self._retain_seconds if done is not None else 0.0,
                now,
            )

        family = GaugeMetricFamily(
            "aifi_gateway_jobs_retrying",
            "Jobs waiting to try a failed step again (errors the gateway is riding out), by "
            "step: upload to the exchange, or result (delivery to the PACS)",
            labels=["step"],
        )
        # A job's attempts restart when it is sent. A job the exchange failed is done with,
        # not retried: it does not count, however it got there.
        for step, where in RETRYING.items():
            family.add_metric([step], scalar(f"SELECT COUNT(*) FROM jobs WHERE {where}"))
        yield family

        totals = view.totals()
        held = view.tally("spool_bytes").get("", 0.0)
        family = GaugeMetricFamily(
            "aifi_gateway_spool_bytes",
            "Bytes of received instances the spool holds now (until `retain_hours` after "
            "their study's last job ended)",
        )
        family.add_metric([], held)
        yield family
        family = GaugeMetricFamily(
            "aifi_gateway_received_bytes",
            "Bytes of DICOM instances received from modalities and the PACS (as stored), "
            "since the gateway began, purged studies included",
        )
        family.add_metric([], held + totals.get("purged_bytes", 0.0))
        yield family
        family = GaugeMetricFamily(
            "aifi_gateway_uploaded_study_bytes",
            "Bytes of received instances in studies handed to the exchange (before "
            "pseudonymisation; only the series a routing rule selected are sent), purged "
            "studies included",
        )
        family.add_metric(
            [],
            # Only studies still in the spool hold instances: their jobs, not every job ever
            # sent, are what is looked up.
            scalar(
                "SELECT COALESCE(SUM(size), 0) FROM instances WHERE study_uid IN "
                "(SELECT s.study_uid FROM studies s "
                "WHERE s.state IN ('receiving', 'routed', 'unrouted') "
                "AND EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid "
                "AND j.state IN ('submitted', 'ended', 'delivered')))"
            )
            + totals.get("purged_uploaded_bytes", 0.0),
        )
        yield family
        family = GaugeMetricFamily(
            "aifi_gateway_purged_studies",
            "Studies whose instances and results the gateway removed after `retain_hours`",
        )
        family.add_metric([], totals.get("purged_studies", 0.0))
        yield family

        rows = view.query(
            "SELECT delivered_at - study_last_at AS seconds FROM jobs "
            "WHERE state = 'delivered' AND delivered_at >= ?",
            (now - TURNAROUND_WINDOW_SECONDS,),
        )
        durations = sorted(float(r["seconds"]) for r in rows if r["seconds"] is not None)
        family = GaugeMetricFamily(
            "aifi_gateway_turnaround_seconds",
            "Last instance received to result delivered, jobs of the last hour, by quantile",
            labels=["quantile"],
        )
        for q in TURNAROUND_QUANTILES:
            family.add_metric([str(q)], _quantile(durations, q))
        yield family


@dataclass
class MetricsServer:
    """The exporter's HTTP server; `close()` stops it."""

    host: str
    port: int
    registry: CollectorRegistry
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def gateway_registry(
    state: GatewayState,
    refusals: Refusals | None = None,
    sending: Callable[[], Collection[str]] = frozenset,
    retain_seconds: float | None = None,
    unknown_jobs: Callable[[], int] = lambda: 0,
    receivers_down: Callable[[], Collection[str]] = frozenset,
    lost_by_exchange: Callable[[], Mapping[str, int]] = dict,
) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(
        GatewayCollector(
            state,
            refusals,
            sending=sending,
            retain_seconds=retain_seconds,
            unknown_jobs=unknown_jobs,
            receivers_down=receivers_down,
            lost_by_exchange=lost_by_exchange,
        )
    )
    return registry


def start_metrics_server(
    state: GatewayState,
    port: int,
    host: str = "127.0.0.1",
    refusals: Refusals | None = None,
    sending: Callable[[], Collection[str]] = frozenset,
    retain_seconds: float | None = None,
    unknown_jobs: Callable[[], int] = lambda: 0,
    receivers_down: Callable[[], Collection[str]] = frozenset,
    lost_by_exchange: Callable[[], Mapping[str, int]] = dict,
) -> MetricsServer:
    """Serve `/metrics` for Prometheus on `host:port` (port 0: any free port) from `state`.

    Bind to the hospital's monitoring network only; the figures carry no patient data but
    are nobody else's business.
    """
    registry = gateway_registry(
        state, refusals, sending, retain_seconds, unknown_jobs, receivers_down, lost_by_exchange
    )
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host, int(server.server_address[1]), registry, server, thread)


def _since(name: str, documentation: str, moment: float, now: float) -> GaugeMetricFamily:
    """A gauge of the seconds from `moment` (the oldest of something waiting) to `now`; 0 when
    nothing waits."""
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], max(0.0, now - moment) if moment else 0.0)
    return family
