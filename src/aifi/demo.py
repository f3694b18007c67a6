"""The national demo on one machine: an exchange, five hospitals, three clinical areas.

Everything runs in this process on embedded defaults (SQLite, local folders): per hospital a
gateway, a simulated PACS (a DICOM SCP that stores what it receives) and a "modality" that
sends synthetic studies with known ground truth by C-STORE (at one hospital its VNA forwards
them by DICOMweb STOW-RS instead) — CT heads with and without an
intracranial haemorrhage, CT chests with lung nodules, MR brains. Vendor workers run the
reference products for quantification (brain volumetry), localisation (lung nodules) and acute
triage (haemorrhage, STAT). Result notices go to an HL7 listener and a STAT webhook standing in
for the hospitals' RIS and paging. The demo ends with what a national operator wants to see: per
hospital and product what was sent, what came back and how long it took, and per product its
findings, its accuracy against the phantoms' truth and how fast triage alerts arrived.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from pynetdicom import evt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.gateway.config import GatewayConfig
from aifi.gateway.dimse import (
    StoreOutcome,
    handle_echo,
    send_files,
    start_scp,
    storage_scp_ae,
)
from aifi.gateway.notify.receivers import Hl7Listener, WebhookReceiver
from aifi.gateway.service import Gateway
from aifi.phantoms import StudyTruth, write_study
from aifi.products import brain_volumetry, ich_triage, lung_nodules, reference_products
from aifi.products.accuracy import HAEMORRHAGE_ML, compare_with_truth, summarise_cases
from aifi.vendor import VendorClient, Worker
from aifi.web import mount

VENDOR = "aifi-reference"
MODALITY_AE = "DEMO_MODALITY"
#: Times a demo modality sends again what the gateway did not store, as a modality's queue does.
MODALITY_RESENDS = 3
#: The hospital whose studies reach its gateway by STOW-RS from its VNA, as this user name.
STOW_HOSPITAL = "kustkliniek"
STOW_SENDER = "KUST_VNA"
#: The clinical products the demo runs, in the order it reports them.
DEMO_PRODUCTS = (ich_triage.PRODUCT_ID, brain_volumetry.PRODUCT_ID, lung_nodules.PRODUCT_ID)
#: Routing rules every demo hospital uses: acute CT heads go to triage at STAT.
ROUTES = [
    {
        "product": ich_triage.PRODUCT_ID,
        "modalities": ["CT"],
        "body_parts": ["HEAD"],
        "priority": "stat",
    },
    {
        "product": brain_volumetry.PRODUCT_ID,
        "modalities": ["CT", "MR"],
        "body_parts": ["HEAD", "BRAIN"],
    },
    {"product": lung_nodules.PRODUCT_ID, "modalities": ["CT"], "body_parts": ["CHEST"]},
]
KINDS = ("ct-head", "ct-chest", "mr-brain")
NODULE_CHOICES_MM = (6.0, 8.0, 10.0, 12.0, 16.0, 20.0)


@dataclass(frozen=True)
class DemoHospital:
    id: str
    name: str
    size: str


HOSPITALS = (
    DemoHospital("umc-noord", "UMC Noord (academic)", "large"),
    DemoHospital("stadsziekenhuis", "Stadsziekenhuis (teaching)", "large"),
    DemoHospital("rivierenland", "Ziekenhuis Rivierenland", "medium"),
    DemoHospital("streekziekenhuis", "Streekziekenhuis Oost", "small"),
    DemoHospital("kustkliniek", "Kustkliniek", "small"),
)


class SimulatedPacs:
    """A DICOM SCP that stores whatever it receives under one folder: a hospital's PACS."""

    def __init__(self, folder: Path, ae_title: str = "DEMO_PACS") -> None:
        self.folder = folder
        self.ae_title = ae_title
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.received = 0
        ae = storage_scp_ae(ae_title)
        self._server = start_scp(
            ae,
            "127.0.0.1",
            0,  # any free port, bound now: nothing can take it between choosing and binding
            [(evt.EVT_C_STORE, self._store), (evt.EVT_C_ECHO, handle_echo)],
        )
        self.port = int(self._server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        ds = event.dataset  # small result objects: decoding is fine here
        target = self.folder / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(event.dataset_path, target)
        with self._lock:
            self.received += 1
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


@dataclass
class SentStudy:
    hospital: str
    study_uid: str
    instances: int
    sent_at: float
    truth: StudyTruth

    @property
    def jobs(self) -> int:
        """Jobs the demo's routes make of this study (a CT head goes to two products)."""
        return 2 if self.truth.kind == "ct-head" else 1


def study_plan(hospital_index: int, number: int, seed: int) -> tuple[str, dict[str, Any]]:
    """Which phantom a hospital's modality sends as its `number`-th study, and its findings.

    The kinds rotate so every hospital sends every kind; every other CT head holds a
    haemorrhage, and every CT chest one to three nodules.
    """
    turn = number + hospital_index
    kind = KINDS[turn % len(KINDS)]
    rng = np.random.default_rng([seed, hospital_index, number])
    if kind == "ct-head":
        positive = (turn // len(KINDS)) % 2 == 0
        volume = HAEMORRHAGE_ML[(hospital_index + number) % len(HAEMORRHAGE_ML)]
        return kind, {"haemorrhage_ml": volume if positive else None}
    if kind == "ct-chest":
        count = int(rng.integers(1, 4))
        chosen = rng.choice(NODULE_CHOICES_MM, size=count, replace=False)
        return kind, {"nodules": sorted(float(d) for d in chosen)}
    return kind, {}


@contextmanager
def _quiet_logs() -> Iterator[None]:
    noisy = ["aifi", "pynetdicom", "httpx", "uvicorn"]
    previous = {name: logging.getLogger(name).level for name in noisy}
    for name in noisy:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(fraction * 100) - 1]


def run_demo(
    *,
    studies: int,
    workdir: Path,
    summary: Path | None,
    keep_running: bool,
    port: int = 8000,
    seed: int = 1,
    console: Console | None = None,
) -> int:
    """Run the demo; returns the process exit code (non-zero when anything did not come back)."""
    console = console or Console(width=None if Console().is_terminal else 120)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    operator_key = "aifi_" + secrets.token_urlsafe(32)
    # The demo's products are admitted as they register; `aifi exchange` admits through the
    # dossier and the operator's review.
    settings = ExchangeSettings(
        data_dir=workdir / "exchange", operator_key=operator_key, admit_on_register=True
    )
    products = {pid: p for pid, p in reference_products().items() if pid in DEMO_PRODUCTS}
    with _quiet_logs(), ExitStack() as stack:
        try:
            exchange = stack.enter_context(ExchangeThread(settings, port=port, extensions=[mount]))
        except (OSError, RuntimeError, TimeoutError) as exc:
            console.print(f"[red]cannot start the exchange on port {port}: {exc}; try --port[/]")
            return 2
        console.print(f"exchange up at [bold]{exchange.url}[/] (OpenAPI at {exchange.url}/docs)")
        operator = httpx.Client(
            base_url=exchange.url, headers={"Authorization": f"Bearer {operator_key}"}
        )
        stack.callback(operator.close)

        def organisation(org_id: str, name: str, kind: str) -> str:
            response = operator.post(
                "/organisations", json={"id": org_id, "name": name, "kind": kind}
            )
            response.raise_for_status()
            return str(response.json()["api_key"])

        web_password = secrets.token_urlsafe(12)

        def web_user(org_id: str, username: str, role: str) -> None:
            operator.post(
                "/users",
                json={
                    "organisation_id": org_id, "username": username, "role": role,
                    "display_name": username.replace("-", " ").title(), "password": web_password,
                },
            ).raise_for_status()  # fmt: skip

        web_user("operator", "operator", "operator")
        vendor_key = organisation(VENDOR, "AIFI reference products", "vendor")
        web_user(VENDOR, "vendor", "vendor-engineer")
        vendor = VendorClient(exchange.url, vendor_key)
        stack.callback(vendor.close)
        for product in products.values():
            vendor.register_product(product.manifest(VENDOR))
        stop_workers = threading.Event()
        workers = []
        for product_id, product in products.items():
            for index in range(2 if product_id == ich_triage.PRODUCT_ID else 1):
                worker = Worker(
                    vendor,
                    product.handler,
                    product_ids=[product_id],
                    lease_seconds=60,
                    product_versions={product_id: product.version},
                )
                thread = threading.Thread(
                    target=worker.run,
                    args=(stop_workers, 1.0),
                    name=f"worker-{product_id}-{index}",
                    daemon=True,
                )
                thread.start()
                workers.append(thread)

        def stop_all_workers() -> None:
            stop_workers.set()
            for thread in workers:
                thread.join(timeout=30)

        stack.callback(stop_all_workers)

        ris = stack.enter_context(Hl7Listener())
        pager_secret = secrets.token_hex(16)
        pager = stack.enter_context(WebhookReceiver(pager_secret.encode()))
        notifications = {
            "hl7": {"host": "127.0.0.1", "port": ris.port, "processing_id": "T"},
            "webhook": {"url": pager.url, "secret": pager_secret, "only_stat": True},
        }
        gateways: dict[str, Gateway] = {}
        pacs: dict[str, SimulatedPacs] = {}
        changed = threading.Condition()
        for hospital in HOSPITALS:
            key = organisation(hospital.id, hospital.name, "hospital")
            web_user(hospital.id, f"radiologist-{hospital.id}", "radiologist")
            for product_id in products:
                httpx.post(
                    exchange.url + "/subscriptions",
                    json={"product_id": product_id},
                    headers={"Authorization": f"Bearer {key}"},
                ).raise_for_status()
            pacs[hospital.id] = SimulatedPacs(workdir / "pacs" / hospital.id)
            stack.callback(pacs[hospital.id].stop)
            stow = _stow_listener(workdir / "gateways" / hospital.id, hospital.id)
            config = GatewayConfig.model_validate(
                {
                    "hospital": hospital.id,
                    "workdir": workdir / "gateways" / hospital.id,
                    "exchange": {"url": exchange.url, "api_key": key},
                    "dicom": {
                        "ae_title": "AIFI_GW",
                        "port": 0,  # the gateway binds any free port when it starts
                        "quiet_seconds": 10,
                        "quiet_seconds_by_calling_ae": {MODALITY_AE: 1.0, STOW_SENDER: 1.0},
                    },
                    "dicomweb": stow,
                    "routes": ROUTES,
                    "notifications": notifications,
                    "pacs": [
                        {
                            "name": "pacs",
                            "ae_title": "DEMO_PACS",
                            "host": "127.0.0.1",
                            "port": pacs[hospital.id].port,
                        }
                    ],
                    "poll_wait_seconds": 5,
                }
            )
            gateways[hospital.id] = Gateway(config, changed=changed)
            gateways[hospital.id].start()
            stack.callback(gateways[hospital.id].stop)

        sent = _send_studies(console, workdir, gateways, studies, seed)
        expected = sum(study.jobs for study in sent)
        finished = _wait_for_results(console, gateways, expected, timeout=120 + 10 * expected)
        figures = _figures(gateways, pacs, sent, products, finished)
        figures["products"] = _product_figures(gateways, sent)
        _print_table(console, figures)
        _print_products(console, figures["products"])
        if summary is not None:
            summary.parent.mkdir(parents=True, exist_ok=True)
            summary.write_text(json.dumps(figures, indent=2))
            console.print(f"summary written to {summary}")
        if keep_running:
            console.print(f"exchange stays up at {exchange.url} — press Ctrl-C to stop")
            console.print(
                f"web pages at {exchange.url}/ui — log in as [bold]operator[/], [bold]vendor[/] "
                f"or [bold]radiologist-<hospital>[/] (e.g. radiologist-umc-noord), password "
                f"[bold]{web_password}[/]"
            )
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    ok = (
        figures["lost"] == 0
        and figures["jobs_failed"] == 0
        and figures["jobs_completed"] == figures["jobs_total"]
    )
    if not ok:
        console.print("[red]not everything that was sent came back[/]")
    return 0 if ok else 1


def _send_studies(
    console: Console, workdir: Path, gateways: dict[str, Gateway], studies: int, seed: int
) -> list[SentStudy]:
    sent: list[SentStudy] = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("modalities send studies", total=studies * len(HOSPITALS))
        for number in range(studies):
            for index, hospital in enumerate(HOSPITALS):
                folder = workdir / "modalities" / hospital.id / f"study-{number:03d}"
                kind, findings = study_plan(index, number, seed)
                truth = write_study(
                    kind, folder, seed=seed * 1000 + number * 10 + index, size="default", **findings
                )
                files = sorted(folder.rglob("*.dcm"))
                gateway = gateways[hospital.id]
                failed = (
                    _send_as_a_vna(console, hospital.id, files, gateway)
                    if gateway.stow_url
                    else _send_as_a_modality(console, hospital.id, files, gateway.port)
                )
                if failed:
                    console.print(
                        f"[red]{hospital.id}: {len(failed)} instances not stored: "
                        f"{failed[0].error}[/]"
                    )
                sent.append(
                    SentStudy(hospital.id, truth.study_instance_uid, len(files), time.time(), truth)
                )
                progress.advance(task)
    return sent


def _send_as_a_modality(
    console: Console, hospital_id: str, files: list[Path], port: int
) -> list[StoreOutcome]:
    """C-STORE a study to the gateway as a modality's send queue does: what was not stored
    (a refusal, a DIMSE timeout on a busy host) is sent again on a new association, a few
    times; returns what still failed. The gateway takes an instance sent twice once."""

    def send(pending: list[Path]) -> list[StoreOutcome]:
        outcomes = send_files(pending, "127.0.0.1", port, "AIFI_GW", MODALITY_AE)
        return [outcome for outcome in outcomes if not outcome.ok]

    return _resending(console, hospital_id, files, send, "the modality")


def _stow_listener(folder: Path, hospital_id: str) -> dict[str, Any] | None:
    """The `dicomweb` section of the STOW-RS hospital's gateway (None for the others), with
    its VNA's password written as the hospital guide says."""
    if hospital_id != STOW_HOSPITAL:
        return None
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = folder / "stow-vna.password"
    password.write_text(secrets.token_urlsafe(24) + "\n")
    password.chmod(0o600)
    return {"port": 0, "senders": [{"name": STOW_SENDER, "password_file": str(password)}]}


def _send_as_a_vna(
    console: Console, hospital_id: str, files: list[Path], gateway: Gateway
) -> list[StoreOutcome]:
    """STOW-RS a study to the gateway as a VNA's DICOMweb forwarding does: the whole study in
    one request, streamed from disk; what the answer does not list as stored is sent again, a
    few times. Returns what still failed."""
    assert gateway.config.dicomweb is not None and gateway.stow_url is not None
    url = f"{gateway.stow_url}/studies"
    password = gateway.config.dicomweb.senders[0].password()
    boundary = secrets.token_hex(16)
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }

    def send(pending: list[Path]) -> list[StoreOutcome]:
        try:
            answer = httpx.post(
                url,
                content=_multipart(pending, boundary),
                headers=headers,
                auth=(STOW_SENDER, password),
                timeout=120,
            )
        except httpx.HTTPError as exc:
            return [StoreOutcome(path, None, f"STOW-RS: {exc!r}") for path in pending]
        return _stow_failures(answer, pending)

    return _resending(console, hospital_id, files, send, "the VNA")


