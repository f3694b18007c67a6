"""`aifi gateway-unknown-jobs --config gateway.yaml`: the ended exchange jobs of this hospital
that its gateway has no record of, and `--adopt` / `--let-go` to decide for them
(`aifi.gateway.unknown_jobs`)."""

from __future__ import annotations

import getpass
import os
import sqlite3
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from aifi.gateway.cli_options import ConfigOption, settings_or_exit
from aifi.gateway.unknown_jobs import UnknownJob, UnknownJobsError, decide, unknown_jobs
from aifi.http import ExchangeHTTPError

_DECISION = {"adopt": "adopt", "let_go": "let go"}


def _who() -> str:
    """Who runs the command: the login behind `sudo -u aifi`, as the guide runs it, not the
    service account."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _table(jobs: list[UnknownJob]) -> Table:
    table = Table(title="ended exchange jobs this gateway has no record of")
    table.add_column("exchange job", no_wrap=True)  # whole, to be copied into --adopt
    for column in ("product", "ended", "instances", "study (from the vault)"):
        table.add_column(column, overflow="fold")
    table.add_column("decided", overflow="fold")
    for job in jobs:
        study = (
            f"{job.study_uid}\npatient {job.patient_id}, accession {job.accession_number or '-'}"
            if job.study_uid is not None
            else "[yellow]not in the vault[/]"
        )
        decided = _DECISION[job.decision] if job.decision else ""
        table.add_row(
            job.exchange_job_id,
            job.product_id,
            f"{job.state} {job.ended_at[:19].replace('T', ' ')}",
            str(job.instances),
            study,
            f"{decided}: {job.note}" if job.note else decided,
        )
    return table


def gateway_unknown_jobs(
    config: ConfigOption,
    adopt: Annotated[
        list[str] | None,
        typer.Option(
            help="Adopt this exchange job: its results come home to the PACS as any job's "
            "(its study must be in the vault). Repeat for more.",
        ),
    ] = None,
    let_go: Annotated[
        list[str] | None,
        typer.Option(
            "--let-go",
            help="Let this exchange job go: acknowledged at the exchange, its results not "
            "brought home. Repeat for more.",
        ),
    ] = None,
    by: Annotated[
        str,
        typer.Option(help="Who decides, for the record (default: the login name, or sudo's)."),
    ] = "",
) -> None:
    """List the ended exchange jobs of this hospital that the gateway has no record of (made
    by a disk a restore replaced, say), and adopt them or let them go. The gateway does what
    was decided when it next meets each job: within its poll wait while it runs, or at its
    next start. What went to each job is put on the disclosure log then."""
    settings = settings_or_exit(config)
    console = Console()
    decided = False
    try:
        if adopt or let_go:
            for job in decide(settings, adopt=adopt or [], let_go=let_go or [], by=by or _who()):
                verb = "adopt" if job.exchange_job_id in (adopt or []) else "let go"
                console.print(f"decided: {verb} exchange job {job.exchange_job_id}")
            decided = True
        jobs = unknown_jobs(settings)
    except (
        UnknownJobsError,
        ExchangeHTTPError,
        httpx.TransportError,
        OSError,
        sqlite3.Error,
    ) as exc:
        done = "the decisions are recorded, but listing the jobs failed: " if decided else ""
        failed = "" if isinstance(exc, UnknownJobsError) else "the exchange or the workdir: "
        console.print(f"[red]error: {done}{failed}{exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from exc
    if not jobs:
        console.print("none: every ended job the exchange lists for this hospital is known here")
        return
    console.print(_table(jobs))
    if any(job.decision is None for job in jobs):
        console.print(
            "decide with --adopt JOB (its study must be in the vault) or --let-go JOB; the "
            "gateway leaves these unacknowledged until then",
            soft_wrap=True,
        )
