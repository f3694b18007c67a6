"""What the gateway's commands share: the `--config` option and reading the file it names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aifi.gateway.config import ConfigError, GatewayConfig, load_config

#: The `--config` option of every gateway command.
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The hospital's gateway YAML.")]


def settings_or_exit(config: Path) -> GatewayConfig:
    """The gateway configuration at `config`; exit 2 with the reason when it is not valid."""
    try:
        return load_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