def _resending(
    console: Console,
    hospital_id: str,
    files: list[Path],
    send: Callable[[list[Path]], list[StoreOutcome]],
    sender: str,
) -> list[StoreOutcome]:
    """`send` the files, then what failed again, up to `MODALITY_RESENDS` times, saying so;
    returns what still failed."""
    pending = files
    for attempt in range(1 + MODALITY_RESENDS):
        failed = send(pending)
        if not failed or attempt == MODALITY_RESENDS:
            return failed
        console.print(
            f"[yellow]{hospital_id}: {len(failed)} of {len(pending)} instances not stored "
            f"({failed[0].error}); {sender} sends them again[/]"
        )
        pending = [outcome.path for outcome in failed]
    return failed


def _multipart(files: list[Path], boundary: str) -> Iterator[bytes]:
    for path in files:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield path.read_bytes()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _stow_failures(answer: httpx.Response, sent: list[Path]) -> list[StoreOutcome]:
    """The instances a STOW-RS answer did not list as stored (all of them for a refusal)."""
    stored: set[str] = set()
    if answer.status_code in (200, 202):
        for item in answer.json().get("00081199", {}).get("Value", []):
            stored.update(item.get("00081155", {}).get("Value", []))
    error = answer.headers.get("warning") or f"STOW-RS answered {answer.status_code}"
    return [
        StoreOutcome(path, None, error) for path in sent if _sop_instance_uid(path) not in stored
    ]


