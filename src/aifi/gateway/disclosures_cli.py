"""`aifi disclosures --config gateway.yaml --patient ID`: what the gateway did with a patient's
studies, for the hospital's privacy officer; `--verify` checks the log's hash chain, and with
`--anchor ENTRY:HASH` (from the gateway's journal) that no entry up to that one was replaced or
cut off.

It reads the log in the gateway's workdir (`disclosures.db`), on the gateway's host, as the
gateway's service account (the file is 0600); a running gateway may keep writing meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aifi.gateway.config import ConfigError, load_config
from aifi.gateway.disclosures import Anchor, DisclosureLog, as_json


def disclosures(
    config: Annotated[Path, typer.Option("--config", "-c", help="The hospital's gateway YAML.")],
    patient: Annotated[
        str | None, typer.Option(help="Only this Patient ID (the hospital's own).")
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="Only this Study Instance UID (the hospital's own).")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the entries here as JSON.")
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Check the hash chain instead; exit 1 if any entry was tampered with."
        ),
    ] = False,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            help="ENTRY:HASH from the gateway's journal ('disclosure log anchor'), repeatable: "
            "that entry must still be in the log as written. Implies --verify.",
        ),
    ] = None,
) -> None:
    """Show the gateway's disclosure log: each study sent to an AI product (to whom, when, as
    which pseudonym), each result re-identified, stored in a PACS or sent as a notice."""
    console = Console()
    try:
        settings = load_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        anchors = [Anchor.parse(text) for text in anchor or []]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    path = settings.workdir / "disclosures.db"
    if not path.exists():
        typer.echo(f"error: no disclosure log at {path}: has this gateway run yet?", err=True)
        raise typer.Exit(2)
    log = DisclosureLog(path, settings.hospital, f"gateway {settings.dicom.ae_title}")
    try:
        if verify or anchors:
            _verify(console, log, anchors)
            return
        entries = log.entries(patient_id=patient, study_uid=study)
    finally:
        log.close()
    table = Table(title=f"{settings.hospital}: {len(entries)} entries")
    for column in ("#", "when (UTC)", "action", "patient", "study", "to", "outcome", "detail"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        outcome = "[green]success[/]" if entry.outcome == "success" else "[red]failure[/]"
        table.add_row(
            str(entry.seq),
            entry.at[:19].replace("T", " "),
            entry.action,
            entry.patient_id,
            entry.study_uid,
            entry.recipient,
            outcome,
            entry.detail,
        )
    console.print(table)
    if json_file is not None:
        json_file.write_text(as_json(entries))


def _verify(console: Console, log: DisclosureLog, anchors: list[Anchor]) -> None:
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("verifying the hash chain", total=log.count())
        problems = log.verify(on_batch=lambda n: progress.advance(task, n), anchors=anchors)
    if problems:
        console.print(f"[red]disclosure log: {len(problems)} problem(s)[/]")
        for problem in problems:
            console.print(f"  {problem}", soft_wrap=True)
        raise typer.Exit(1)
    held = f", {len(anchors)} anchor(s) held" if anchors else ""
    console.print(
        f"[green]disclosure log intact: {log.count()} entries, hash chain verified{held}[/]"
    )
    if (last := log.anchor()) is not None:
        console.print(f"newest entry's anchor (keep it off this host): {last}", soft_wrap=True)
