"""`aifi audit`: check the exchange's hash-chained access log, and archive its old entries.

Run it on the exchange host (or anywhere with read access to the database and, for archives,
the blob store): `verify` reads every entry in order, a batch at a time with a progress bar,
and reports any that was edited, removed or re-ordered; `archive` moves entries stored before
a date to files in the blob store; `archives` lists those files; `search` finds a patient's,
an organisation's or an object's entries in the table and the archives alike.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aifi.chain_anchor import Anchor
from aifi.exchange.audit import (
    Actor,
    AuditLog,
    ChainCheck,
    check_chain,
    linked_count,
    newest_anchor,
    unlinked_count,
)
from aifi.exchange.audit_archive import COLUMNS, AuditArchiver, archives, verify_archives
from aifi.exchange.audit_search import AuditQuery, search
from aifi.exchange.blobs import BlobStore, open_blob_store
from aifi.exchange.cli_options import DataDir, settings_or_exit
from aifi.exchange.clock import as_utc
from aifi.exchange.db import Database
from aifi.exchange.errors import ArchiveMissing, ExchangeError
from aifi.exchange.models import AuditArchive
from aifi.exchange.services import OPERATOR_ID
from aifi.exchange.settings import ExchangeSettings

app = typer.Typer(help="The exchange's audit log.", no_args_is_help=True)
#: Who a search run on the exchange host is logged as: the national operator (the entry's
#: detail names the host's user).
HOST_OPERATOR = Actor(organisation_id=OPERATOR_ID, role="operator")
#: How a moment is written on the command line (UTC).
_MOMENT = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]

DatabaseUrl = Annotated[
    str | None, typer.Option(help="Or its database URL (default AIFI_DATABASE_URL).")
]
BlobUrl = Annotated[
    str | None,
    typer.Option(
        help="Its blob store, where archives are (default AIFI_BLOB_URL, or the data folder's)."
    ),
]


@app.callback()
def audit() -> None:
    """The exchange's hash-chained access log (NEN 7513)."""


def _database(settings: ExchangeSettings, database_url: str | None) -> Database:
    return Database(database_url or settings.resolved_database_url())


def _blobs(settings: ExchangeSettings, blob_url: str | None) -> BlobStore:
    return open_blob_store(blob_url or settings.resolved_blob_url(), settings.upload_spool)


