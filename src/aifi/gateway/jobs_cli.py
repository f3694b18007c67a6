"""`aifi gateway-jobs --config gateway.yaml`: the jobs the gateway has not done with, what each
waits for and why; `--all` the latest jobs, `--study UID` one study's (`aifi.gateway.job_list`).

It reads the gateway's state in its workdir, on the gateway's host, as the gateway's service
account, beside a running gateway; it writes nothing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from aifi.gateway.cli_options import ConfigOption, settings_or_exit
from aifi.gateway.job_list import JobStatus, NoticeStatus, ago, job_statuses
from aifi.gateway.workdir_reads import WorkdirNotReady, databases_in_place

_STATE_STYLE = {
    "pending": "yellow",
    "submitted": "yellow",
    "delivered": "green",
    "ended": "red",
    "refused": "red",
    "skipped": "dim",
}
_NOTICE_STYLE = {"sent": "green", "retrying": "yellow", "not tried": "yellow", "failed": "red"}


def _notices(notices: list[NoticeStatus]) -> str:
    lines = []
    for notice in notices:
        what = {"no-result": "no result", "delayed": "delay"}.get(notice.kind, "result")
        style = _NOTICE_STYLE[notice.outcome]
        tries = f", {notice.tries} tr{'y' if notice.tries == 1 else 'ies'}" if notice.tries else ""
        line = f"{notice.channel} ({what}): [{style}]{notice.outcome}[/]{tries}"
        if notice.outcome != "sent" and notice.detail:
            line += f"\n  {notice.detail}"
        lines.append(line)
    return "\n".join(lines)


#: The narrowest a column beside the job's still reads at: a product id, "submitted (STAT)",
#: a few words of a reason to a line. A terminal with less room for them than this (an
#: 80-column SSH session) gets a block per job instead of the table: the job column, the
#: study's UID unwrapped, would leave them a few characters each, or none.
READABLE_COLUMN = 20


def _state(job: JobStatus) -> str:
    state = job.state + (" (STAT)" if job.priority == "stat" else "")
    return f"[{_STATE_STYLE.get(job.state, '')}]{state}[/]"


def _job_cell(job: JobStatus, now: float) -> str:
    exchange_job = job.exchange_job_id or "(not at the exchange)"
    return f"{job.id}  {ago(now - job.created_at)}\n{exchange_job}\nstudy {job.study_uid}"


def _table_fits(jobs: list[JobStatus], now: float, width: int) -> bool:
    """Whether the table, its job column never wrapped, leaves each of the other five columns
    READABLE_COLUMN characters (each column's padding and border take 3 more, the last 1)."""
    job_column = max(len(line) for job in jobs for line in _job_cell(job, now).splitlines())
    return width >= job_column + 5 * READABLE_COLUMN + 6 * 3 + 1


def _table(jobs: list[JobStatus], title: str, now: float) -> Table:
    table = Table(title=title, show_lines=True)
    table.add_column("job", no_wrap=True)
    for column in ("product", "state", "waiting for, or how it ended", "PACS", "notices"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        said = job.waiting_for or job.reason
        if job.waiting_for and job.reason:
            said += f"\nlast: {job.reason}"
        table.add_row(
            _job_cell(job, now),
            job.product_id,
            _state(job),
            said,
            "\n".join(job.pacs),
            "\n".join(filter(None, (_notices(job.notices), _told_late(job)))),
        )
    return table


def _told_late(job: JobStatus) -> str:
    """The order the RIS holds for a job told late: an engineer looks it up by this id."""
    return f"told late: RIS order {job.delay_announced_as}" if job.delay_announced_as else ""


def _blocks(jobs: list[JobStatus], title: str, now: float) -> Group:
    """The table's facts folded for a narrow terminal: a heading line per job (its id, state,
    product and age), then one labelled line per fact, long values folded under their label."""
    shown: list[RenderableType] = [Text(title, style="italic", justify="center")]
    for job in jobs:
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="dim", no_wrap=True)
        facts.add_column(overflow="fold")
        facts.add_row("exchange job", job.exchange_job_id or "(not at the exchange)")
        facts.add_row("study", job.study_uid)
        if job.waiting_for:
            facts.add_row("waiting for", job.waiting_for)
        if job.reason:
            facts.add_row("last" if job.waiting_for else "how it ended", job.reason)
        if job.pacs:
            facts.add_row("PACS", "\n".join(job.pacs))
        if job.notices:
            facts.add_row("notices", _notices(job.notices))
        if job.delay_announced_as:
            facts.add_row("told late", f"RIS order {job.delay_announced_as}")
        heading = f"[bold]job {job.id}[/]  {_state(job)}  {job.product_id}"
        shown += [
            Text(""),
            Text.from_markup(f"{heading}  [dim]{ago(now - job.created_at)}[/]", overflow="fold"),
            Padding(facts, (0, 0, 0, 2)),
        ]
    return Group(*shown)


def gateway_jobs(
    config: ConfigOption,
    everything: Annotated[
        bool, typer.Option("--all", help="The latest jobs, whatever their state.")
    ] = False,
    study: Annotated[
        str | None, typer.Option(help="Only this Study Instance UID (the hospital's own).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many jobs.", min=1)] = 50,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the jobs here as JSON.")
    ] = None,
) -> None:
    """List the jobs the gateway has not done with: to be sent, at the exchange, or home and
    not yet in every PACS, or with a notice still queued; what each waits for, and why. STAT
    jobs first, then the oldest. With --all, the latest jobs whatever their state."""
    settings = settings_or_exit(config)
    console = Console()
    now = time.time()
    try:
        with databases_in_place(settings.workdir, ("state.db",)) as (state,):
            jobs = job_statuses(state, everything=everything, study_uid=study, limit=limit, now=now)
    except (WorkdirNotReady, OSError, sqlite3.Error) as exc:
        console.print(f"[red]error: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from exc
    if json_file is not None:
        try:
            json_file.write_text(json.dumps([asdict(job) for job in jobs], indent=2))
        except OSError as exc:
            console.print(f"[red]error: --json {json_file}: {exc}[/]", soft_wrap=True)
            raise typer.Exit(1) from exc
    if not jobs:
        console.print(
            "no jobs" if everything or study else "none: every job is done with", soft_wrap=True
        )
        return
    title = (
        f"jobs of study {study}"
        if study
        else "the latest jobs"
        if everything
        else "jobs not done with (STAT first, then the oldest)"
    )
    if _table_fits(jobs, now, console.width):
        console.print(_table(jobs, title, now))
    else:
        console.print(_blocks(jobs, title, now))
    if len(jobs) == limit:
        console.print(f"the first {limit} shown: --limit N for more", soft_wrap=True)