def _sop_instance_uid(path: Path) -> str:
    return str(
        pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
        ).SOPInstanceUID
    )


def _wait_for_results(
    console: Console, gateways: dict[str, Gateway], expected: int, timeout: float
) -> bool:
    final = ("delivered", "ended", "refused", "skipped")

    def ended() -> int:
        return sum(1 for g in gateways.values() for job in g.jobs() if job["state"] in final)

    def unfinished() -> int:
        """Jobs not ended, and notices not yet sent: the STAT alerts' figures read them."""
        jobs = sum(1 for g in gateways.values() for job in g.jobs() if job["state"] not in final)
        return jobs + sum(g.notices_queued() for g in gateways.values())

    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("results back in the PACS", total=expected)
        # Every job must end — the expected ones, and any follow-up a late instance opened.
        while (done := ended()) < expected or unfinished():
            progress.update(task, completed=done)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # The gateways share one condition: any job change anywhere wakes this wait.
            next(iter(gateways.values())).wait_until(
                lambda: ended() > done or (done >= expected and not unfinished()),
                timeout=remaining,
            )
        progress.update(task, completed=expected)
    return True


def _figures(
    gateways: dict[str, Gateway],
    pacs: dict[str, SimulatedPacs],
    sent: list[SentStudy],
    products: dict[str, Any],
    finished: bool,
) -> dict[str, Any]:
    rows = []
    all_e2e: list[float] = []
    totals: dict[str, int] = {
        "jobs_total": 0,
        "jobs_completed": 0,
        "jobs_failed": 0,
        "results_delivered": 0,
    }
    for hospital in HOSPITALS:
        jobs = gateways[hospital.id].jobs()
        in_pacs = sum(1 for _ in pacs[hospital.id].folder.rglob("*.dcm"))
        for product_id in products:
            # A skipped job sent nothing: another job took the same instances.
            mine = [j for j in jobs if j["product_id"] == product_id and j["state"] != "skipped"]
            e2e = [j["delivered_at"] - j["study_last_at"] for j in mine if j["delivered_at"]]
            all_e2e += e2e
            row: dict[str, Any] = {
                "hospital": hospital.id,
                "product": product_id,
                "studies_sent": len(mine),
                "jobs_completed": sum(1 for j in mine if j["state"] == "delivered"),
                "jobs_failed": sum(1 for j in mine if j["state"] in ("ended", "refused")),
                "results_delivered": sum(int(j["results_delivered"]) for j in mine),
                "results_in_hospital_pacs": in_pacs,
                "failure_reasons": sorted(
                    {j["reason"] for j in mine if j["state"] != "delivered" and j["reason"]}
                ),
                "e2e_seconds": {"p50": _percentile(e2e, 0.5), "p95": _percentile(e2e, 0.95)},
            }
            rows.append(row)
            totals["jobs_total"] += row["studies_sent"]
            totals["jobs_completed"] += row["jobs_completed"]
            totals["jobs_failed"] += row["jobs_failed"]
            totals["results_delivered"] += row["results_delivered"]
    totals["jobs_total"] = max(totals["jobs_total"], sum(study.jobs for study in sent))
    lost = totals["jobs_total"] - totals["jobs_completed"] - totals["jobs_failed"]
    return {
        **totals,
        "studies_sent": len(sent),
        "lost": lost,
        "finished_in_time": finished,
        "e2e_seconds": {"p50": _percentile(all_e2e, 0.5), "p95": _percentile(all_e2e, 0.95)},
        "rows": rows,
    }


