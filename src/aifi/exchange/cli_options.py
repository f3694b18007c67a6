"""What the exchange's commands share: the `--data-dir` option and reading the settings the
way an operator can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aifi.exchange.settings import ExchangeSettings, SettingsRefused, read_settings

#: The `--data-dir` option of every exchange command.
DataDir = Annotated[
    Path | None,
    typer.Option(
        help="The exchange's data folder (default AIFI_DATA_DIR or ./aifi-data/exchange)."
    ),
]


def settings_or_exit(data_dir: Path | None) -> ExchangeSettings:
    """The exchange's settings from the environment (`data_dir` from the command line); exit 2
    naming each AIFI_* variable that does not fit, instead of pydantic's traceback."""
    try:
        return read_settings(data_dir)
    except SettingsRefused as exc:
        typer.echo(f"error: the exchange's settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
