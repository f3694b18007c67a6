"""What the exchange's commands share: reading its settings the way an operator can act on."""

from __future__ import annotations

from pathlib import Path

import typer

from aifi.exchange.settings import ExchangeSettings, SettingsRefused, read_settings


def settings_or_exit(data_dir: Path | None) -> ExchangeSettings:
    """The exchange's settings from the environment (`data_dir` from the command line); exit 2
    naming each AIFI_* variable that does not fit, instead of pydantic's traceback."""
    try:
        return read_settings(data_dir)
    except SettingsRefused as exc:
        typer.echo(f"error: the exchange's settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