def _print_table(console: Console, figures: dict[str, Any]) -> None:
    table = Table(title="AIFI national demo — per hospital and product")
    for column in (
        "hospital",
        "product",
        "sent",
        "completed",
        "failed",
        "in PACS",
        "p50 s",
        "p95 s",
    ):
        table.add_column(column, justify="left" if column in ("hospital", "product") else "right")

    def seconds(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    for row in figures["rows"]:
        table.add_row(
            row["hospital"], row["product"], str(row["studies_sent"]), str(row["jobs_completed"]),
            str(row["jobs_failed"]), str(row["results_delivered"]),
            seconds(row["e2e_seconds"]["p50"]), seconds(row["e2e_seconds"]["p95"]),
        )  # fmt: skip
    console.print(table)
    e2e = figures["e2e_seconds"]
    console.print(
        f"jobs {figures['jobs_total']}: completed {figures['jobs_completed']}, failed "
        f"{figures['jobs_failed']}, lost {figures['lost']}; results delivered "
        f"{figures['results_delivered']}; end to end p50 {seconds(e2e['p50'])} s, "
        f"p95 {seconds(e2e['p95'])} s (includes the 1 s quiet timer)"
    )
    for row in figures["rows"]:
        for reason in row["failure_reasons"]:
            console.print(f"[yellow]{row['hospital']} / {row['product']}: {reason}[/]")


def _product_figures(gateways: dict[str, Gateway], sent: list[SentStudy]) -> dict[str, Any]:
    """Per product: studies, findings, accuracy against truth, and STAT alert latency.

    Accuracy is scored on what came through the platform: the JSON summary and the SEG the
    gateway downloaded for each job, against the truth of the phantom the modality sent.
    Alert latency runs from the moment the exchange marked a triage job completed to the
    moment the STAT webhook was accepted by the receiver.
    """
    truths = {s.study_uid: s.truth for s in sent}
    cases: dict[str, list[dict[str, Any]]] = {pid: [] for pid in DEMO_PRODUCTS}
    findings: dict[str, int] = dict.fromkeys(DEMO_PRODUCTS, 0)
    alerts: list[float] = []
    for gateway in gateways.values():
        for job in gateway.jobs():
            if job["state"] != "delivered" or job["product_id"] not in cases:
                continue
            folder = gateway.fetched_results(int(job["id"]))
            summary = json.loads((folder / "summary.json").read_text())
            findings[job["product_id"]] += sum(1 for f in summary["findings"] if f["measurements"])
            cases[job["product_id"]].append(
                compare_with_truth(job["product_id"], truths[job["study_uid"]], summary, folder)
            )
            webhook = gateway.state.notification_outcomes(int(job["id"])).get("webhook")
            if webhook and webhook["ok"] and job["exchange_ended_at"]:
                alerts.append(webhook["at"] - job["exchange_ended_at"])
    products: dict[str, Any] = {}
    for product_id in DEMO_PRODUCTS:
        entry: dict[str, Any] = {
            "studies": len(cases[product_id]),
            "findings": findings[product_id],
        }
        if cases[product_id]:
            figures, targets = summarise_cases(product_id, cases[product_id])
            entry["accuracy"] = {"figures": figures, "targets": targets}
        if product_id == ich_triage.PRODUCT_ID:
            entry["triage_alerts"] = len(alerts)
            entry["triage_alert_seconds"] = {
                "p50": _percentile(alerts, 0.5),
                "p95": _percentile(alerts, 0.95),
            }
        products[product_id] = entry
    return products


def _print_products(console: Console, products: dict[str, Any]) -> None:
    table = Table(title="Per product — reference algorithms, not for clinical use")
    for column in (
        "product",
        "studies",
        "findings",
        "accuracy against truth",
        "targets",
        "STAT alert",
    ):
        left = column in ("product", "accuracy against truth")
        table.add_column(column, justify="left" if left else "right")
    for product_id, entry in products.items():
        accuracy = entry.get("accuracy", {})
        figures = ", ".join(f"{k} {v}" for k, v in accuracy.get("figures", {}).items())
        targets = accuracy.get("targets", {})
        met = f"{sum(t['met'] for t in targets.values())}/{len(targets)} met" if targets else "–"
        latency = "–"
        if entry.get("triage_alerts"):
            seconds = entry["triage_alert_seconds"]
            latency = f"p50 {seconds['p50']:.2f} s, p95 {seconds['p95']:.2f} s"
        table.add_row(
            product_id, str(entry["studies"]), str(entry["findings"]), figures, met, latency
        )
    console.print(table)
