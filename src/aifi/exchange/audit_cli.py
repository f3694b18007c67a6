"""`aifi audit verify`: check the exchange's hash-chained access log from its database.

Run it on the exchange host (or anywhere with read access to the database): it reads every
entry in order, a batch at a time with a progress bar, and reports any that was edited,
removed or re-ordered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from aifi.exchange.audit import check_chain, linked_count, unlinked_count
from aifi.exchange.db import Database
from aifi.exchange.settings import ExchangeSettings

app = typer.Typer(help="The exchange's audit log.", no_args_is_help=True)


@app.callback()
def audit() -> None:
    """The exchange's hash-chained access log (NEN 7513)."""


@app.command()
def verify(
    data_dir: Annotated[
        Path | None, typer.Option(help="The exchange's data folder (default AIFI_DATA_DIR).")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Or its database URL (default AIFI_DATABASE_URL).")
    ] = None,
) -> None:
    """Verify the hash chain; exit 1 and list the problems when any entry was tampered with."""
    settings = ExchangeSettings() if data_dir is None else ExchangeSettings(data_dir=data_dir)
    url = database_url or settings.resolved_database_url()
    console = Console()
    database = Database(url)
    with database.session() as session:
        linked = linked_count(session)
        unlinked = unlinked_count(session)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("verifying the hash chain", total=linked)
        check = check_chain(database, on_batch=lambda n: progress.advance(task, n))
    if unlinked:
        console.print(
            f"[yellow]{unlinked} entries are stored but not linked into the chain yet: a running "
            "exchange links them within a second, a stopped one when it starts again[/]"
        )
    if not check.ok:
        console.print(
            f"[red]audit log: {check.problem_count} problem(s) in {check.entries} entries[/]"
        )
        for problem in check.problems:
            console.print(f"  {problem}")
        if check.problem_count > len(check.problems):
            console.print(f"  … and {check.problem_count - len(check.problems)} more")
        raise typer.Exit(1)
    console.print(f"[green]audit log intact: {check.entries} entries, hash chain verified[/]")