@app.command()
def verify(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    read_archives: Annotated[
        bool,
        typer.Option(
            "--archives",
            help="Also read every archive file back from the blob store and check each entry.",
        ),
    ] = False,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            help="POSITION:HASH from a replica's journal ('audit chain anchor'), repeatable: "
            "that entry must still be in the chain as written.",
        ),
    ] = None,
) -> None:
    """Verify the hash chain; exit 1 and list the problems when any entry was tampered with."""
    try:
        anchors = [Anchor.parse(text) for text in anchor or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--anchor") from exc
    settings = settings_or_exit(data_dir)
    console = Console()
    database = _database(settings, database_url)
    with database.session() as session:
        linked = linked_count(session)
        unlinked = unlinked_count(session)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("verifying the hash chain", total=linked)
        check = check_chain(database, on_batch=lambda n: progress.advance(task, n), anchors=anchors)
    if unlinked:
        console.print(
            f"[yellow]{unlinked} entries are stored but not linked into the chain yet: a running "
            "exchange links them within a second, a stopped one when it starts again[/]"
        )
    files: ChainCheck | None = None
    if read_archives and check.archives:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("reading the archives", total=check.archived_entries)
            files = verify_archives(
                database,
                _blobs(settings, blob_url),
                lambda n: progress.advance(task, n),
                anchors=check.anchors_in_archives,
            )
    problems = [*check.problems, *(files.problems if files else [])]
    count = check.problem_count + (files.problem_count if files else 0)
    archived = (
        f"; {check.archived_entries} more in {check.archives} archive(s), "
        + ("each file read back and checked" if files else "passed by their records")
        if check.archives
        else ""
    )
    unchecked = [] if files else check.anchors_in_archives
    if unchecked:
        console.print(
            f"[yellow]not checked: the anchors at {', '.join(str(a.seq) for a in unchecked)} "
            "fall in archived runs; add --archives to check them in the files[/]"
        )
    held_count = len(anchors) - len(unchecked)
    held = f", {held_count} anchor(s) held" if held_count else ""
    if count:
        console.print(f"[red]audit log: {count} problem(s) in {check.entries} entries{archived}[/]")
        for problem in problems:
            console.print(f"  {problem}")
        if count > len(problems):
            console.print(f"  … and {count - len(problems)} more")
        raise typer.Exit(1)
    console.print(
        f"[green]audit log intact: {check.entries} entries, hash chain verified{held}{archived}[/]"
    )
    if check.archives and not files:
        console.print("(add --archives to read the archive files back as well)")
    if (newest := newest_anchor(database)) is not None:
        console.print(f"newest entry's anchor (keep it with the audit): {newest}", soft_wrap=True)


@app.command()
def archive(
    before: Annotated[
        datetime,
        typer.Option(
            formats=_MOMENT,
            help="Move the entries stored before this moment (UTC), e.g. 2026-01-01.",
        ),
    ],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
) -> None:
    """Move old entries out of the database into archive files in the blob store.

    The chain goes on across them (`verify` checks it); the newest linked entry always stays.
    A running exchange does the same on its own with AIFI_ARCHIVE_AUDIT_AFTER_SECONDS.
    """
    settings = settings_or_exit(data_dir)
    console = Console()
    database = _database(settings, database_url)
    log = AuditLog(database)
    archiver = AuditArchiver(database, _blobs(settings, blob_url), log, settings)
    with database.session() as session:
        linked = linked_count(session)
    moment = as_utc(before)
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(
                f"archiving entries before {moment:%Y-%m-%d %H:%M}", total=linked
            )
            written = archiver.archive_before(moment, lambda n: progress.advance(task, n))
    except ExchangeError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc
    log.chain()  # the archiving's own entries, as a running exchange would link them
    if not written:
        console.print(f"nothing to archive: no linked entry before {moment.isoformat()} is left")
        return
    _show(console, written, f"{sum(a.entries for a in written)} entries archived")


@app.command("archives")
def list_archives(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """The archive files, oldest first: which entries each holds, and where it is."""
    settings = settings_or_exit(data_dir)
    console = Console()
    written = archives(_database(settings, database_url))
    if not written:
        console.print("no archives: every entry is in the database")
        return
    _show(console, written, f"{len(written)} archive(s), {sum(a.entries for a in written)} entries")


#: Found entries shown on screen at most; `--json` writes them all.
SHOWN = 200


@app.command("search")
def search_log(
    patient: Annotated[
        str | None, typer.Option(help="A patient pseudonym: who touched this patient's data.")
    ] = None,
    organisation: Annotated[str | None, typer.Option(help="An organisation's id.")] = None,
    object_id: Annotated[
        str | None,
        typer.Option("--object", help="An object's id; a job's also finds its inputs, results."),
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(formats=_MOMENT, help="From this moment (UTC) on.")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(formats=_MOMENT, help="Before this moment (UTC).")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write every entry found to this file.")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
) -> None:
    """Find entries in the table and in the archive files alike, oldest first."""
    if patient is None and organisation is None and object_id is None:
        raise typer.BadParameter("name a --patient, an --organisation or an --object")
    settings = settings_or_exit(data_dir)
    console = Console()
    database = _database(settings, database_url)
    query = AuditQuery(patient, organisation, object_id, since=since, until=until)
    table = Table()
    table.add_column("stored (UTC)", no_wrap=True)
    for column in ("organisation", "role", "action", "object", "outcome", "kept in"):
        table.add_column(column, overflow="fold")
    found = 0
    missing = None
    try:
        with _json_writer(json_file) as write, console.status("searching the access log"):
            for kept, entry in search(database, _blobs(settings, blob_url), query):
                found += 1
                write(kept, entry)
                if found <= SHOWN:
                    table.add_row(
                        f"{as_utc(entry.at):%Y-%m-%d %H:%M}",
                        entry.organisation_id,
                        entry.role,
                        entry.action,
                        f"{entry.object_type} {entry.object_id}",
                        entry.outcome,
                        kept,
                    )
    except ArchiveMissing as exc:  # what was found before it is shown, then the trouble
        missing = exc.message
    finally:
        # Reading the log reads others' accesses to a patient's data: the search is itself
        # an access, logged as the API's are, naming who ran it on which host.
        AuditLog(database).record(
            HOST_OPERATOR,
            "search",
            "audit",
            query.describe()[:200],
            patient_pseudonym=patient or "",
            detail=f"{found} entries, from the command line by {_who()}",
        )
    if found:
        console.print(table)
        shown = f", the first {SHOWN} shown" if found > SHOWN else ""
        whole = "all" if missing is None else "those found before it stopped"
        console.print(
            f"{found} entries{shown}" + (f"; {whole} written to {json_file}" if json_file else "")
        )
    if missing is not None:
        console.print(f"[red]{missing}[/]")
        raise typer.Exit(1)
    if not found:
        console.print("no entry matches")


def _who() -> str:
    """The host's user and name, for the log entry of a search run on the host itself."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's bare user)
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@contextlib.contextmanager
def _json_writer(path: Path | None) -> Iterator[Callable[[str, Any], None]]:
    """Writes found entries as a JSON array, one at a time (a search may find millions)."""
    if path is None:
        yield lambda _kept, _entry: None
        return
    with path.open("w") as out:
        out.write("[")
        first = True

        def write(kept: str, entry: Any) -> None:
            nonlocal first
            record = {column: getattr(entry, column) for column in COLUMNS}
            record["at"] = as_utc(entry.at).isoformat()
            record["kept_in"] = kept
            out.write(("\n" if first else ",\n") + json.dumps(record))
            first = False

        try:
            yield write
        finally:  # what was found before a failure is a valid file too
            out.write("\n]\n")


def _show(console: Console, written: list[AuditArchive], title: str) -> None:
    table = Table(title=title)
    for column in ("positions", "stored from", "to"):
        table.add_column(column, no_wrap=True)
    for column in ("entries", "bytes"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("file", overflow="fold")
    for archive in written:
        table.add_row(
            f"{archive.first_seq}–{archive.last_seq}",
            f"{archive.first_at:%Y-%m-%d %H:%M}",
            f"{archive.last_at:%Y-%m-%d %H:%M}",
            str(archive.entries),
            str(archive.size),
            archive.blob_key,
        )
    console.print(table)
