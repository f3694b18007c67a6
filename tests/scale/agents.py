"""The processes of a scale-out run, started by the tests and killable at any moment.

`uploader` acts as one hospital gateway: it sends its planned studies (create the job, upload
the pseudonymised instances, mark it ready), then fetches every outcome and acknowledges it.
Every step is keyed, so an uploader killed halfway and started again finishes the same plan
without doubling anything. `worker` is a vendor: the SDK's Worker with the reference tissue
volume product. Both append one JSON line per event to a log the test reads afterwards.

Run as `python -m scale.agents uploader|worker …` with `tests` on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from aifi.gateway.exchange_client import GatewayClient
from aifi.http import ExchangeHTTPError


class EventLog:
    """One JSON object per line, flushed at once: a SIGKILL loses at most the line in hand."""

    def __init__(self, path: Path) -> None:
        self._out = path.open("a", buffering=1)
        self._lock = threading.Lock()

    def write(self, **event: Any) -> None:
        with self._lock:
            self._out.write(json.dumps(event) + "\n")


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # the last line of a killed process may be cut short
    return events


def upload(args: argparse.Namespace) -> int:
    plan = json.loads(Path(args.plan).read_text())
    log = EventLog(Path(args.log))
    client = GatewayClient(args.url, args.key, retries=8)
    mine: dict[str, str] = {}
    for item in plan:
        job = client.create_job(args.product, item["study_uid"], "PSCALE", item["key"], None)
        mine[job["id"]] = item["key"]
        log.write(event="created", job=job["id"], key=item["key"])
        if job["inputs_complete"]:
            continue  # sent before a crash: the exchange already has it all
        present = client.input_uids(job["id"])
        for path in item["files"]:
            uid = item["uids"][path]
            if uid in present:
                continue
            # Bytes, not a stream: a retry after a replica died mid-upload sends them again.
            client.request(
                "PUT",
                f"/jobs/{job['id']}/inputs/{uid}",
                content=Path(path).read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
        client.mark_ready(job["id"], len(item["files"]))
        log.write(event="ready", job=job["id"])
    while not all_acknowledged(client, mine):
        for job in client.ended_jobs(wait=2.0):
            if job["id"] in mine:
                try:
                    fetch_outcome(client, job, Path(args.workdir), log)
                except (ExchangeHTTPError, httpx.TransportError) as exc:
                    # As the gateway does: an outcome not fetched now is fetched next round.
                    log.write(event="fetch-retry", job=job["id"], error=str(exc)[:200])
    client.close()
    return 0


def fetch_outcome(client: GatewayClient, job: dict[str, Any], workdir: Path, log: EventLog) -> None:
    results = []
    if job["state"] == "completed":
        for row in client.results(job["id"]):
            target = workdir / f"{job['id']}-{row['name']}"
            client.download_result(job["id"], row["name"], target)
            digest = hashlib.sha256(target.read_bytes()).hexdigest()
            results.append({"name": row["name"], "sha256": digest})
            target.unlink()
    log.write(
        event="fetched", job=job["id"], state=job["state"], reason=job["reason"], results=results
    )
    client.acknowledge(job["id"])


def all_acknowledged(client: GatewayClient, mine: dict[str, str]) -> bool:
    params: list[tuple[str, str | int]] = [("acknowledged", "false"), ("limit", 1000)]
    open_jobs = client.request("GET", "/jobs", params=params).json()
    return not any(job["id"] in mine for job in open_jobs)


def work(args: argparse.Namespace) -> int:
    from aifi.products import tissue_volume
    from aifi.vendor import JobContext, Lease, ProductResult, VendorClient, Worker

    log = EventLog(Path(args.log))

    class LoggingClient(VendorClient):
        def claim(self, *a: Any, **kw: Any) -> Lease | None:
            lease = super().claim(*a, **kw)
            if lease is not None:
                log.write(event="claimed", job=lease.job_id, attempt=lease.job["attempts"])
            return lease

        def complete(self, lease: Lease, summary: dict[str, Any] | None = None) -> dict[str, Any]:
            done = super().complete(lease, summary)
            log.write(event="completed", job=lease.job_id)
            return done

        def upload_result(self, lease: Lease, *a: Any, **kw: Any) -> dict[str, Any]:
            stored = super().upload_result(lease, *a, **kw)
            if kw.get("complete"):  # the last result completes the job
                log.write(event="completed", job=lease.job_id)
            return stored

        def upload_summary(self, lease: Lease, *a: Any, **kw: Any) -> dict[str, Any]:
            stored = super().upload_summary(lease, *a, **kw)
            if kw.get("complete"):
                log.write(event="completed", job=lease.job_id)
            return stored

    def handler(context: JobContext) -> ProductResult:
        return tissue_volume.run(context)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = LoggingClient(args.url, args.key, retries=8)
    worker = Worker(client, handler, lease_seconds=args.lease_seconds, workdir=Path(args.workdir))
    try:
        worker.run(stop, wait_seconds=2.0)
    except BaseException as exc:
        log.write(event="crashed", error=f"{type(exc).__name__}: {exc}")
        raise
    client.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scale.agents")
    sub = parser.add_subparsers(dest="role", required=True)
    up = sub.add_parser("uploader")
    up.add_argument("--plan", required=True)
    up.add_argument("--product", required=True)
    wk = sub.add_parser("worker")
    wk.add_argument("--lease-seconds", type=float, default=6.0)
    for each in (up, wk):
        each.add_argument("--url", required=True)
        each.add_argument("--key", required=True)
        each.add_argument("--log", required=True)
        each.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    code = upload(args) if args.role == "uploader" else work(args)
    EventLog(Path(args.log)).write(event="exited", seconds=time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
