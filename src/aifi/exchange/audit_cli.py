"""`aifi audit verify`: check the exchange's hash-chained access log from its database.

Run it on the exchange host (or anywhere with read access to the database): it reads every
entry in order and reports any that was edited, removed or re-ordered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from aifi.exchange.audit import in_chain_order, unlinked_count, verify_chain
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
        entries = list(session.scalars(in_chain_order()))
        unlinked = unlinked_count(session)
    problems = verify_chain(entries)
    if unlinked:
        console.print(
            f"[yellow]{unlinked} entries are stored but not linked into the chain yet: a running "
            "exchange links them within a second, a stopped one when it starts again[/]"
        )
    if problems:
        console.print(f"[red]audit log: {len(problems)} problem(s) in {len(entries)} entries[/]")
        for problem in problems:
            console.print(f"  {problem}")
        raise typer.Exit(1)
    console.print(f"[green]audit log intact: {len(entries)} entries, hash chain verified[/]")
