"""Benchmark: how fast the platform moves a 300-slice CT from the last C-STORE to the PACS.

(a) The platform's own time: from the modality's last acknowledged C-STORE to the result
    stored in the PACS, minus the quiet timer and the product's own run time.
(b) The gateway's C-STORE ingest rate beside dcmtk's `storescp` on the same data, in the
    same run (both with TCP_NODELAY=1), and their ratio. Beside them, the gateway's SCP
    set-up with a handler that stores nothing: the ceiling of a pynetdicom receiver.
(c) The same study sent again to the same gateway by STOW-RS, in one request streamed from
    disk: its ingest rate and its ratio to the gateway's own C-STORE rate (no target; for a
    hospital choosing how its PACS should send).

The exchange and the gateway run as their own processes (`aifi exchange`, `aifi gateway`), as
they would in a hospital and a data centre; the vendor worker and a simulated PACS run here.

    python benchmarks/e2e.py [--slices 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from pynetdicom import evt
from rich.console import Console
from rich.table import Table

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from aifi.gateway.dimse import (  # noqa: E402
    handle_echo,
    start_scp,
    storage_scp_ae,
    tighten_polling,
)
from aifi.phantoms import GridSize, write_study  # noqa: E402
from aifi.products import tissue_volume  # noqa: E402
from aifi.vendor import JobContext, ProductResult, VendorClient, Worker  # noqa: E402
from support.peers import free_port  # noqa: E402

QUIET_SECONDS = 1.0
TARGET_PLATFORM_SECONDS = 10.0
TARGET_INGEST_RATIO = 0.5
ENV = {**os.environ, "TCP_NODELAY": "1"}


class TimedPacs:
    """A PACS that notes when each result arrives."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.at = 0.0
        self.port = free_port()
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_C_ECHO, handle_echo)]
        self.server = start_scp(storage_scp_ae("BENCH_PACS"), "127.0.0.1", self.port, handlers)

    def _store(self, _event: evt.Event) -> int:
        self.at = time.monotonic()
        self.arrived.set()
        return 0


def wait_listening(process: subprocess.Popen[str], marker: str) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if marker in line:
            return
    raise RuntimeError(f"process exited ({process.wait()}) before printing {marker!r}")


