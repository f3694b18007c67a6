"""The national demo on one machine: an exchange, five hospitals, reference AI products.

Everything runs in this process on embedded defaults (SQLite, local folders): per hospital a
gateway, a simulated PACS (a DICOM SCP that stores what it receives) and a "modality" that
sends synthetic studies by C-STORE; vendor workers run the reference products. The demo ends
with what a national operator wants to see: per hospital and product, what was sent, what came
back, and how long it took.
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pynetdicom import evt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aifi.exchange.server import ExchangeThread, free_port
from aifi.exchange.settings import ExchangeSettings
from aifi.gateway.config import GatewayConfig
from aifi.gateway.dimse import handle_echo, send_files, start_scp, storage_scp_ae
from aifi.gateway.service import Gateway
from aifi.phantoms import GridSize, write_study
from aifi.products import reference_products
from aifi.vendor import VendorClient, Worker

VENDOR = "aifi-reference"
MODALITY_AE = "DEMO_CT"


@dataclass(frozen=True)
class DemoHospital:
    id: str
    name: str
    size: str
    #: Slices per CT head study: larger hospitals run thinner-slice protocols.
    slices: int


HOSPITALS = (
    DemoHospital("umc-noord", "UMC Noord (academic)", "large", 40),
    DemoHospital("stadsziekenhuis", "Stadsziekenhuis (teaching)", "large", 32),
    DemoHospital("rivierenland", "Ziekenhuis Rivierenland", "medium", 24),
    DemoHospital("streekziekenhuis", "Streekziekenhuis Oost", "small", 20),
    DemoHospital("kustkliniek", "Kustkliniek", "small", 16),
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
        self.port = free_port()
        self._server = start_scp(
            ae,
            "127.0.0.1",
            self.port,
            [(evt.EVT_C_STORE, self._store), (evt.EVT_C_ECHO, handle_echo)],
        )

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
    settings = ExchangeSettings(data_dir=workdir / "exchange", operator_key=operator_key)
    products = reference_products()
    with _quiet_logs(), ExitStack() as stack:
        try:
            exchange = stack.enter_context(ExchangeThread(settings, port=port))
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

        vendor_key = organisation(VENDOR, "AIFI reference products", "vendor")
        vendor = VendorClient(exchange.url, vendor_key)
        stack.callback(vendor.close)
        for product in products.values():
            vendor.register_product(product.manifest(VENDOR))
        stop_workers = threading.Event()
        workers = []
        for product_id, product in products.items():
            for index in range(2):
                worker = Worker(vendor, product.handler, product_ids=[product_id], lease_seconds=60)
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

        gateways: dict[str, Gateway] = {}
        pacs: dict[str, SimulatedPacs] = {}
        for hospital in HOSPITALS:
            key = organisation(hospital.id, hospital.name, "hospital")
            for product_id in products:
                httpx.post(
                    exchange.url + "/subscriptions",
                    json={"product_id": product_id},
                    headers={"Authorization": f"Bearer {key}"},
                ).raise_for_status()
            pacs[hospital.id] = SimulatedPacs(workdir / "pacs" / hospital.id)
            stack.callback(pacs[hospital.id].stop)
            config = GatewayConfig.model_validate(
                {
                    "hospital": hospital.id,
                    "workdir": workdir / "gateways" / hospital.id,
                    "exchange": {"url": exchange.url, "api_key": key},
                    "dicom": {
                        "ae_title": "AIFI_GW",
                        "port": free_port(),
                        "quiet_seconds": 10,
                        "quiet_seconds_by_calling_ae": {MODALITY_AE: 1.0},
                    },
                    "routes": [{"product": pid, "modalities": ["CT"]} for pid in products],
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
            gateways[hospital.id] = Gateway(config)
            gateways[hospital.id].start()
            stack.callback(gateways[hospital.id].stop)

        sent = _send_studies(console, workdir, gateways, studies, seed)
        expected = len(sent) * len(products)
        finished = _wait_for_results(console, gateways, expected, timeout=120 + 10 * expected)
        figures = _figures(gateways, pacs, sent, products, finished)
        _print_table(console, figures)
        if summary is not None:
            summary.parent.mkdir(parents=True, exist_ok=True)
            summary.write_text(json.dumps(figures, indent=2))
            console.print(f"summary written to {summary}")
        if keep_running:
            console.print(f"exchange stays up at {exchange.url} — press Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    ok = figures["lost"] == 0 and figures["results_delivered"] == figures["jobs_total"]
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
                grid = GridSize(
                    64, 64, 3.6, slices=hospital.slices, slice_thickness_mm=160 / hospital.slices
                )
                truth = write_study(
                    "ct-head", folder, seed=seed * 1000 + number * 10 + index, size=grid
                )
                files = sorted(folder.rglob("*.dcm"))
                gateway = gateways[hospital.id]
                outcomes = send_files(files, "127.0.0.1", gateway.port, "AIFI_GW", MODALITY_AE)
                failed = [o for o in outcomes if not o.ok]
                if failed:
                    console.print(
                        f"[red]{hospital.id}: {len(failed)} instances refused: {failed[0].error}[/]"
                    )
                sent.append(
                    SentStudy(hospital.id, truth.study_instance_uid, len(files), time.time())
                )
                progress.advance(task)
    return sent


def _wait_for_results(
    console: Console, gateways: dict[str, Gateway], expected: int, timeout: float
) -> bool:
    def ended() -> int:
        return sum(
            1
            for g in gateways.values()
            for job in g.jobs()
            if job["state"] in ("delivered", "ended", "refused")
        )

    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("results back in the PACS", total=expected)
        while (done := ended()) < expected:
            progress.update(task, completed=done)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Any gateway's change wakes us; the others are re-counted then too.
            next(iter(gateways.values())).wait_until(
                lambda: ended() > done, timeout=min(remaining, 1.0)
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
            mine = [j for j in jobs if j["product_id"] == product_id]
            e2e = [j["delivered_at"] - j["study_last_at"] for j in mine if j["delivered_at"]]
            all_e2e += e2e
            row: dict[str, Any] = {
                "hospital": hospital.id,
                "product": product_id,
                "studies_sent": sum(1 for s in sent if s.hospital == hospital.id),
                "jobs_completed": sum(1 for j in mine if j["state"] == "delivered"),
                "jobs_failed": sum(1 for j in mine if j["state"] in ("ended", "refused")),
                "results_delivered": sum(int(j["results_delivered"]) for j in mine),
                "results_in_pacs": in_pacs,
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
