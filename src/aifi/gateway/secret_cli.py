"""`aifi gateway-secret --config gateway.yaml [--adopt]`: which pseudonymisation secret the
gateway has, by fingerprint, beside the one its vault was keyed with.

The fingerprint reveals nothing of the secret: the engineer checks the escrowed copy against
it, and after a deliberate rotation (a new secret written to `secret_file` with the gateway
stopped) `--adopt` records the new secret as the vault's, without which the gateway refuses to
start over a vault made under another.
"""

from __future__ import annotations

import sqlite3
from typing import Annotated

import typer

from aifi.dicom.pseudonym import PseudonymKey
from aifi.file_lock import held_alone
from aifi.gateway.backup import WORKDIR_LOCK, secret_fingerprint
from aifi.gateway.cli_options import ConfigOption, settings_or_exit
from aifi.gateway.secret import VAULT, changed_secret_problem, vault_keying
from aifi.gateway.vault import Vault


def gateway_secret(
    config: ConfigOption,
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt",
            help="Record the secret now in secret_file as the one the vault's pseudonyms are "
            "made under from now on (a deliberate rotation: every patient gets new "
            "pseudonyms). The gateway must be stopped.",
        ),
    ] = False,
) -> None:
    """Show the pseudonymisation secret's fingerprint, and the vault's; with --adopt, make the
    secret in secret_file the vault's."""
    settings = settings_or_exit(config)
    secret, workdir = settings.resolved_secret_file, settings.workdir
    try:
        key = PseudonymKey.from_file(secret)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: the secret {secret}: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        keying = vault_keying(workdir)
    except sqlite3.Error as exc:
        typer.echo(f"error: the vault {workdir / VAULT}: {exc}", err=True)
        raise typer.Exit(1) from exc
    fingerprint = secret_fingerprint(key)
    typer.echo(f"secret {secret}: fingerprint {fingerprint}")
    recorded = keying.fingerprint or "nothing recorded yet"
    typer.echo(f"vault {workdir / VAULT}: keyed with {recorded}")
    if not adopt:
        if changed_secret_problem(key, secret, keying) is not None:
            typer.echo("they differ: the gateway will not start (put the escrowed secret back)")
            raise typer.Exit(1)
        return
    if keying.fingerprint == fingerprint:
        typer.echo("the vault is keyed with this secret already")
        return
    with held_alone(workdir / WORKDIR_LOCK) as alone:
        if not alone:
            typer.echo(f"error: a gateway, or a restore, is running on {workdir}: stop it first")
            raise typer.Exit(1)
        vault = Vault(workdir / VAULT)
        try:
            vault.key_with(fingerprint)
        finally:
            vault.close()
    typer.echo(
        f"the vault is keyed with {fingerprint} from now on: escrow this secret, keep the old "
        "one read-only until every job sent under it has ended, then start the gateway"
    )
