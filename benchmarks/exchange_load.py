"""Benchmark: jobs/s and MB/s through the exchange, and a replica's memory as studies grow.

Four figures, each from real processes on loopback (`aifi exchange` replicas, PostgreSQL from
the Debian package, nginx in front of the replicas):

1. Small jobs per second — create (declaring one instance), upload it (the job opens), claim
   (the answer lists the input), fetch the input, upload the result SR with `complete=true`,
   list ended jobs with their results, fetch the result, acknowledge the poll's jobs together —
   the requests the gateway and the vendor SDK make — on SQLite (one replica) and on
   PostgreSQL with one and with three replicas. Hospitals and vendors are threads here.
2. MB/s up and down: a 100 MB study uploaded and fetched back, on the same three set-ups.
3. The peak memory (VmHWM) of one replica while it takes and serves studies of 10 MB, 100 MB
   and 1 GB: uploads and downloads are streamed, so it must stay flat.

Each set-up's small jobs run three times on fresh deployments and the median counts. The rounds
go set-up by set-up in turn, so each round's three-replica ratio compares runs made minutes
apart, and the median of those ratios is the one reported. Each fresh deployment first takes 60
warm-up jobs, unmeasured: a new replica compiles its statements and opens its connections on
its first requests, a fixed cost that over a short run weighs as much as the throughput itself.
A round is 1,500 jobs: the pipeline fills at the start and drains at the end (three replicas
build a backlog of over a hundred ready jobs), and over 600 jobs those edges took a tenth of
the three replicas' throughput.

Each round also reports where the CPU went per job (the replicas, PostgreSQL, nginx, this load
generator, the rest of the machine) and, just before it, a yardstick of the machine's own
speed: the exchange's check of one result SR, timed here, and the microseconds one thread takes
to wake another on the other core (an unpinned replica's threads hand the interpreter lock to
each other hundreds of times per job, and a host can run Python at its usual speed yet wake
threads slowly). Figures from different days compare only as far as their yardsticks do.

Targets (small jobs): one replica at least 50 jobs/s; three replicas at least 1.5× one on a
2-core machine; memory growth from the 10 MB to the 1 GB study under 64 MB.

    python benchmarks/exchange_load.py [--jobs 1500] [--big-mb 1024] [--pin] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx
import pydicom
from rich.console import Console
from rich.table import Table

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from aifi.products import tissue_volume  # noqa: E402
from aifi.results.check import check_result  # noqa: E402
from aifi.vendor import JobContext  # noqa: E402
from scale.exchange_api import OPERATOR_KEY, pseudonymised_ct  # noqa: E402
from scale.servers import (  # noqa: E402
    Nginx,
    PostgresServer,
    Replica,
    free_port,
    replica_env,
    start_nginx,
    start_postgres,
)

TARGET_JOBS_PER_S = 50.0
TARGET_SPEEDUP = 1.5
TARGET_MEMORY_GROWTH_MB = 64.0
MB = 1024 * 1024
VENDOR = "bench-vendor"
HOSPITALS = 4
THREADS = 8
#: Jobs run through a fresh deployment before the measured round (caches, connections).
WARM_UP_JOBS = 60


@dataclass
class SmallStudy:
    study_uid: str
    sop_uid: str
    dicom: bytes
    sr: bytes


@dataclass
class Deployment:
    """One set-up under test: its URL and the processes to measure and stop."""

    name: str
    url: str
    replicas: list[Replica]
    nginx: Nginx | None = None
    hospital_keys: list[str] = field(default_factory=list)
    vendor_key: str = ""

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for replica in self.replicas:
            replica.stop()


@dataclass
class Reply:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP {self.status_code}: {self.content[:200]!r}")


class LightClient:
    """A keep-alive HTTP/1.1 client on the standard library, for the small-jobs load.

    The load generator shares the two cores with what it measures; httpx cost about 7 ms of
    CPU per job (a fifth of the machine with three replicas), http.client about a third of it.
    """

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float = 60) -> None:
        parsed = urlparse(base_url)
        self._address = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._headers = headers
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def __enter__(self) -> LightClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._connection is not None:
            self._connection.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = {**self._headers, **(headers or {})}
        body = content
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent["Content-Type"] = "application/json"
        if params:
            path += "?" + urlencode(params)
        for attempt in range(2):
            reused = self._connection is not None
            if self._connection is None:
                self._connection = http.client.HTTPConnection(*self._address, timeout=self._timeout)
            try:
                self._connection.request(method, path, body=body, headers=sent)
                answer = self._connection.getresponse()
                return Reply(answer.status, answer.read())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server had closed: open a new one, once.
                self._connection.close()
                self._connection = None
                if attempt or not reused:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Reply:
        return self.request("PUT", path, **kwargs)


def make_small_studies(folder: Path, count: int) -> list[SmallStudy]:
    """One-slice pseudonymised CTs, each with the SR the reference product makes for it."""
    studies = []
    for n in range(count):
        path = pseudonymised_ct(folder / f"s{n}", slices=1, size=16)[0]
        header = pydicom.dcmread(path, stop_before_pixels=True)
        out = folder / f"s{n}" / "out"
        out.mkdir()
        result = tissue_volume.run(JobContext(job={}, inputs=[path], output_dir=out))
        studies.append(
            SmallStudy(
                str(header.StudyInstanceUID),
                str(header.SOPInstanceUID),
                path.read_bytes(),
                result.files[0].path.read_bytes(),
            )
        )
    return studies


def deploy(
    name: str, folder: Path, database_url: str | None, replicas: int, *, pin: bool = False
) -> Deployment:
    """Start `replicas` exchange processes (behind nginx when more than one); `pin`: each on
    one core of its own (`aifi exchange --cpu`), taking the cores in turn."""
    folder.mkdir(parents=True)
    env = replica_env(
        database_url or f"sqlite:///{folder / 'exchange.db'}",
        f"file://{folder / 'blobs'}",
        OPERATOR_KEY,
        retention_sweep_seconds="3600",
    )
    cores = sorted(os.sched_getaffinity(0))
    started = [
        Replica(
            free_port(),
            _mkdir(folder / f"r{n}"),
            env,
            cpu=cores[n % len(cores)] if pin else None,
        )
        for n in range(replicas)
    ]
    started[0].start()
    for replica in started[1:]:
        replica.launch()
    for replica in started[1:]:
        replica.wait_healthy()
    nginx = start_nginx(folder / "nginx", [r.port for r in started]) if replicas > 1 else None
    deployment = Deployment(name, nginx.url if nginx else started[0].url, started, nginx)
    with httpx.Client(base_url=deployment.url, headers=_auth(OPERATOR_KEY), timeout=30) as op:
        deployment.hospital_keys = [_org(op, f"hospital-{n}", "hospital") for n in range(HOSPITALS)]
        deployment.vendor_key = _org(op, VENDOR, "vendor")
    httpx.post(
        deployment.url + "/products",
        json=tissue_volume.manifest(VENDOR),
        headers=_auth(deployment.vendor_key),
    ).raise_for_status()
    for key in deployment.hospital_keys:
        httpx.post(
            deployment.url + "/subscriptions",
            json={"product_id": tissue_volume.PRODUCT_ID},
            headers=_auth(key),
        ).raise_for_status()
    return deployment


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _org(client: httpx.Client, org_id: str, kind: str) -> str:
    answer = client.post("/organisations", json={"id": org_id, "name": org_id, "kind": kind})
    answer.raise_for_status()
    return str(answer.json()["api_key"])


# 1. small jobs -------------------------------------------------------------------------------


def small_jobs(
    deployment: Deployment, studies: list[SmallStudy], label: str = "bench"
) -> dict[str, float]:
    """Push every study through as a job; jobs/s from the first create to the last ack."""
    by_study = {s.study_uid: s for s in studies}
    todo = list(enumerate(studies))
    lock = threading.Lock()
    acknowledged = threading.Event()
    acked_at: list[float] = []
    total = len(studies)

    def hospital(index: int) -> None:
        key = deployment.hospital_keys[index % HOSPITALS]
        with LightClient(deployment.url, _auth(key)) as api:
            while True:
                with lock:
                    if not todo:
                        return
                    n, study = todo.pop()
                job = api.post(
                    "/jobs",
                    json_body={
                        "product_id": tissue_volume.PRODUCT_ID,
                        "study_uid": study.study_uid,
                        "patient_pseudonym": "PBENCH",
                        "idempotency_key": f"{label}-{n}",
                        "instances": 1,
                    },
                ).json()
                # The declared instance opens the job: no separate "ready".
                api.put(
                    f"/jobs/{job['id']}/inputs/{study.sop_uid}", content=study.dicom
                ).raise_for_status()

    def vendor() -> None:
        with LightClient(deployment.url, _auth(deployment.vendor_key)) as api:
            while not acknowledged.is_set():
                claim = api.post("/jobs/claim", json_body={"wait_seconds": 1})
                if claim.status_code == 204:
                    continue
                claim.raise_for_status()
                answer = claim.json()
                job, token = answer["job"], answer["lease_token"]
                study = by_study[job["study_uid"]]
                lease = {"X-Lease-Token": token}
                for item in answer["inputs"]:  # the claim lists them
                    api.get(
                        f"/jobs/{job['id']}/inputs/{item['sop_instance_uid']}", headers=lease
                    ).raise_for_status()
                # The only result is the last: it completes the job.
                api.put(
                    f"/jobs/{job['id']}/results/sr.dcm",
                    params={"complete": "true"},
                    content=study.sr,
                    headers=lease,
                ).raise_for_status()

    def collector(index: int) -> None:
        key = deployment.hospital_keys[index]
        with LightClient(deployment.url, _auth(key)) as api:
            while not acknowledged.is_set():
                ended = api.get(
                    "/jobs",
                    params={
                        "state": "completed",
                        "acknowledged": "false",
                        "wait": 1,
                        "limit": 50,
                        "with_results": "true",
                    },
                ).json()
                if not ended:
                    continue
                for job in ended:
                    for result in job["results"]:
                        api.get(f"/jobs/{job['id']}/results/{result['name']}").raise_for_status()
                # As the gateway acknowledges: saying what became of the results.
                ids = [job["id"] for job in ended]
                api.post(
                    "/jobs/acknowledge", json_body={"job_ids": ids, "not_delivered": {}}
                ).raise_for_status()
                now = time.perf_counter()
                with lock:
                    acked_at.extend([now] * len(ended))
                    if len(acked_at) >= total:
                        acknowledged.set()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=THREADS * 2 + HOSPITALS) as pool:
        futures = [pool.submit(hospital, n) for n in range(THREADS)]
        futures += [pool.submit(vendor) for _ in range(THREADS)]
        futures += [pool.submit(collector, n) for n in range(HOSPITALS)]
        for future in futures:
            future.result()
    elapsed = time.perf_counter() - started
    return {"jobs": total, "seconds": round(elapsed, 2), "jobs_per_s": round(total / elapsed, 1)}


# 2. bulk transfer ----------------------------------------------------------------------------


def write_big_instance(path: Path, study_uid: str, series_uid: str, size: int) -> str:
    """A pseudonymised multi-frame CT of about `size` bytes, its pixel data written in chunks
    so that making a 256 MB file costs no more memory than a 1 MB one."""
    template = pseudonymised_ct(path.parent / f".t-{path.name}", slices=1, size=16)[0]
    ds = pydicom.dcmread(template)
    del ds.PixelData
    frames = max(1, size // (512 * 512 * 2))
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    uid = pydicom.uid.generate_uid(prefix="2.25.")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    header = BytesIO()
    ds.save_as(header, enforce_file_format=True)
    length = frames * 512 * 512 * 2
    chunk = os.urandom(MB)
    with path.open("wb") as out:
        out.write(header.getvalue())
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        for start in range(0, length, MB):
            out.write(chunk[: min(MB, length - start)])
    return uid


def file_chunks(path: Path) -> Any:
    with path.open("rb") as source:
        while chunk := source.read(MB):
            yield chunk


def big_study(
    deployment: Deployment, folder: Path, total_mb: int, instance_mb: int, tag: str
) -> dict[str, float]:
    """Upload a study of `total_mb` in instances of `instance_mb`, then fetch it as the vendor.

    Returns MB/s each way; every instance fetched must hash to what was sent."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = pydicom.uid.generate_uid(prefix="2.25.")
    series_uid = pydicom.uid.generate_uid(prefix="2.25.")
    files: dict[str, Path] = {}
    for n in range(max(1, total_mb // instance_mb)):
        path = folder / f"{tag}-{n}.dcm"
        files[write_big_instance(path, study_uid, series_uid, instance_mb * MB)] = path
    sent = sum(p.stat().st_size for p in files.values())
    hospital = httpx.Client(
        base_url=deployment.url, headers=_auth(deployment.hospital_keys[0]), timeout=600
    )
    vendor = httpx.Client(
        base_url=deployment.url, headers=_auth(deployment.vendor_key), timeout=600
    )
    try:
        job = hospital.post(
            "/jobs",
            json={
                "product_id": tissue_volume.PRODUCT_ID,
                "study_uid": study_uid,
                "patient_pseudonym": "PBIG",
                "idempotency_key": f"big-{tag}",
                "priority": "stat",
            },
        ).json()
        started = time.perf_counter()
        for uid, path in files.items():
            hospital.put(
                f"/jobs/{job['id']}/inputs/{uid}", content=file_chunks(path)
            ).raise_for_status()
        up = time.perf_counter() - started
        hospital.post(f"/jobs/{job['id']}/ready", json={"instances": len(files)}).raise_for_status()
        claim = vendor.post("/jobs/claim", json={"wait_seconds": 5}).json()
        assert claim["job"]["id"] == job["id"], "the stat job comes first"
        lease = {"X-Lease-Token": claim["lease_token"]}
        started = time.perf_counter()
        for uid, path in files.items():
            digest = hashlib.sha256()
            with vendor.stream("GET", f"/jobs/{job['id']}/inputs/{uid}", headers=lease) as body:
                body.raise_for_status()
                for chunk in body.iter_bytes(MB):
                    digest.update(chunk)
            assert digest.hexdigest() == _sha256(path), f"instance {uid} changed in transit"
        down = time.perf_counter() - started
        vendor.post(
            f"/jobs/{job['id']}/fail",
            json={"lease_token": claim["lease_token"], "reason": "benchmark"},
        ).raise_for_status()
    finally:
        hospital.close()
        vendor.close()
        for path in files.values():
            path.unlink()
    return {
        "mb": round(sent / MB, 1),
        "upload_mb_per_s": round(sent / MB / up, 1),
        "download_mb_per_s": round(sent / MB / down, 1),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent neither idle nor waiting for I/O."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(pids: set[int]) -> dict[str, float]:
    """CPU seconds used so far by the replicas (`pids`), PostgreSQL's server processes, nginx
    and this load generator; the whole machine's busy time too, so the rest (the kernel
    writing blobs, other processes) is what is left."""
    parts = {"replicas": 0.0, "postgresql": 0.0, "nginx": 0.0, "load_generator": 0.0}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        pid = int(entry.name)
        if pid in pids:
            part = "replicas"
        elif pid == me:
            part = "load_generator"
        elif command.startswith(("postgres", "postmaster")):
            part = "postgresql"
        elif command.startswith("nginx"):
            part = "nginx"
        else:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parts[part] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    parts["machine"] = machine_busy_seconds()
    return parts


def yardstick_ms(sr: Path, study_uid: str) -> float:
    """The machine's own speed at the start of a round: milliseconds for the exchange's check
    of one result SR (pydicom reading its content tree; 2.4 ms on the machine of the figures
    in docs/benchmarks.md), median of 50. On a shared virtual machine it drifted by more than
    half within minutes, and by several times from one day to the next; a tight arithmetic
    loop did not show it."""
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        check_result(sr, study_instance_uid=study_uid)
        timings.append(time.perf_counter() - started)
    return round(1000 * statistics.median(timings), 2)


def handoff_us(round_trips: int = 300, batches: int = 7) -> float:
    """The machine's price of waking a thread on another core: microseconds per handoff of a
    byte between two threads pinned to two cores, over pipes, each blocked in a read until the
    other writes (median of the batches; on one core, the same-core price). An unpinned
    replica's request threads and event loop hand the interpreter lock to each other across
    cores hundreds of times per job; a host can run Python at its usual speed (the SR
    yardstick) and still wake threads slowly, and then the replicas' kernel time per job grows
    (docs/benchmarks.md, 2026-12-03: 32–38 µs across cores, 1.2 on one)."""
    cores = sorted(os.sched_getaffinity(0))
    there_r, there_w = os.pipe()
    back_r, back_w = os.pipe()

    def echo() -> None:
        os.sched_setaffinity(0, {cores[-1]})
        for _ in range(round_trips * batches):
            os.write(back_w, os.read(there_r, 1))

    partner = threading.Thread(target=echo)
    partner.start()
    os.sched_setaffinity(0, {cores[0]})
    timings = []
    try:
        for _ in range(batches):
            started = time.perf_counter()
            for _ in range(round_trips):
                os.write(there_w, b"x")
                os.read(back_r, 1)
            timings.append((time.perf_counter() - started) / (2 * round_trips))
    finally:
        os.sched_setaffinity(0, set(cores))
        partner.join()
        for fd in (there_r, there_w, back_r, back_w):
            os.close(fd)
    return round(1e6 * statistics.median(timings), 1)


def replica_switches_and_kernel(pids: set[int]) -> tuple[int, float]:
    """Context switches (voluntary and not, over every thread) and kernel CPU seconds the
    replicas have had so far."""
    switches, kernel = 0, 0.0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                status = (task / "status").read_text()
            except OSError:  # a thread ended meanwhile
                continue
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        stat = Path(f"/proc/{pid}/stat").read_text()
        kernel += int(stat.rsplit(")", 1)[1].split()[12]) / os.sysconf("SC_CLK_TCK")
    return switches, kernel


def measured_round(deployment: Deployment, studies: list[SmallStudy], sr: Path) -> dict[str, float]:
    """One measured round of small jobs, with where the CPU went, per job: the replicas',
    PostgreSQL's, nginx's, the load generator's and the rest of the machine's (the kernel).
    On two cores these explain the three-replica ratio."""
    pids = {r.process.pid for r in deployment.replicas if r.process is not None}
    speed = yardstick_ms(sr, studies[0].study_uid)
    handoff = handoff_us()
    before = cpu_by_process(pids)
    switched, in_kernel = replica_switches_and_kernel(pids)
    figures = small_jobs(deployment, studies)
    used = {part: seconds - before[part] for part, seconds in cpu_by_process(pids).items()}
    switches_after, kernel_after = replica_switches_and_kernel(pids)
    jobs, seconds = figures["jobs"], figures["seconds"]
    outside = sum(v for part, v in used.items() if part not in ("machine", "replicas"))
    return {
        **figures,
        "yardstick_ms": speed,
        "handoff_us": handoff,
        "replicas_cpu_ms_per_job": round(1000 * used["replicas"] / jobs, 1),
        "replicas_kernel_cpu_ms_per_job": round(1000 * (kernel_after - in_kernel) / jobs, 1),
        "replica_switches_per_job": round((switches_after - switched) / jobs / len(pids)),
        "postgresql_cpu_ms_per_job": round(1000 * used["postgresql"] / jobs, 1),
        "nginx_cpu_ms_per_job": round(1000 * used["nginx"] / jobs, 1),
        "load_generator_cpu_ms_per_job": round(1000 * used["load_generator"] / jobs, 1),
        "rest_cpu_ms_per_job": round(
            1000 * max(used["machine"] - used["replicas"] - outside, 0.0) / jobs, 1
        ),
        "machine_cpu_ms_per_job": round(1000 * used["machine"] / jobs, 1),
        "machine_busy_cores": round(used["machine"] / seconds, 2),
    }


# main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1500, help="small jobs per set-up")
    parser.add_argument("--bulk-mb", type=int, default=100, help="study size for MB/s")
    parser.add_argument("--big-mb", type=int, default=1024, help="largest study for memory")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="small-jobs runs per set-up, each on a fresh deployment; the median is reported "
        "(two cores shared with everything else make single runs vary by about 10 %%)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="each replica on one core of its own (aifi exchange --cpu), the cores taken in "
        "turn: a lone replica then switches far less; three on two cores share one. Adds a "
        "set-up of one pinned replica per core, the layout docs/deploy.md recommends",
    )
    parser.add_argument("--json", type=Path, help="write the figures and targets here")
    args = parser.parse_args()
    # Wide enough for the CPU table when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 132)
    work = Path(tempfile.mkdtemp(prefix="aifi-bench-"))
    console.print(f"making {args.jobs} small studies and their results …")
    studies = make_small_studies(work / "studies", args.jobs)
    warm_up = make_small_studies(work / "warm-up", WARM_UP_JOBS)
    sr = work / "yardstick-sr.dcm"
    sr.write_bytes(studies[0].sr)
    postgres: PostgresServer = start_postgres()
    figures: dict[str, Any] = {"jobs": args.jobs, "cpus": os.cpu_count(), "pinned": args.pin}
    setups = [("sqlite_1", False, 1), ("postgresql_1", True, 1), ("postgresql_3", True, 3)]
    cores = len(os.sched_getaffinity(0))
    if args.pin and cores not in (1, 3):
        # The layout deploy.md recommends: one replica per core, each pinned to its own.
        setups.append((f"postgresql_{cores}", True, cores))
    figures["setups"] = [name for name, _, _ in setups]
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in setups}
    bulk: dict[str, dict[str, float]] = {}
    try:
        # Round by round, every set-up in turn: the machine's speed drifts over minutes, and
        # the three-replica ratio should compare runs made under the same conditions.
        for round_number in range(args.rounds):
            for name, use_postgres, replicas in setups:
                label = f"{name}_{round_number}"
                database = postgres.create_database(label) if use_postgres else None
                deployment = deploy(label, work / label, database, replicas, pin=args.pin)
                try:
                    console.print(f"{name}: small jobs, round {round_number + 1} …")
                    # A fresh replica compiles its statements and opens its connections on
                    # its first requests: a warm-up round first, then the measured one.
                    small_jobs(deployment, warm_up, "warm-up")
                    rounds[name].append(measured_round(deployment, studies, sr))
                    if round_number == 0:
                        console.print(f"{name}: a {args.bulk_mb} MB study up and down …")
                        bulk[name] = big_study(
                            deployment, work / "bulk", args.bulk_mb, 10, f"bulk-{name}"
                        )
                finally:
                    deployment.stop()
        for name, _, _ in setups:
            figures[name] = {**median_round(rounds[name]), **bulk[name]}
        figures["memory"] = memory_growth(work / "memory", args.big_mb, console)
    finally:
        postgres.destroy()
        shutil.rmtree(work, ignore_errors=True)

    pairs = list(zip(rounds["postgresql_1"], rounds["postgresql_3"], strict=True))
    figures["three_replicas_speedup_rounds"] = [
        round(three["jobs_per_s"] / one["jobs_per_s"], 2) for one, three in pairs
    ]
    figures["three_replicas_ceiling_rounds"] = [
        speedup_ceiling(one, three, figures["cpus"]) for one, three in pairs
    ]
    speedup = round(statistics.median(figures["three_replicas_speedup_rounds"]), 2)
    figures["three_replicas_ceiling"] = round(
        statistics.median(figures["three_replicas_ceiling_rounds"]), 2
    )
    if len(setups) > 3:
        per_core = setups[3][0]
        figures["one_per_core_speedup_rounds"] = [
            round(many["jobs_per_s"] / one["jobs_per_s"], 2)
            for one, many in zip(rounds["postgresql_1"], rounds[per_core], strict=True)
        ]
    one = figures["postgresql_1"]["jobs_per_s"]
    growth = figures["memory"]["growth_mb"]
    targets = {
        "sqlite_one_replica_jobs_per_s": _target(
            figures["sqlite_1"]["jobs_per_s"], TARGET_JOBS_PER_S, higher=True
        ),
        "postgresql_one_replica_jobs_per_s": _target(one, TARGET_JOBS_PER_S, higher=True),
        "three_replicas_speedup": _target(round(speedup, 2), TARGET_SPEEDUP, higher=True),
        "replica_memory_growth_mb": _target(growth, TARGET_MEMORY_GROWTH_MB, higher=False),
    }
    figures["targets"] = targets
    report(console, figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def memory_growth(folder: Path, big_mb: int, console: Console) -> dict[str, Any]:
    """One replica (embedded set-up) takes and serves ever larger studies; its peak RSS."""
    deployment = deploy("memory", folder, None, 1)
    process = deployment.replicas[0].process
    assert process is not None
    sizes = [10, 100, big_mb] if big_mb > 100 else [10, big_mb]
    peaks: dict[str, float] = {}
    try:
        for size in sizes:
            console.print(f"memory: a {size} MB study up and down …")
            big_study(deployment, folder / "data", size, min(size, 256), f"mem-{size}")
            peaks[f"{size}MB"] = round(peak_rss_mb(process.pid), 1)
    finally:
        deployment.stop()
    first, last = peaks[f"{sizes[0]}MB"], peaks[f"{sizes[-1]}MB"]
    return {"peak_rss_mb": peaks, "growth_mb": round(last - first, 1)}


CPU_FIGURES = (
    "yardstick_ms",
    "handoff_us",
    "replicas_cpu_ms_per_job",
    "replicas_kernel_cpu_ms_per_job",
    "replica_switches_per_job",
    "postgresql_cpu_ms_per_job",
    "nginx_cpu_ms_per_job",
    "load_generator_cpu_ms_per_job",
    "rest_cpu_ms_per_job",
    "machine_cpu_ms_per_job",
    "machine_busy_cores",
)


def median_round(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """A set-up's figures: the median jobs/s, every round's, and where the CPU went in the
    median round."""
    middle = sorted(rounds, key=lambda r: r["jobs_per_s"])[len(rounds) // 2]
    return {
        "jobs_per_s": round(statistics.median(r["jobs_per_s"] for r in rounds), 1),
        "jobs_per_s_rounds": [r["jobs_per_s"] for r in rounds],
        "yardstick_ms_rounds": [r["yardstick_ms"] for r in rounds],
        "handoff_us_rounds": [r["handoff_us"] for r in rounds],
        **{figure: middle[figure] for figure in CPU_FIGURES},
    }


def speedup_ceiling(one: dict[str, float], three: dict[str, float], cpus: int | None) -> float:
    """The three-replica speed-up this machine allowed in one round, had its cores been fully
    busy.

    Three replicas share the cores with PostgreSQL, nginx, the load generator and the kernel;
    one replica is bound by its own core. So the ceiling is the cores × a lone replica's CPU
    per job / the whole machine's CPU per job with three — the core count only if nothing
    but the replicas used the cores.
    """
    machine = three["machine_cpu_ms_per_job"]
    return round((cpus or 1) * one["replicas_cpu_ms_per_job"] / machine, 2) if machine else 0.0


def _target(measured: float, target: float, *, higher: bool) -> dict[str, Any]:
    met = measured >= target if higher else measured <= target
    return {"measured": measured, "target": target, "met": met}


def _by_setup(title: str, figures: dict[str, Any], columns: dict[str, str]) -> Table:
    """A table with a row per set-up; `columns` maps each heading to its figure's key."""
    table = Table(title=title)
    table.add_column("set-up")
    for heading in columns:
        table.add_column(heading)
    for name in figures["setups"]:
        values = [figures[name][key] for key in columns.values()]
        shown = [" ".join(map(str, v)) if isinstance(v, list) else str(v) for v in values]
        table.add_row(name, *shown)
    return table


def report(console: Console, figures: dict[str, Any]) -> None:
    pinned = ", each replica pinned to a core" if figures["pinned"] else ""
    title = f"exchange load ({figures['jobs']} small jobs, {figures['cpus']} CPUs{pinned})"
    throughput = {
        "jobs/s (median)": "jobs_per_s",
        "rounds": "jobs_per_s_rounds",
        "upload MB/s": "upload_mb_per_s",
        "download MB/s": "download_mb_per_s",
    }
    cpu = {
        "replicas": "replicas_cpu_ms_per_job",
        "of it in the kernel": "replicas_kernel_cpu_ms_per_job",
        "PostgreSQL": "postgresql_cpu_ms_per_job",
        "nginx": "nginx_cpu_ms_per_job",
        "load generator": "load_generator_cpu_ms_per_job",
        "the rest": "rest_cpu_ms_per_job",
        "whole machine": "machine_cpu_ms_per_job",
        "cores busy": "machine_busy_cores",
    }
    console.print(_by_setup(title, figures, throughput))
    console.print(_by_setup("where the CPU went, ms per job (the median round)", figures, cpu))
    speed = {
        "ms per result check at each round's start": "yardstick_ms_rounds",
        "µs per wake-up across cores": "handoff_us_rounds",
        "context switches per job, each replica": "replica_switches_per_job",
    }
    console.print(_by_setup("the machine's own speed", figures, speed))
    console.print(f"replica peak memory by study size: {figures['memory']['peak_rss_mb']}")
    for name, target in figures["targets"].items():
        mark = "[green]met[/]" if target["met"] else "[red]not met[/]"
        console.print(f"{name}: {target['measured']} (target {target['target']}) {mark}")
    console.print(
        "three replicas / one, round by round: "
        f"{figures['three_replicas_speedup_rounds']}; were all {figures['cpus']} cores busy, "
        f"at most {figures['three_replicas_ceiling_rounds']} ({figures['cpus']} × a lone "
        "replica's ms per job / the whole machine's ms per job with three)"
    )
    if "one_per_core_speedup_rounds" in figures:
        console.print(
            f"one pinned replica per core ({figures['setups'][3]}) / one, round by round: "
            f"{figures['one_per_core_speedup_rounds']} (no target: the layout deploy.md "
            "recommends, for comparison)"
        )


if __name__ == "__main__":
    sys.exit(main())
