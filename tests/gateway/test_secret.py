"""The pseudonymisation secret: made once, durably, for a new workdir; never made again over a
workdir that earlier runs keyed with it (every pseudonym would change, and jobs the exchange
holds under their keys could not go on). Such a gateway refuses to start and says where the
secret comes back from: the hospital's key escrow."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aifi.cli import app
from aifi.dicom.pseudonym import PseudonymKey, create_secret_file
from aifi.file_lock import held_alone
from aifi.gateway.backup import WORKDIR_LOCK, secret_fingerprint
from aifi.gateway.config import load_config
from aifi.gateway.preflight import preflight
from aifi.gateway.secret import SecretChanged, SecretMissing, vault_keying
from aifi.gateway.service import Gateway
from gateway.test_disclosures import offline_gateway_config


def started_once(tmp_path: Path) -> tuple[Path, str]:
    """A gateway opened on a new workdir and closed again, as after its first run; its
    configuration, and what a UID is pseudonymised to under the secret it made."""
    path = offline_gateway_config(tmp_path)
    gateway = Gateway(load_config(path))
    try:
        pseudonym = gateway.key.uid("1.2.826.0.1.3680043.8.498.1")
    finally:
        gateway.close()
    return path, pseudonym


def contents(folder: Path) -> dict[str, int]:
    """Every file and folder under `folder`, with its size (0 for folders)."""
    return {
        str(path.relative_to(folder)): path.stat().st_size if path.is_file() else 0
        for path in folder.rglob("*")
    }


def test_a_new_workdir_gets_a_secret_private_and_on_the_disk(
    tmp_path: Path, fsynced: list[str]
) -> None:
    path, _ = started_once(tmp_path)
    secret = load_config(path).resolved_secret_file
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(secret.read_text().strip())) == 32
    # Its bytes flushed before the folder that holds its name.
    assert str(secret.parent) in fsynced, fsynced
    written = fsynced.index(str(secret.parent))
    assert any(Path(p).parent == secret.parent for p in fsynced[:written]), fsynced


def test_a_workdir_whose_secret_is_gone_is_not_started_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """The secret's volume not mounted, say: no new secret, no new folder; the gateway's
    command, and its check, say to put the escrowed one back."""
    path, pseudonym = started_once(tmp_path)
    config = load_config(path)
    secret = config.resolved_secret_file
    escrow = tmp_path / "key-escrow.key"
    shutil.move(secret, escrow)
    before = contents(config.workdir)

    with pytest.raises(SecretMissing) as refused:
        Gateway(config)
    message = str(refused.value)
    assert f"the pseudonymisation secret {secret} is missing" in message
    assert "state.db, vault.db, disclosures.db" in message
    assert "put the hospital's secret back from its key escrow" in message
    assert not secret.exists()
    assert contents(config.workdir) == before

    result = CliRunner().invoke(app, ["gateway", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "cannot start: the pseudonymisation secret" in result.output
    assert not secret.exists() and contents(config.workdir) == before

    [check] = [c for c in preflight(config) if c.name == "pseudonymisation secret"]
    assert not check.ok and "key escrow" in check.detail, check

    # Put back from the escrow: the gateway starts, and pseudonymises as before.
    shutil.move(escrow, secret)
    gateway = Gateway(config)
    try:
        assert gateway.key.uid("1.2.826.0.1.3680043.8.498.1") == pseudonym
    finally:
        gateway.close()


def test_the_check_tells_a_new_workdir_its_secret_comes_at_the_first_start(
    tmp_path: Path,
) -> None:
    config = load_config(offline_gateway_config(tmp_path))
    for made in (False, True):  # before the workdir is made, and once it is (still empty)
        if made:
            config.workdir.mkdir(mode=0o700)
        [check] = [c for c in preflight(config) if c.name == "pseudonymisation secret"]
        assert check.ok and "created at the first start" in check.detail, check
        assert not config.resolved_secret_file.exists()


def test_a_secret_is_never_written_over(tmp_path: Path) -> None:
    secret = tmp_path / "pseudonym.key"
    create_secret_file(secret)
    kept = PseudonymKey.from_file(secret).uid("1.2.3")
    with pytest.raises(FileExistsError, match="holds a pseudonymisation secret already"):
        create_secret_file(secret)
    assert PseudonymKey.from_file(secret).uid("1.2.3") == kept


def gateway_secret(path: Path, *options: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["gateway-secret", "--config", str(path), *options])
    return result.exit_code, result.output


def test_a_secret_other_than_the_vault_s_is_refused_until_the_escrowed_one_is_back(
    tmp_path: Path,
) -> None:
    """A wrong copy from the escrow (another hospital's, an old one) would give every patient
    new pseudonyms without a word: the gateway, its check and `aifi gateway-secret` name
    both fingerprints, and nothing in the workdir changes."""
    path, pseudonym = started_once(tmp_path)
    config = load_config(path)
    secret = config.resolved_secret_file
    right = secret_fingerprint(PseudonymKey.from_file(secret))
    escrow = tmp_path / "key-escrow.key"
    shutil.move(secret, escrow)
    create_secret_file(secret)  # the wrong one
    wrong = secret_fingerprint(PseudonymKey.from_file(secret))
    before = contents(config.workdir)

    with pytest.raises(SecretChanged) as refused:
        Gateway(config)
    assert f"(fingerprint {wrong}) is not the one" in str(refused.value)
    assert f"made under (fingerprint {right})" in str(refused.value)
    assert contents(config.workdir) == before
    [check] = [c for c in preflight(config) if c.name == "pseudonymisation secret"]
    assert not check.ok and right in check.detail and wrong in check.detail, check
    code, shown = gateway_secret(path)
    assert code == 1 and f"fingerprint {wrong}" in shown and f"keyed with {right}" in shown

    shutil.copy(escrow, secret)  # the escrowed one back
    gateway = Gateway(config)
    try:
        assert gateway.key.uid("1.2.826.0.1.3680043.8.498.1") == pseudonym
    finally:
        gateway.close()
    code, shown = gateway_secret(path)
    assert code == 0 and shown.count(right) == 2, shown


def test_a_deliberate_rotation_is_adopted_with_the_gateway_stopped(tmp_path: Path) -> None:
    path, pseudonym = started_once(tmp_path)
    config = load_config(path)
    secret = config.resolved_secret_file
    secret.unlink()
    create_secret_file(secret)  # the new secret, written by the engineer
    new = secret_fingerprint(PseudonymKey.from_file(secret))

    with held_alone(config.workdir / WORKDIR_LOCK):  # the gateway still running
        code, said = gateway_secret(path, "--adopt")
    assert code == 1 and "stop it first" in said
    assert vault_keying(config.workdir).fingerprint != new

    code, said = gateway_secret(path, "--adopt")
    assert code == 0 and f"keyed with {new} from now on" in said, said
    assert vault_keying(config.workdir).fingerprint == new
    gateway = Gateway(config)
    try:
        assert gateway.key.uid("1.2.826.0.1.3680043.8.498.1") != pseudonym
    finally:
        gateway.close()


def test_the_first_start_says_to_escrow_the_secret_it_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="aifi.gateway.secret"):
        path, _ = started_once(tmp_path)
    fingerprint = secret_fingerprint(PseudonymKey.from_file(load_config(path).resolved_secret_file))
    [said] = [r.getMessage() for r in caplog.records if r.name == "aifi.gateway.secret"]
    assert f"fingerprint {fingerprint}" in said and "key escrow now" in said
    caplog.clear()
    with caplog.at_level("WARNING", logger="aifi.gateway.secret"):
        Gateway(load_config(path)).close()  # its second start says nothing of it
    assert [r for r in caplog.records if r.name == "aifi.gateway.secret"] == []


def test_a_vault_from_before_the_fingerprint_takes_the_secret_it_has(tmp_path: Path) -> None:
    """A workdir an earlier release kept: its vault says nothing of the secret, so the one the
    gateway has now is recorded at its first start after the upgrade."""
    path, _ = started_once(tmp_path)
    config = load_config(path)
    with closing(sqlite3.connect(config.workdir / "vault.db")) as vault, vault:
        vault.execute("DROP TABLE keyed_with")
    assert vault_keying(config.workdir).fingerprint is None
    Gateway(config).close()
    assert vault_keying(config.workdir).fingerprint == secret_fingerprint(
        PseudonymKey.from_file(config.resolved_secret_file)
    )
