"""`aifi gateway-backup --config gateway.yaml --to FOLDER`: a consistent copy of a gateway's
databases while it runs, for the hospital's backup to keep; `aifi gateway-restore --config
gateway.yaml --from FOLDER` puts one back on a new disk (`aifi.gateway.backup`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from aifi.gateway.backup import (
    BackupError,
    back_up,
    backup_bytes,
    planned_bytes,
    restore,
)
from aifi.gateway.cli_options import ConfigOption, settings_or_exit


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def gateway_backup(
    config: ConfigOption,
    to: Annotated[
        Path, typer.Option(help="A new, or empty, folder for this backup (one per backup).")
    ],
    spool: Annotated[
        bool,
        typer.Option(
            "--spool/--no-spool",
            help="Copy the spool (instances as received) too; otherwise back up "
            "`workdir/spool/` with the hospital's own file backup, after this command.",
        ),
    ] = False,
) -> None:
    """Copy a gateway's databases (state, vault, disclosure log), each as one consistent
    moment, while the gateway runs; the hospital's backup then keeps the folder. The
    pseudonymisation secret is never copied: it belongs in the key escrow."""
    settings = settings_or_exit(config)
    console = Console()
    try:
        with _bar(console) as bar:
            task = bar.add_task("backing up", total=planned_bytes(settings, spool=spool))
            manifest = back_up(settings, to, spool=spool, progress=lambda n: bar.advance(task, n))
            done = sum(item.size for item in manifest.files)  # a copy holds no free pages
            bar.update(task, total=done, completed=done)
    except (BackupError, OSError) as exc:
        console.print(f"[red]error: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from exc
    table = Table(title=f"backup of {manifest.hospital}'s gateway, {manifest.taken_at[:19]} UTC")
    for column in ("file", "bytes", "SHA-256"):
        table.add_column(column, overflow="fold")
    for item in manifest.databases:
        table.add_row(item.name, f"{item.size:,}", item.sha256)
    if manifest.spool is not None:
        table.add_row(
            f"spool/ ({len(manifest.spool)} files)", f"{sum(f.size for f in manifest.spool):,}", ""
        )
    console.print(table)
    jobs = ", ".join(f"{n} {state}" for state, n in sorted(manifest.jobs.items())) or "none"
    console.print(f"jobs: {jobs}", soft_wrap=True)
    console.print(
        f"disclosure log's newest entry: {manifest.disclosure_anchor or 'none'}; written to {to}",
        soft_wrap=True,
    )


def gateway_restore(
    config: ConfigOption,
    backup: Annotated[Path, typer.Option("--from", help="A folder `aifi gateway-backup` wrote.")],
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Move databases already in the workdir aside (never deleted)."
        ),
    ] = False,
) -> None:
    """Put a backup back into the gateway's workdir (the gateway stopped). At its next start
    the gateway checks the jobs the backup held as sent with the exchange; send the studies
    received after the backup again from the PACS."""
    settings = settings_or_exit(config)
    console = Console()
    try:
        with _bar(console) as bar:
            task = bar.add_task("checking and restoring", total=backup_bytes(backup))
            restored = restore(
                settings, backup, replace=replace, progress=lambda n: bar.advance(task, n)
            )
    except (BackupError, OSError) as exc:
        console.print(f"[red]error: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from exc
    taken = restored.manifest.taken_at[:19].replace("T", " ")
    console.print(f"restored {settings.workdir} from the backup taken at {taken} UTC")
    if restored.replaced:
        console.print(
            "what it replaced (never deleted) is in "
            + ", then ".join(str(folder) for folder in restored.replaced),
            soft_wrap=True,
        )
    jobs = ", ".join(f"{n} {state}" for state, n in sorted(restored.jobs.items())) or "none"
    console.print(f"jobs: {jobs}", soft_wrap=True)
    if restored.instances_missing:
        console.print(
            f"[yellow]{restored.instances_missing} instance(s) of studies still held are not "
            "in the spool: put the spool back from the hospital's file backup before starting "
            "the gateway, or send those studies again from the PACS[/]",
            soft_wrap=True,
        )
    else:  # said either way: the engineer need not wonder whether the spool was looked at
        console.print(
            "0 instances missing: every instance of the studies still held is in the spool",
            soft_wrap=True,
        )
    console.print(
        f"[bold]next:[/] start the gateway, then send the studies the PACS sent it after "
        f"{taken} UTC again (the exchange keeps what was sent then, and the gateway finds it)",
        soft_wrap=True,
    )
