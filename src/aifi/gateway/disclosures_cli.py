"""`aifi disclosures --config gateway.yaml --patient ID`: what the gateway did with a patient's
studies, for the hospital's privacy officer; `--verify` checks the log's hash chain, and with
`--anchor ENTRY:HASH` (from the gateway's journal) that no entry up to that one was replaced or
cut off. `--archive-before DATE --to FOLDER` moves older entries into files the hospital keeps
(`aifi.gateway.disclosure_archive`); `--archive FILE` reads such a file back, for a patient's
entries or, with `--verify`, to check it.

It reads the log in the gateway's workdir (`disclosures.db`), on the gateway's host, as the
gateway's service account (the file is 0600); a running gateway may keep writing meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aifi.gateway.cli_options import ConfigOption, settings_or_exit
from aifi.gateway.disclosure_archive import archive_disclosures, read_archive, verify_archive
from aifi.gateway.disclosures import (
    Anchor,
    ArchivedRun,
    Disclosure,
    DisclosureLog,
    NotRecorded,
    as_json,
)


def disclosures(
    config: ConfigOption,
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
    archive_before: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
            help="Move the entries written before this moment (UTC) into files in --to, "
            "when the hospital's retention for this log has run out.",
        ),
    ] = None,
    to: Annotated[
        Path | None, typer.Option(help="The folder --archive-before writes its files to.")
    ] = None,
    archive: Annotated[
        list[Path] | None,
        typer.Option(
            help="An archive file --archive-before wrote, repeatable: its entries are shown "
            "with the log's, or with --verify checked against the log's record of it.",
        ),
    ] = None,
) -> None:
    """Show the gateway's disclosure log: each study sent to an AI product (to whom, when, as
    which pseudonym), each result re-identified, stored in a PACS or sent as a notice."""
    console = Console()
    settings = settings_or_exit(config)
    try:
        anchors = [Anchor.parse(text) for text in anchor or []]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if (archive_before is None) != (to is None):
        typer.echo("error: --archive-before and --to go together", err=True)
        raise typer.Exit(2)
    for file in archive or []:
        if not file.is_file():
            typer.echo(f"error: no archive file {file}", err=True)
            raise typer.Exit(2)
    path = settings.workdir / "disclosures.db"
    if not path.exists():
        typer.echo(f"error: no disclosure log at {path}: has this gateway run yet?", err=True)
        raise typer.Exit(2)
    log = DisclosureLog(path, settings.hospital, f"gateway {settings.dicom.ae_title}")
    try:
        if archive_before is not None and to is not None:
            _archive(console, log, archive_before, to)
            return
        if verify or anchors:
            _verify(console, log, anchors, archive or [])
            return
        # Oldest first, whatever order the files were given in (each entry once).
        found = {
            entry.seq: entry
            for entry in (
                *_archived_entries(archive or [], patient, study),
                *log.entries(patient_id=patient, study_uid=study),
            )
        }
        entries = [found[seq] for seq in sorted(found)]
        runs = log.archived()
        restores = log.restores()
    finally:
        log.close()
    for restore in restores:
        # A patient's answer must say where it may be incomplete.
        console.print(
            f"[yellow]the log was restored from a backup on {restore.at[:10]} (entry "
            f"{restore.seq}): {restore.detail}[/]",
            soft_wrap=True,
        )
    if runs and not archive:
        console.print(
            f"{sum(run.entries for run in runs)} entries written up to "
            f"{runs[-1].last_at[:10]} are in archive files, not shown: add --archive FILE "
            f"for each ({', '.join(Path(run.file).name for run in runs)})",
            soft_wrap=True,
        )
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


def _archived_entries(
    files: list[Path], patient: str | None, study: str | None
) -> list[Disclosure]:
    return [
        Disclosure(**entry)
        for file in files
        for entry in read_archive(file)
        if (patient is None or entry["patient_id"] == patient)
        and (study is None or entry["study_uid"] == study)
    ]


def _archive(console: Console, log: DisclosureLog, before: datetime, folder: Path) -> None:
    moment = before.replace(tzinfo=UTC) if before.tzinfo is None else before
    try:
        with console.status(f"archiving entries written before {moment:%Y-%m-%d %H:%M}"):
            runs = archive_disclosures(log, moment, folder)
    except (NotRecorded, OSError) as exc:
        console.print(f"[red]error: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from exc
    if not runs:
        console.print(f"nothing to archive: no entry before {moment.isoformat()} is left")
        return
    table = Table(title=f"{sum(run.entries for run in runs)} entries archived")
    for column in ("entries", "written from", "to", "file", "SHA-256"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(
            f"{run.first_seq}–{run.last_seq}", run.first_at[:16], run.last_at[:16], run.file,
            run.sha256,
        )  # fmt: skip
    console.print(table)
    console.print(
        "Keep the files, and these SHA-256s, in the hospital's archive for as long as its "
        "retention for this log says; the log keeps a record of each.",
        soft_wrap=True,
    )


def _verify(console: Console, log: DisclosureLog, anchors: list[Anchor], files: list[Path]) -> None:
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("verifying the hash chain", total=log.count())
        problems = log.verify(on_batch=lambda n: progress.advance(task, n), anchors=anchors)
    checked: list[ArchivedRun] = []
    for file in files:
        run, found = verify_archive(log, file, anchors)
        problems += found
        if run is not None:
            checked.append(run)
    if problems:
        console.print(f"[red]disclosure log: {len(problems)} problem(s)[/]")
        for problem in problems:
            console.print(f"  {problem}", soft_wrap=True)
        raise typer.Exit(1)
    runs = log.archived()
    # An anchor inside a run (not its last entry, which the record holds) is checked only
    # against the run's file.
    unchecked = [
        anchor
        for anchor in anchors
        for run in runs
        if run.first_seq <= anchor.seq < run.last_seq and run not in checked
    ]
    if unchecked:
        console.print(
            f"[yellow]not checked: {', '.join(str(a.seq) for a in unchecked)} fall in archive "
            "files not given; add --archive FILE for each[/]",
            soft_wrap=True,
        )
    held_count = len(anchors) - len(unchecked)
    held = f", {held_count} anchor(s) held" if held_count else ""
    archived = (
        f"; {sum(run.entries for run in runs)} more in {len(runs)} archive file(s), "
        f"{len(checked)} of them read back and checked"
        if runs
        else ""
    )
    console.print(
        f"[green]disclosure log intact: {log.count()} entries, hash chain verified"
        f"{held}{archived}[/]"
    )
    if (last := log.anchor()) is not None:
        console.print(f"newest entry's anchor (keep it off this host): {last}", soft_wrap=True)
