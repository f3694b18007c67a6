"""The alerting rules AIFI ships (`aifi alert-rules exchange|gateway`) load into Prometheus,
fire when what they watch goes wrong and stay quiet when it does not (Prometheus's own
`promtool test rules`, on series made for each alert), and read only metrics the exchange and
the gateway export, each as its type."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from aifi.cli import app
from aifi.gateway.metrics import start_metrics_server
from aifi.gateway.state import GatewayState
from scale.conftest import ExchangeFactory
from scale.servers import missing_peer

SIDES = ("exchange", "gateway")


def shipped_rules(side: str, folder: Path) -> Path:
    """The rules as an operator gets them: from `aifi alert-rules`, saved to a file."""
    printed = CliRunner().invoke(app, ["alert-rules", side])
    assert printed.exit_code == 0, printed.output
    path = folder / f"aifi-{side}.yaml"
    path.write_text(printed.output)
    return path


def rules_of(path: Path) -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing_peer("promtool (Debian package prometheus) is needed to check alerting rules")
    assert found is not None
    return found


@pytest.mark.parametrize("side", SIDES)
def test_the_rules_load_into_prometheus(side: str, tmp_path: Path) -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(shipped_rules(side, tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def fires(name: str, at: str, summary: str, **labels: str) -> dict[str, Any]:
    """A test case: at `at`, alert `name` fires once, with `labels` and `summary`."""
    return {"name": name, "at": at, "alerts": [(summary, labels)]}


def fire_together(*cases: dict[str, Any]) -> dict[str, Any]:
    """A test case: the alerts of `cases` (of one alert, at one moment) fire, and no other."""
    [(name, at)] = {(case["name"], case["at"]) for case in cases}
    return {"name": name, "at": at, "alerts": [alert for case in cases for alert in case["alerts"]]}


def quiet(name: str, at: str) -> dict[str, Any]:
    return {"name": name, "at": at}


#: Per side: series (name{labels} → promtool's expanding notation, one value a minute) and
#: what each alert must do at a moment: fire with its labels and summary, or stay quiet.
#: Each alert has its trouble and, beside it, a series that must not trip it.
# fmt: off
CASES: dict[str, tuple[dict[str, str], list[dict[str, Any]]]] = {
    "exchange": (
        {
            'up{job="aifi-exchange", instance="r1"}': "1 0x9",
            'up{job="aifi-exchange", instance="r2"}': "1x9",
            # r1 loses the database at 2m and r2 at 3m: down for the whole exchange then (r2 is
            # back at 10m).
            'aifi_exchange_database_up{instance="r1"}': "1 1 0x8",
            'aifi_exchange_database_up{instance="r2"}': "1 1 1 0x6 1x60",
            # r3, started at 20m, cannot reach the database: its own trouble, which must not
            # keep r1's tasks from their ticket.
            'aifi_exchange_database_up{instance="r3"}': "_x19 0x45",
            # One server error a second; database-down answers are left to their own alert.
            'aifi_exchange_errors_total{kind="server", instance="r1"}': "0+60x20",
            'aifi_exchange_errors_total{kind="unavailable", instance="r2"}': "0+600x20",
            'aifi_exchange_errors_total{kind="storage_full", instance="r1"}': "0x20 1x20",
            # r2 cannot reach the object store once at 3m (a store restarting), then from 26m
            # to 41m; ExchangeErrors leaves these to their own alert.
            'aifi_exchange_errors_total{kind="blob_store_unavailable", instance="r2"}':
                "0x2 1x22 1+30x15 451x40",
            'aifi_exchange_errors_total{kind="audit_archive", instance="r2"}': "0x30 1x10",
            # A read at 36m finds a result gone from the store: the first one is paged (the
            # series is exported at 0 from the start).
            'aifi_exchange_errors_total{kind="blob_missing", instance="r1"}': "0x35 1x20",
            # Background tasks' failed rounds since they last went well twice running (one
            # value a minute here is a scrape's view: a sweep's figure holds between its
            # rounds). r1's retention sweep (every 5 minutes) fails for good from 20m; r1's
            # anchor (every 10 minutes) from 40m.
            'aifi_exchange_background_failing_rounds{task="retention", instance="r1"}':
                "0x19 1x4 2x4 3x4 4x4 5x4 6x4 7x4 8x4",
            'aifi_exchange_background_failing_rounds{task="audit_anchor", instance="r1"}':
                "0x39 1x9 2x9 3",
            # r2's anchor failed one round at 5m; the next two, at 15m and 25m, went well.
            'aifi_exchange_background_failing_rounds{task="audit_anchor", instance="r2"}':
                "0x4 1x19 0x35",
            # r2 cannot count the versions figure on one scrape in six.
            'aifi_exchange_background_failing_rounds{task="version_figure", instance="r2"}':
                " ".join(["0 0 0 0 1 1"] * 16),
            # r1 can count it on one scrape in seven from 65m: a run one good round does not end.
            'aifi_exchange_background_failing_rounds{task="version_figure", instance="r1"}':
                "0x64 1 2 3 4 5 6 6 7 8 9 10 11 12 12 13 14 15 16 17 18 19 19",
            # Archiving fails from 30m as well: AuditArchiveFailing says so, not this one.
            'aifi_exchange_background_failing_rounds{task="audit_archive", instance="r2"}':
                "0x29 1x4 2x4 3x4 4x4 5x4 6x4",
            # r2's linking (every half second) failed for three minutes at 41m and then went on.
            'aifi_exchange_background_failing_rounds{task="audit_chain", instance="r2"}':
                "0x40 120 240 360 0x30",
            # r1's lease expiry counted failed rounds while r1 reported the database down (its
            # check after each failure found it answering: a database coming and going), until
            # 16m: no ticket while its replica reports the database down.
            'aifi_exchange_background_failing_rounds{task="lease_expiry", instance="r1"}':
                "0x1 60+60x14 0x60",
            # Linking pauses for four minutes at 6m (a replica restarting), then stops at 22m.
            'aifi_exchange_audit_unlinked_age_seconds{instance="r1"}':
                "0.5x5 120x3 0.5x11 0+60x40",
            'aifi_exchange_queue_age_seconds{product="slow", priority="routine", instance="r1"}':
                "0+60x30",
            'aifi_exchange_queue_age_seconds{product="brisk", priority="routine", instance="r1"}':
                "30x30",
            # A STAT job waits from 6m and is claimed at 13m; the same product's routine
            # backlog, however old, is not a STAT emergency.
            'aifi_exchange_queue_age_seconds{product="triage", priority="stat", instance="r1"}':
                "0x5 0+60x6 0x20",
            'aifi_exchange_queue_age_seconds{product="triage", priority="routine", instance="r2"}':
                "300x30",
            # The same figure from two replicas: slow from 10m to 40m, then quick again.
            'aifi_exchange_stat_turnaround_seconds{quantile="0.9", instance="r1"}':
                "40x9 420x30 40x20",
            'aifi_exchange_stat_turnaround_seconds{quantile="0.9", instance="r2"}':
                "40x9 420x30 40x20",
            'aifi_exchange_stat_turnaround_seconds{quantile="0.5", instance="r1"}': "400x60",
            'aifi_exchange_jobs{state="expired", instance="r1"}': "3x40 4x40",
            'aifi_exchange_purged_objects_total{kind="undelivered_result", instance="r1"}': (
                "0x30 2x30"
            ),
            'aifi_exchange_purged_objects_total{kind="input", instance="r2"}': "0+5x60",
            # The store refuses one job's inputs at 40m and 41m, then lets retention be.
            'aifi_exchange_purge_failures_total{kind="input", instance="r2"}': "0x40 1 2x80",
            # slow's workers hand back a job a minute from 10m; brisk's one now and then.
            'aifi_exchange_handed_back_jobs_total{product="slow", instance="r1"}': "0x10 1+1x40",
            'aifi_exchange_handed_back_jobs_total{product="brisk", instance="r2"}': "0x20 1x40",
            # Gateways cannot file one of flawed's results at 20m; brisk's are all filed,
            # though a hospital let one of its jobs go (its results not brought home).
            'aifi_exchange_undelivered_results_total{product="flawed", reason="unfileable", '
            'instance="r1"}': "0x20 1x40",
            'aifi_exchange_undelivered_results_total{product="brisk", reason="let_go", '
            'instance="r2"}': "0x10 1x50",
            # r2 restarts at 70m (its series from 0 again at 76m, as each replica exports
            # them) and counts one of fresh's results at 81m: not the same count as before.
            'aifi_exchange_undelivered_results_total{product="fresh", reason="unfileable", '
            'instance="r2"}': "1x69 _x5 0x4 1x60",
            # Prometheus misses r1 for ten minutes at 61m: steady's count has not changed.
            'aifi_exchange_undelivered_results_total{product="steady", reason="unfileable", '
            'instance="r1"}': "3x60 _x10 3x80",
            # renamed's summaries name "v2.0" from 11m (each replica reads the same figure from
            # the database) until the jobs of the last hour no longer hold one, at 73m; at 17m
            # neither replica could count it (the scrape leaves the figure out). prompt's
            # workers run 1.1 from 31m, and the vendor publishes it three minutes on.
            'aifi_exchange_version_not_in_catalogue_jobs{product="renamed", instance="r1"}':
                "0x10 1 2x4 stale 2x54 0x20",
            'aifi_exchange_version_not_in_catalogue_jobs{product="renamed", instance="r2"}':
                "0x10 1 2x4 stale 2x54 0x20",
            'aifi_exchange_version_not_in_catalogue_jobs{product="prompt", instance="r1"}':
                "0x30 3x3 0x60",
            # hospital-b's gateway stops collecting at 0m; hospital-a's outcomes wait seconds.
            'aifi_exchange_hospital_unacknowledged_age_seconds{hospital="hospital-b", '
            'instance="r1"}': "0+60x60",
            'aifi_exchange_hospital_unacknowledged_age_seconds{hospital="hospital-a", '
            'instance="r2"}': "5x60",
        },
        [
            quiet("ExchangeReplicaDown", "2m"),  # down for a minute only
            fires("ExchangeReplicaDown", "4m", "Exchange replica r1 is not answering scrapes",
                  job="aifi-exchange", instance="r1"),
            quiet("ExchangeDatabaseDown", "3m"),  # r2 still reached it until 3m
            fires("ExchangeDatabaseDown", "5m", "No exchange replica reaches PostgreSQL"),
            quiet("ExchangeErrors", "4m"),
            fires("ExchangeErrors", "12m", "Errors of the exchange's own: 1 a second"),
            quiet("BlobStoreFull", "20m"),
            fires("BlobStoreFull", "22m", "The exchange refused writes for lack of space"),
            quiet("BlobStoreFull", "30m"),  # five quiet minutes since
            quiet("BlobStoreUnavailable", "8m"),  # the blip at 3m
            quiet("BlobStoreUnavailable", "30m"),  # not yet for five minutes
            fires("BlobStoreUnavailable", "33m", "The exchange cannot reach its object store"),
            quiet("BlobStoreUnavailable", "50m"),  # back at 41m
            quiet("ExchangeErrors", "38m"),  # the store's outage alone (and missing blobs)
            quiet("BlobsMissing", "34m"),
            fires("BlobsMissing", "36m",
                  "Inputs or results the exchange holds are missing from its object store"),
            quiet("BlobsMissing", "50m"),  # none for ten minutes since
            quiet("AuditArchiveFailing", "30m"),
            fires("AuditArchiveFailing", "31m", "An access-log archiving round failed"),
            quiet("ExchangeBackgroundFailing", "13m"),  # the database was down: its own alert
            quiet("ExchangeBackgroundFailing", "15m"),  # r2's anchor failed once, then went on
            quiet("ExchangeBackgroundFailing", "20m"),
            quiet("ExchangeBackgroundFailing", "34m"),  # two in a row from 25m: not yet ten
            fires("ExchangeBackgroundFailing", "35m",
                  "The exchange's background task retention keeps failing (4 failed rounds)",
                  task="retention"),
            fires("ExchangeBackgroundFailing", "45m",  # retention alone, not archiving too
                  "The exchange's background task retention keeps failing (6 failed rounds)",
                  task="retention"),
            fire_together(
                fires("ExchangeBackgroundFailing", "60m",
                      "The exchange's background task retention keeps failing "
                      "(8 failed rounds)", task="retention"),
                fires("ExchangeBackgroundFailing", "60m",
                      "The exchange's background task audit_anchor keeps failing "
                      "(3 failed rounds)", task="audit_anchor"),
            ),
            fires("ExchangeBackgroundFailing", "80m",
                  "The exchange's background task version_figure keeps failing "
                  "(14 failed rounds)", task="version_figure"),
            quiet("AuditChainStalled", "8m"),
            quiet("AuditChainStalled", "32m"),  # over five minutes old, not yet for five
            fires("AuditChainStalled", "34m",
                  "Access-log entries have waited 12m 0s to be linked into the hash chain"),
            quiet("StatJobWaiting", "8m"),  # two minutes old: not over yet
            fires("StatJobWaiting", "10m",
                  "Product triage: a STAT job has waited 4m 0s for a vendor", product="triage"),
            quiet("StatJobWaiting", "13m"),  # claimed
            quiet("StatTurnaroundSlow", "20m"),  # slow for ten minutes, not yet fifteen
            fires("StatTurnaroundSlow", "30m",
                  "STAT jobs of the last hour took 7m 0s from ready to completed "
                  "(90th percentile)"),
            quiet("StatTurnaroundSlow", "45m"),
            quiet("VendorNotKeepingUp", "15m"),  # over ten minutes old, not yet for ten
            fires("VendorNotKeepingUp", "25m",
                  "Product slow: the oldest ready job has waited 25m 0s", product="slow"),
            quiet("JobsExpiring", "39m"),
            fires("JobsExpiring", "45m", "Jobs expired in the last hour"),
            quiet("VendorHandingBack", "25m"),  # fifteen handed back, not yet over twenty
            fires("VendorHandingBack", "40m",
                  "Product slow: its workers handed back 30 jobs in 30 minutes", product="slow"),
            quiet("HospitalNotCollecting", "38m"),  # over half an hour, not yet for ten
            fires("HospitalNotCollecting", "42m",
                  "Hospital hospital-b: outcomes have waited 42m 0s for its gateway to "
                  "collect them", hospital="hospital-b"),
            quiet("ResultsNotFileable", "19m"),
            fires("ResultsNotFileable", "30m",
                  "Product flawed: hospitals could not file its results in their PACS",
                  product="flawed"),
            fires("ResultsNotFileable", "100m",
                  "Product fresh: hospitals could not file its results in their PACS",
                  product="fresh"),
            fires("ResultsNotFileable", "128m",  # fresh alone: steady's gap is no count
                  "Product fresh: hospitals could not file its results in their PACS",
                  product="fresh"),
            quiet("ResultsNotFileable", "150m"),  # over an hour since, and no more
            quiet("ProductVersionNotInCatalogue", "19m"),  # not yet for ten minutes
            fires("ProductVersionNotInCatalogue", "22m",
                  "Product renamed: 2 of the last hour's jobs ended under a version the catalogue "
                  "has no record of", product="renamed"),
            fires("ProductVersionNotInCatalogue", "38m",  # renamed alone: prompt published
                  "Product renamed: 2 of the last hour's jobs ended under a version the catalogue "
                  "has no record of", product="renamed"),
            quiet("ProductVersionNotInCatalogue", "74m"),  # no such job left: at once
            quiet("ResultsNeverFetched", "29m"),
            fires("ResultsNeverFetched", "35m",
                  "Results were purged without ever being fetched"),
            quiet("RetentionCannotPurge", "39m"),
            fires("RetentionCannotPurge", "45m",
                  "The blob store would not delete data retention came for"),
            quiet("RetentionCannotPurge", "110m"),  # over an hour since the last refusal
        ],
    ),
    "gateway": (
        {
            'up{job="aifi-gateway", instance="g1"}': "1 0x9",
            'up{job="aifi-gateway", instance="g2"}': "1x9",
            'aifi_gateway_state_up{job="aifi-gateway", instance="g2"}': "1 1 0x8",
            'aifi_gateway_upload_queue_age_seconds{job="aifi-gateway", instance="g1"}': "0+60x30",
            'aifi_gateway_jobs_retrying{step="upload", job="aifi-gateway", instance="g2"}':
                "3x10 11x20",
            # g1's PACS refuses its results for an hour: GatewayDeliveryFailing's trouble,
            # not studies held up on their way out.
            'aifi_gateway_jobs_retrying{step="result", job="aifi-gateway", instance="g1"}':
                "40x60",
            # g2's disk fills at 10m with a study past its quiet time: it is held for half an
            # hour; g1's studies pass their quiet time by a few seconds each.
            'aifi_gateway_assembly_overdue_seconds{job="aifi-gateway", instance="g2"}': (
                "0x10 0+60x30 0x20"
            ),
            'aifi_gateway_assembly_overdue_seconds{job="aifi-gateway", instance="g1"}': (
                "0 2 0 1 0x60"
            ),
            # g1's STAT study waits from 3m, its result lands in the PACS at 12m; g2's STAT
            # studies come back within a minute each.
            'aifi_gateway_stat_waiting_seconds{job="aifi-gateway", instance="g1"}':
                "0x2 0+60x8 0x20",
            'aifi_gateway_stat_waiting_seconds{job="aifi-gateway", instance="g2"}':
                "0 40 0 50 0x20",
            'aifi_gateway_awaiting_result_age_seconds{job="aifi-gateway", instance="g1"}': (
                "0+60x90"
            ),
            # g1's failed delivery is redone after 20 minutes; g2's keeps failing.
            'aifi_gateway_deliveries{state="failed", job="aifi-gateway", instance="g1"}': (
                "1x20 0x20"
            ),
            'aifi_gateway_deliveries{state="failed", job="aifi-gateway", instance="g2"}': "1x40",
            'aifi_gateway_jobs{state="refused", job="aifi-gateway", instance="g1"}': "0x10 1x70",
            # g2 refuses a vendor's result at 20m; g1 delivers every one.
            'aifi_gateway_jobs_undelivered{job="aifi-gateway", instance="g1"}': "0x90",
            'aifi_gateway_jobs_undelivered{job="aifi-gateway", instance="g2"}': "0x20 1x70",
            # g1 after a restore: two jobs of the lost disk's, undecided; g2 sees a second
            # gateway's job for the minutes before that gateway brings it home.
            'aifi_gateway_unknown_exchange_jobs{job="aifi-gateway", instance="g1"}': "0x10 2x80",
            'aifi_gateway_unknown_exchange_jobs{job="aifi-gateway", instance="g2"}':
                "0x5 1x3 0x82",
            # After an exchange restore at 30m, g1's adopted job cannot be sent again (one
            # ended at 31m) and another is sent again; g2 sends one again, nothing ends.
            'aifi_gateway_jobs_lost_by_exchange_total{outcome="ended", job="aifi-gateway", '
            'instance="g1"}': "0x30 1x50",
            'aifi_gateway_jobs_lost_by_exchange_total{outcome="sent_again", job="aifi-gateway", '
            'instance="g1"}': "0x30 1x50",
            'aifi_gateway_jobs_lost_by_exchange_total{outcome="ended", job="aifi-gateway", '
            'instance="g2"}': "0x80",
            'aifi_gateway_jobs_lost_by_exchange_total{outcome="sent_again", job="aifi-gateway", '
            'instance="g2"}': "0x30 1x50",
            # g2's exchange store loses images of a study twice: ended at 100m.
            'aifi_gateway_jobs_lost_by_exchange_total{outcome="images_sent_again", '
            'job="aifi-gateway", instance="g2"}': "0x90 1x20",
            'aifi_gateway_jobs_lost_by_exchange_total{outcome="images_lost_ended", '
            'job="aifi-gateway", instance="g2"}': "0x99 1x10",
            # g3's lost the product's results twice: ended at 100m too.
            'aifi_gateway_jobs_lost_by_exchange_total{outcome="results_sent_again", '
            'job="aifi-gateway", instance="g3"}': "0x90 1x20",
            'aifi_gateway_jobs_lost_by_exchange_total{outcome="results_lost_ended", '
            'job="aifi-gateway", instance="g3"}': "0x99 1x10",
            # g2's retention sweep fails from 10m (a study due then stays); g1's purges a
            # study a minute late at most.
            'aifi_gateway_retention_overdue_seconds{job="aifi-gateway", instance="g2"}':
                "0x10 0+60x80",
            'aifi_gateway_retention_overdue_seconds{job="aifi-gateway", instance="g1"}':
                "0 50 0 30 0x80",
            # g1's pager is down from 31m: its STAT notice is retried, then fails for good at
            # 33m. g2's RIS missed one STAT notice at 10m, taken at the next try; it refuses a
            # routine one at 41m.
            'aifi_gateway_notices{channel="webhook", priority="stat", outcome="retrying", '
            'job="aifi-gateway", instance="g1"}': "0x30 1x2 0x30",
            'aifi_gateway_notices{channel="webhook", priority="stat", outcome="failed", '
            'job="aifi-gateway", instance="g1"}': "0x32 1x30",
            'aifi_gateway_notices{channel="hl7", priority="stat", outcome="retrying", '
            'job="aifi-gateway", instance="g2"}': "0x9 1 0x50",
            'aifi_gateway_notices{channel="hl7", priority="stat", outcome="sent", '
            'job="aifi-gateway", instance="g2"}': "0+1x60",
            'aifi_gateway_notices{channel="hl7", priority="routine", outcome="failed", '
            'job="aifi-gateway", instance="g2"}': "0x40 1x30",
            # g1's pager key file is gone from 5m to 70m (a rotation half done): its routine
            # notices wait, retrying. g1's FHIR server is down from 21m to 36m (below), and
            # its routine notices wait on till 100m, its token file gone meanwhile.
            'aifi_gateway_notices{channel="webhook", priority="routine", outcome="retrying", '
            'job="aifi-gateway", instance="g1"}': "0x4 1x65 0x40",
            'aifi_gateway_notices{channel="fhir", priority="routine", outcome="retrying", '
            'job="aifi-gateway", instance="g1"}': "0x20 1x80",
            # g1's FHIR server is down from 21m to 36m; g2's RIS missed one notice at 11m,
            # and took the next one tried, five minutes later.
            'aifi_gateway_notice_receiver_down{channel="fhir", job="aifi-gateway", '
            'instance="g1"}': "0x20 1x15 0x30",
            'aifi_gateway_notice_receiver_down{channel="hl7", job="aifi-gateway", '
            'instance="g2"}': "0x10 1x5 0x50",
            # g1's disk fills at 20m (the counter starts there); g2 refused two files before
            # the test began and none since; g1's PACS sends one broken file at 16m, two at 24m.
            'aifi_gateway_refused_instances_total{way="dimse", sender="PACS", '
            'reason="cannot-store", job="aifi-gateway", instance="g1"}': "_x20 4 9x30",
            'aifi_gateway_refused_instances_total{way="stow", sender="VNA", '
            'reason="not-dicom", job="aifi-gateway", instance="g2"}': "2x60",
            'aifi_gateway_refused_instances_total{way="dimse", sender="PACS", '
            'reason="not-dicom", job="aifi-gateway", instance="g1"}': "_x16 1x7 3x40",
            # g2's VNA logs in with an old password from 30m; g1's sent no body once, long ago.
            'aifi_gateway_stow_refused_requests_total{status="401", job="aifi-gateway", '
            'instance="g2"}': "_x30 1+1x20",
            'aifi_gateway_stow_refused_requests_total{status="400", job="aifi-gateway", '
            'instance="g1"}': "1x60",
        },
        [
            quiet("GatewayDown", "2m"),
            fires("GatewayDown", "4m", "The AIFI gateway g1 is not answering scrapes",
                  job="aifi-gateway", instance="g1"),
            quiet("GatewayStateUnreadable", "3m"),
            fires("GatewayStateUnreadable", "5m",
                  "The gateway g2 cannot read its own state database",
                  job="aifi-gateway", instance="g2"),
            quiet("GatewayStatResultLate", "9m"),  # over five minutes, not yet for one
            fires("GatewayStatResultLate", "10m",
                  "A STAT study at g1 has waited 7m 0s for its AI result",
                  job="aifi-gateway", instance="g1"),
            quiet("GatewayStatResultLate", "12m"),  # in the PACS
            quiet("GatewayBacklog", "14m"),
            fires("GatewayBacklog", "16m", "Studies are not leaving the gateway g2",
                  job="aifi-gateway", instance="g2"),
            quiet("GatewayNotAssembling", "25m"),  # over ten minutes, not yet for five
            fires("GatewayNotAssembling", "27m",
                  "A study received at g2 has waited 16m 0s past its quiet time without "
                  "becoming jobs",
                  job="aifi-gateway", instance="g2"),
            quiet("GatewayNotAssembling", "45m"),  # assembled once there was room again
            quiet("GatewayResultsOverdue", "65m"),
            fires("GatewayResultsOverdue", "75m",
                  "A study sent for AI has had no outcome for 1h 15m 0s",
                  job="aifi-gateway", instance="g1"),
            quiet("GatewayDeliveryFailing", "25m"),
            fires("GatewayDeliveryFailing", "35m",
                  "AI results are not reaching the PACS from g2",
                  job="aifi-gateway", instance="g2", state="failed"),
            quiet("GatewayRetentionOverdue", "86m"),  # an hour overdue, not yet for 15 minutes
            fires("GatewayRetentionOverdue", "88m",
                  "The gateway g2 has kept a study 1h 17m 0s past its retention time",
                  job="aifi-gateway", instance="g2"),
            quiet("GatewayStatNoticeFailing", "11m"),  # retried once, and taken
            quiet("GatewayStatNoticeFailing", "31m"),  # retrying, not yet for a minute
            fires("GatewayStatNoticeFailing", "32m",
                  "A STAT result notice from g1 has not reached its webhook receiver",
                  channel="webhook", instance="g1"),
            fires("GatewayStatNoticeFailing", "45m",  # failed for good at 33m
                  "A STAT result notice from g1 has not reached its webhook receiver",
                  channel="webhook", instance="g1"),
            quiet("GatewayStatNoticeFailing", "50m"),
            quiet("GatewayNoticesFailing", "40m"),
            fires("GatewayNoticesFailing", "42m",
                  "Result notices from g2 to hl7 failed in the last hour",
                  channel="hl7", instance="g2"),
            quiet("GatewayNoticesStuck", "64m"),
            fires("GatewayNoticesStuck", "66m",
                  "Result notices from g1 to webhook have waited an hour to go out",
                  channel="webhook", instance="g1"),
            quiet("GatewayNoticesStuck", "90m"),  # fhir's hour counts from its server's return
            fires("GatewayNoticesStuck", "98m",
                  "Result notices from g1 to fhir have waited an hour to go out",
                  channel="fhir", instance="g1"),
            quiet("GatewayNoticeReceiverDown", "14m"),  # g2's RIS, down for four minutes
            quiet("GatewayNoticeReceiverDown", "29m"),
            fires("GatewayNoticeReceiverDown", "31m",
                  "The fhir receiver of g1 has been down for 10 minutes",
                  job="aifi-gateway", instance="g1", channel="fhir"),
            quiet("GatewayNoticeReceiverDown", "38m"),  # it took one again at 37m
            quiet("GatewayResultsUndelivered", "19m"),
            fires("GatewayResultsUndelivered", "30m",
                  "AI results for g2 were completed but not delivered in the last hour",
                  job="aifi-gateway", instance="g2"),
            quiet("GatewayResultsUndelivered", "85m"),  # an hour without another
            quiet("GatewayUnknownExchangeJobs", "70m"),  # undecided since 11m, not yet for an hour
            fires("GatewayUnknownExchangeJobs", "71m",
                  "2 ended exchange jobs unknown to the gateway g1 have waited an hour for the "
                  "hospital's decision",
                  job="aifi-gateway", instance="g1"),
            quiet("GatewayLostJobEnded", "30m"),  # g2's job sent again: nothing to do
            fires("GatewayLostJobEnded", "31m",
                  "A job the exchange lost could not be sent again by the gateway g1",
                  job="aifi-gateway", instance="g1", outcome="ended"),
            quiet("GatewayLostJobEnded", "95m"),  # an hour after, nothing new
            quiet("GatewayLostJobEnded", "98m"),  # g2's study sent again: nothing to do
            fire_together(
                fires("GatewayLostJobEnded", "101m",
                      "A job the exchange lost could not be sent again by the gateway g2",
                      job="aifi-gateway", instance="g2", outcome="images_lost_ended"),
                fires("GatewayLostJobEnded", "101m",
                      "A job the exchange lost could not be sent again by the gateway g3",
                      job="aifi-gateway", instance="g3", outcome="results_lost_ended"),
            ),
            quiet("GatewayJobsRefused", "9m"),
            fires("GatewayJobsRefused", "30m",
                  "The exchange refused studies from g1 in the last hour",
                  job="aifi-gateway", instance="g1", state="refused"),
            quiet("GatewayJobsRefused", "75m"),  # an hour without a new refusal
            quiet("GatewayCannotStore", "19m"),
            fires("GatewayCannotStore", "20m", "The gateway g1 cannot store what PACS sends",
                  job="aifi-gateway", instance="g1", way="dimse", sender="PACS",
                  reason="cannot-store"),
            fires("GatewayCannotStore", "30m", "The gateway g1 cannot store what PACS sends",
                  job="aifi-gateway", instance="g1", way="dimse", sender="PACS",
                  reason="cannot-store"),
            quiet("GatewayCannotStore", "40m"),  # nothing refused for 15 minutes
            quiet("GatewayRefusingInstances", "15m"),  # g2's old refusals stay quiet
            fires("GatewayRefusingInstances", "16m",
                  "The gateway g1 refused instances from PACS (not-dicom)",
                  job="aifi-gateway", instance="g1", way="dimse", sender="PACS",
                  reason="not-dicom"),
            fires("GatewayRefusingInstances", "30m",
                  "The gateway g1 refused instances from PACS (not-dicom)",
                  job="aifi-gateway", instance="g1", way="dimse", sender="PACS",
                  reason="not-dicom"),
            quiet("GatewayRefusingInstances", "40m"),  # nothing new for 15 minutes
            quiet("GatewayStowLoginRefused", "29m"),  # g1's old 400 is no login problem
            fires("GatewayStowLoginRefused", "30m",
                  "STOW-RS senders are being refused their login at g2",
                  job="aifi-gateway", instance="g2", status="401"),
            fires("GatewayStowLoginRefused", "45m",
                  "STOW-RS senders are being refused their login at g2",
                  job="aifi-gateway", instance="g2", status="401"),
        ],
    ),
}
# fmt: on


@pytest.mark.parametrize("side", SIDES)
def test_each_alert_fires_on_its_trouble_and_not_otherwise(side: str, tmp_path: Path) -> None:
    rules_file = shipped_rules(side, tmp_path)
    rules = rules_of(rules_file)
    series, cases = CASES[side]
    assert {case["name"] for case in cases} == set(rules), "every alert is tested"
    for alert in rules:
        said = [case for case in cases if case["name"] == alert]
        assert {"alerts" in case for case in said} == {True, False}, f"{alert}: fire and quiet"
    tests = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": case["at"],
                        "alertname": case["name"],
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": rules[case["name"]]["labels"]["severity"],
                                    **labels,
                                },
                                "exp_annotations": {
                                    "summary": summary,
                                    "description": rules[case["name"]]["annotations"][
                                        "description"
                                    ],
                                },
                            }
                            for summary, labels in case.get("alerts", [])
                        ],
                    }
                    for case in cases
                ],
            }
        ],
    }
    test_file = tmp_path / f"{side}-alerts.test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def exported_families(exchange_on: ExchangeFactory, folder: Path) -> dict[str, str]:
    """Every metric family a fresh exchange and a fresh gateway export, with its type."""
    exposition = exchange_on().client.get("/metrics").text
    state = GatewayState(folder / "state.db")
    server = start_metrics_server(state, 0, retain_seconds=24 * 3600.0)  # as a gateway starts it
    try:
        exposition += httpx.get(server.url, timeout=10).text
    finally:
        server.close()
        state.close()
    return {family.name: family.type for family in text_string_to_metric_families(exposition)}


@pytest.mark.parametrize("backend", ["sqlite"])  # the metrics do not depend on it
def test_the_rules_read_only_exported_metrics_each_as_its_type(
    exchange_on: ExchangeFactory, tmp_path: Path
) -> None:
    """A renamed metric would leave its alert silent for good; and rate() and increase()
    suit counters only: on a gauge that also falls (failed deliveries, once redone) they read
    a fall as a reset and a standing value as no change."""
    kinds = exported_families(exchange_on, tmp_path)
    for side in SIDES:
        for alert, rule in rules_of(shipped_rules(side, tmp_path)).items():
            metrics = re.findall(r"\b(aifi_\w+)", rule["expr"])
            assert metrics or rule["expr"].startswith("up{"), f"{alert} reads no metric"
            for metric in metrics:
                family = metric.removesuffix("_total")
                assert family in kinds, f"{alert}: no metric {metric} is exported"
                assert (kinds[family] == "counter") == metric.endswith("_total"), (
                    f"{alert}: {metric} names a {kinds[family]}"
                )
            for function, metric in re.findall(
                r"\b(rate|increase|delta)\(\s*(?:max\()?(aifi_\w+)", rule["expr"]
            ):
                kind = kinds[metric.removesuffix("_total")]
                assert (kind == "counter") == (function != "delta"), (
                    f"{alert}: {function}() of {metric}, a {kind}"
                )


#: Where each side's alerts are explained to whoever receives them, and how they are listed
#: there: the operator's as a table with each one's severity, the hospital's as a paragraph.
GUIDES = {
    "exchange": ("deploy.md", r"(?m)^\| `(\w+)` \|.*\| (?:page|ticket) \|$"),
    "gateway": ("hospital-guide.md", r"(?ms)^Alerting rules for these rows ship.*?```"),
}


@pytest.mark.parametrize("side", SIDES)
def test_each_alert_is_explained_in_its_guide(side: str, tmp_path: Path) -> None:
    """The operator reads docs/deploy.md, the hospital's engineer docs/hospital-guide.md:
    every alert they may receive is named there, and every alert named there ships."""
    name, listing = GUIDES[side]
    guide = (Path(__file__).parents[2] / "docs" / name).read_text()
    found = re.findall(listing, guide)
    named = (
        set(found)
        if side == "exchange"
        else {word for text in found for word in re.findall(r"`(\w+)`", text)}
    )
    shipped = set(rules_of(shipped_rules(side, tmp_path)))
    assert shipped - named == set(), f"not explained in docs/{name}"
    assert named - shipped == set(), f"named in docs/{name} but not shipped"
