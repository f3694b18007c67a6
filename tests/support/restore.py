"""A gateway's disk lost and put back from a backup, and its jobs brought home as the results
thread brings them: steps the backup and unknown-job tests share."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from aifi.gateway.backup import restore
from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from support.hospital import Hospital


def lose_the_disk(hospital: Hospital) -> Path:
    """The gateway's disk is gone: its workdir moved out of reach. The secret comes back from
    the key escrow, as the restore asks; returns where the old workdir went."""
    hospital.close()
    workdir = load_config(hospital.path).workdir
    lost = workdir.with_name("lost-disk")
    workdir.rename(lost)
    workdir.mkdir(mode=0o700)
    shutil.copy(lost / "secret.key", workdir / "secret.key")
    return lost


def restored(hospital: Hospital, backup: Path) -> Gateway:
    """The backup put back into the hospital's workdir, and a gateway opened on it."""
    restore(load_config(hospital.path), backup)
    hospital.gateway = hospital.open()
    return hospital.gateway


def until_ended(hospital: Hospital, exchange_job_id: str) -> dict[str, Any]:
    """Wait for the vendor to end the job; the exchange's job as it ended, listed with its
    results as the gateway lists it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ended = {job["id"]: job for job in hospital.gateway.client.ended_jobs(wait=1)}
        if exchange_job_id in ended:
            return ended[exchange_job_id]
    raise AssertionError(f"exchange job {exchange_job_id} did not end within 60 s")


def bring_home(hospital: Hospital, exchange_job_id: str) -> dict[str, Any]:
    """Wait for the vendor to end the job, and bring it home as the results thread does:
    collected, then acknowledged. The exchange's job as it ended."""
    job = until_ended(hospital, exchange_job_id)
    assert hospital.gateway.collect(job)
    hospital.gateway.acknowledge([exchange_job_id])
    assert hospital.gateway.client.job(exchange_job_id)["acknowledged_at"] is not None
    return job
