"""A national exchange as deployed, on one machine: PostgreSQL, an S3 store, three replicas
behind nginx, ten hospital uploaders and four vendor workers, each its own process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pydicom

from aifi.products import tissue_volume
from scale.agents import read_events
from scale.exchange_api import OPERATOR_KEY, pseudonymised_ct
from scale.servers import (
    Nginx,
    PostgresServer,
    Replica,
    free_port,
    replica_env,
    start_nginx,
    wait_for,
)

VENDOR = "aifi-reference"
TESTS = Path(__file__).resolve().parent.parent


@dataclass
class Agent:
    name: str
    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, env: dict[str, str]) -> None:
        self.starts += 1
        out = self.log.with_suffix(f".{self.starts}.out").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scale.agents", *self.args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.log)


@dataclass
class Cluster:
    folder: Path
    postgres: PostgresServer
    database_url: str
    replicas: list[Replica]
    nginx: Nginx
    hospital_keys: dict[str, str]
    vendor_key: str
    plans: dict[str, list[dict[str, Any]]]
    uploaders: dict[str, Agent] = field(default_factory=dict)
    workers: list[Agent] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def planned(self) -> int:
        return sum(len(plan) for plan in self.plans.values())

    def agent_env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "PYTHONPATH": path}

    def start_uploader(self, hospital: str) -> Agent:
        agent = self.uploaders.get(hospital)
        if agent is None:
            plan = self.folder / f"plan-{hospital}.json"
            plan.write_text(json.dumps(self.plans[hospital]))
            workdir = self.folder / f"up-{hospital}"
            workdir.mkdir()
            agent = Agent(
                hospital,
                ["uploader", "--url", self.url, "--key", self.hospital_keys[hospital],
                 "--plan", str(plan), "--product", tissue_volume.PRODUCT_ID,
                 "--log", str(self.folder / f"{hospital}.log"), "--workdir", str(workdir)],
                self.folder / f"{hospital}.log",
            )  # fmt: skip
            self.uploaders[hospital] = agent
        agent.start(self.agent_env())
        return agent

    def start_worker(self, lease_seconds: float = 6.0) -> Agent:
        name = f"worker{len(self.workers)}"
        workdir = self.folder / name
        workdir.mkdir()
        agent = Agent(
            name,
            ["worker", "--url", self.url, "--key", self.vendor_key,
             "--lease-seconds", str(lease_seconds),
             "--log", str(self.folder / f"{name}.log"), "--workdir", str(workdir)],
            self.folder / f"{name}.log",
        )  # fmt: skip
        agent.start(self.agent_env())
        self.workers.append(agent)
        return agent

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the exchange's database directly, as the test's independent witness."""
        database = self.database_url.rsplit("/", 1)[1]
        with psycopg.connect(self.postgres.dsn(database), connect_timeout=5) as conn:
            return list(conn.execute(sql, params).fetchall())

    def states(self) -> dict[str, int]:
        try:
            return {s: n for s, n in self.query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        except psycopg.OperationalError:
            return {}  # PostgreSQL is restarting: no progress to report this instant

    def acknowledged(self) -> int:
        try:
            return int(
                self.query("SELECT COUNT(*) FROM jobs WHERE acknowledged_at IS NOT NULL")[0][0]
            )
        except psycopg.OperationalError:
            return -1

    def uploaders_done(self) -> bool:
        return all(
            a.process is not None and a.process.poll() is not None for a in self.uploaders.values()
        )

    def stop(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.terminate()
        for worker in self.workers:
            if worker.process is not None:
                try:
                    worker.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
        for uploader in self.uploaders.values():
            uploader.kill()
        self.nginx.stop()
        for replica in self.replicas:
            replica.stop()


def make_plans(folder: Path, hospitals: list[str], jobs_each: int) -> dict[str, list[Any]]:
    """Small pseudonymised CT studies (two 16×16 slices), one per planned job."""
    plans: dict[str, list[Any]] = {}
    for hospital in hospitals:
        plan = []
        for n in range(jobs_each):
            files = pseudonymised_ct(folder / "studies" / hospital / str(n), slices=2, size=16)
            headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
            plan.append(
                {
                    "key": f"{hospital}:{n}",
                    "study_uid": str(headers[0].StudyInstanceUID),
                    "files": [str(p) for p in files],
                    "uids": {
                        str(p): str(h.SOPInstanceUID) for p, h in zip(files, headers, strict=True)
                    },
                }
            )
        plans[hospital] = plan
    return plans


def start_cluster(
    folder: Path,
    postgres: PostgresServer,
    blob_url: str,
    *,
    replicas: int = 3,
    hospitals: int = 10,
    jobs_each: int = 50,
) -> Cluster:
    database_url = postgres.create_database("cluster")
    env = replica_env(database_url, blob_url, OPERATOR_KEY, lease_seconds="6")
    started = []
    for n in range(replicas):
        replica_dir = folder / f"replica{n}"
        replica_dir.mkdir(parents=True)
        started.append(Replica(free_port(), replica_dir, env))
    # The first replica migrates the database and creates the operator; the others join it.
    started[0].start()
    with contextlib.ExitStack() as failing:
        for replica in started:
            failing.callback(replica.stop)
        for replica in started[1:]:
            replica.launch()
        for replica in started[1:]:
            replica.wait_healthy()
        nginx = start_nginx(folder / "nginx", [r.port for r in started])
        failing.pop_all()
    operator = httpx.Client(
        base_url=nginx.url, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}, timeout=30
    )
    names = [f"hospital-{n:02d}" for n in range(hospitals)]
    keys = {name: _org(operator, name, "hospital") for name in names}
    vendor_key = _org(operator, VENDOR, "vendor")
    httpx.post(
        nginx.url + "/products",
        json=tissue_volume.manifest(VENDOR),
        headers={"Authorization": f"Bearer {vendor_key}"},
        timeout=60,
    ).raise_for_status()
    for key in keys.values():
        httpx.post(
            nginx.url + "/subscriptions",
            json={"product_id": tissue_volume.PRODUCT_ID},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ).raise_for_status()
    operator.close()
    plans = make_plans(folder, names, jobs_each)
    return Cluster(folder, postgres, database_url, started, nginx, keys, vendor_key, plans)


def _org(client: httpx.Client, org_id: str, kind: str) -> str:
    response = client.post("/organisations", json={"id": org_id, "name": org_id, "kind": kind})
    response.raise_for_status()
    return str(response.json()["api_key"])


def wait_until_fetched(cluster: Cluster, timeout: float) -> None:
    wait_for(lambda: cluster.uploaders_done(), timeout, "every hospital to fetch its outcomes", 0.5)
