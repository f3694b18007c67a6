"""The pseudonymisation secret at the first start after the upgrade that began recording its
fingerprint: a vault kept by an earlier release says nothing of its secret, but its own UID
pairs do (each pseudonym is `key.uid(original)`), so a wrong copy from the escrow is refused
then too, and the right one is not locked out. And a start that fails after the vault opened
closes it."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from aifi.dicom.pseudonym import PseudonymKey, create_secret_file
from aifi.gateway.config import load_config
from aifi.gateway.secret import SecretChanged
from aifi.gateway.service import Gateway
from gateway.test_disclosures import offline_gateway_config

ORIGINAL = "1.2.826.0.1.3680043.8.498.1"


def test_a_wrong_secret_at_the_first_start_after_the_upgrade_is_refused(tmp_path: Path) -> None:
    path = offline_gateway_config(tmp_path)
    config = load_config(path)
    gateway = Gateway(config)
    right = gateway.key
    gateway.close()
    # The vault as an earlier release kept it: pseudonyms made under the right secret, and
    # nothing said of the secret.
    with closing(sqlite3.connect(config.workdir / "vault.db")) as vault, vault:
        vault.execute("DROP TABLE keyed_with")
        vault.execute(
            "INSERT INTO uids (pseudonym, original) VALUES (?, ?)", (right.uid(ORIGINAL), ORIGINAL)
        )
    secret = config.resolved_secret_file
    shutil.move(secret, tmp_path / "escrow.key")
    create_secret_file(secret)  # a wrong copy put in place for the upgrade
    assert PseudonymKey.from_file(secret).uid(ORIGINAL) != right.uid(ORIGINAL)

    try:
        with pytest.raises(SecretChanged):
            Gateway(config).close()
    finally:
        # What follows now: the right secret is the one refused.
        shutil.copy(tmp_path / "escrow.key", secret)
        try:
            Gateway(config).close()
            right_refused = None
        except SecretChanged as exc:
            right_refused = str(exc)
    assert right_refused is None, right_refused


def test_a_start_that_fails_after_the_vault_opened_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vault now opens before the spool folders and the state database; a start that fails
    there (a spool volume not mounted, state.db unreadable) leaves its connection open: only
    SecretChanged closes it. Before the change the vault opened after those steps."""
    import aifi.gateway.service as service

    path = offline_gateway_config(tmp_path)
    config = load_config(path)
    opened: list[object] = []

    class Recorded(service.Vault):  # type: ignore[misc,name-defined]
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            opened.append(self)

    def broken_state(*_args: object) -> None:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(service, "Vault", Recorded)
    monkeypatch.setattr(service, "GatewayState", broken_state)
    with pytest.raises(sqlite3.OperationalError):
        Gateway(config)
    [vault] = opened
    try:
        vault._conn.execute("SELECT 1")  # type: ignore[attr-defined]
        still_open = True
    except sqlite3.ProgrammingError:  # closed
        still_open = False
    assert not still_open, "the vault's connection was left open by the failed start"