def storescu(files: list[Path], port: int, called: str) -> float:
    """Seconds to send `files` with dcmtk's storescu (one association, Nagle off)."""
    started = time.monotonic()
    subprocess.run(
        ["storescu", "-aet", "BENCH_CT", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        check=True,
        capture_output=True,
        env=ENV,
        timeout=600,
    )
    return time.monotonic() - started


def storescp_rate(files: list[Path], folder: Path) -> float:
    """Instances/s into dcmtk's storescp writing files: the baseline for ingest."""
    port = free_port()
    out = folder / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(out), "+xa", str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                subprocess.run(
                    ["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)],
                    check=True,
                    capture_output=True,
                    timeout=5,
                )
                break
            except subprocess.CalledProcessError:
                time.sleep(0.05)  # storescp gives no start-up signal but its echo answer
        seconds = storescu(files, port, "STORESCP")
    finally:
        process.terminate()
        process.wait()
    return len(files) / seconds


def pynetdicom_ceiling_rate(files: list[Path]) -> float:
    """Instances/s into the gateway's own SCP set-up with a handler that stores nothing.

    No SCP built on pynetdicom's reactor can ingest faster than this, whatever its handler
    does; it shows how much of the gap to `storescp` is the gateway's own work.
    """
    port = free_port()
    handlers = [
        (evt.EVT_C_STORE, lambda _event: 0),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_CONN_OPEN, tighten_polling),
    ]
    server = start_scp(storage_scp_ae("CEILING"), "127.0.0.1", port, handlers)
    try:
        return len(files) / storescu(files, port, "CEILING")
    finally:
        server.shutdown()


def stow(files: list[Path], base: str, password: str) -> float:
    """Seconds to send `files` to the gateway by STOW-RS in one request, as a VNA would:
    streamed from disk, every instance answered as stored."""
    boundary = secrets.token_hex(16)

    def body() -> Any:
        for path in files:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            with path.open("rb") as source:
                while chunk := source.read(1 << 20):
                    yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    started = time.perf_counter()
    answer = httpx.post(
        f"{base}/studies",
        content=body(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        auth=("BENCH_VNA", password),
        timeout=600,
    )
    seconds = time.perf_counter() - started
    stored = answer.json().get("00081199", {}).get("Value", []) if answer.status_code == 200 else []
    if len(stored) != len(files):
        raise RuntimeError(f"STOW-RS stored {len(stored)} of {len(files)}: {answer.text[:500]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--json", type=Path, help="write the figures and targets here")
    parser.add_argument(
        "--workdir", type=Path, help="keep files here (default: a temporary folder)"
    )
    args = parser.parse_args()
    console = Console()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aifi-bench-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    study_dir = workdir / "study"
    if not study_dir.exists():
        console.print(f"writing a {args.slices}-slice 512×512 CT head …")
        write_study(
            "ct-head",
            study_dir,
            seed=7,
            size=GridSize(512, 512, 0.45, slices=args.slices, slice_thickness_mm=0.5),
        )
    files = sorted(study_dir.rglob("*.dcm"))
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    console.print(f"study: {len(files)} instances, {megabytes:.0f} MB")

    baseline = storescp_rate(files, workdir)
    ceiling = pynetdicom_ceiling_rate(files)

    operator_key = "aifi_" + secrets.token_urlsafe(32)
    exchange_port = free_port()
    exchange_dir = workdir / "exchange"
    shutil.rmtree(exchange_dir, ignore_errors=True)
    exchange = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aifi.cli",
            "exchange",
            "--port",
            str(exchange_port),
            "--data-dir",
            str(exchange_dir),
        ],
        env={**ENV, "AIFI_OPERATOR_KEY": operator_key, "AIFI_ADMIT_ON_REGISTER": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{exchange_port}"
    gateway: subprocess.Popen[str] | None = None
    stop = threading.Event()
    try:
        for _ in range(600):
            try:
                httpx.get(url + "/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.05)  # the exchange gives no start-up signal but its health answer
        operator = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator_key}"})
        keys = {}
        for org, kind in (("bench-hospital", "hospital"), ("aifi-reference", "vendor")):
            keys[org] = operator.post(
                "/organisations", json={"id": org, "name": org, "kind": kind}
            ).json()["api_key"]
        vendor = VendorClient(url, keys["aifi-reference"])
        vendor.register_product(tissue_volume.manifest("aifi-reference"))
        httpx.post(
            url + "/subscriptions",
            json={"product_id": tissue_volume.PRODUCT_ID},
            headers={"Authorization": f"Bearer {keys['bench-hospital']}"},
        ).raise_for_status()

        product_seconds: list[float] = []

        def timed_product(context: JobContext) -> ProductResult:
            started = time.monotonic()
            try:
                return tissue_volume.run(context)
            finally:
                product_seconds.append(time.monotonic() - started)

        worker = Worker(vendor, timed_product, lease_seconds=120, workdir=workdir)
        threading.Thread(target=worker.run, args=(stop, 1.0), daemon=True).start()

        pacs = TimedPacs()
        gateway_port, stow_port = free_port(), free_port()
        password_file = workdir / "stow.password"
        password_file.write_text(secrets.token_urlsafe(24))
        password_file.chmod(0o600)
        config = {
            "hospital": "bench-hospital",
            "workdir": str(workdir / "gateway"),
            "exchange": {"url": url, "api_key": keys["bench-hospital"]},
            "dicom": {"ae_title": "AIFI_GW", "port": gateway_port, "quiet_seconds": QUIET_SECONDS},
            "dicomweb": {
                "port": stow_port,
                "senders": [{"name": "BENCH_VNA", "password_file": str(password_file)}],
            },
            "routes": [{"product": tissue_volume.PRODUCT_ID, "modalities": ["CT"]}],
            "pacs": [
                {"name": "pacs", "ae_title": "BENCH_PACS", "host": "127.0.0.1", "port": pacs.port}
            ],
            "poll_wait_seconds": 20,
        }
        shutil.rmtree(workdir / "gateway", ignore_errors=True)
        (workdir / "gateway.yaml").write_text(yaml.safe_dump(config))
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aifi.cli",
                "gateway",
                "--config",
                str(workdir / "gateway.yaml"),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_listening(gateway, "listening on")
        send_seconds = storescu(files, gateway_port, "AIFI_GW")
        last_store = time.monotonic()
        if not pacs.arrived.wait(600):
            raise RuntimeError("no result reached the PACS within 10 minutes")
        total = pacs.at - last_store
        product = sum(product_seconds)
        platform = total - QUIET_SECONDS - product
        stow_seconds = stow(
            files, f"http://127.0.0.1:{stow_port}/dicom-web", password_file.read_text()
        )
    finally:
        stop.set()
        for process in (gateway, exchange):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)
    ingest = len(files) / send_seconds
    ratio = ingest / baseline
    stow_ingest = len(files) / stow_seconds
    figures: dict[str, Any] = {
        "study": {"instances": len(files), "megabytes": round(megabytes, 1)},
        "last_store_to_pacs_seconds": round(total, 3),
        "quiet_timer_seconds": QUIET_SECONDS,
        "product_seconds": round(product, 3),
        "platform_seconds": round(platform, 3),
        "gateway_ingest_instances_per_s": round(ingest, 1),
        "storescp_instances_per_s": round(baseline, 1),
        "ingest_ratio_vs_storescp": round(ratio, 3),
        "pynetdicom_empty_handler_instances_per_s": round(ceiling, 1),
        "pynetdicom_empty_handler_ratio_vs_storescp": round(ceiling / baseline, 3),
        "gateway_stow_ingest_instances_per_s": round(stow_ingest, 1),
        "stow_ratio_vs_gateway_c_store": round(stow_ingest / ingest, 3),
        "targets": {
            "platform_seconds": {
                "measured": round(platform, 3),
                "target": f"< {TARGET_PLATFORM_SECONDS}",
                "met": platform < TARGET_PLATFORM_SECONDS,
            },
            "ingest_ratio_vs_storescp": {
                "measured": round(ratio, 3),
                "target": f">= {TARGET_INGEST_RATIO}",
                "met": ratio >= TARGET_INGEST_RATIO,
            },
        },
    }
    table = Table(title=f"end to end, {len(files)}-slice CT ({megabytes:.0f} MB)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("last C-STORE → result in PACS", f"{total:.2f} s")
    table.add_row("  of which quiet timer", f"{QUIET_SECONDS:.2f} s")
    table.add_row("  of which product run", f"{product:.2f} s")
    table.add_row(
        "platform's own time (a)", f"{platform:.2f} s  (target < {TARGET_PLATFORM_SECONDS:.0f} s)"
    )
    table.add_row("gateway ingest", f"{ingest:.0f} inst/s")
    table.add_row("dcmtk storescp (baseline)", f"{baseline:.0f} inst/s")
    table.add_row("ratio (b)", f"{ratio:.2f}  (target ≥ {TARGET_INGEST_RATIO})")
    table.add_row(
        "pynetdicom SCP, empty handler",
        f"{ceiling:.0f} inst/s  (ratio {ceiling / baseline:.2f}: the ceiling for (b))",
    )
    table.add_row(
        "gateway STOW-RS ingest (c)",
        f"{stow_ingest:.0f} inst/s  (ratio {stow_ingest / ingest:.2f} to its C-STORE)",
    )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
