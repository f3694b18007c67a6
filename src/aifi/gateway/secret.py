"""The hospital's pseudonymisation secret on the gateway: made once, for a workdir that holds
nothing yet, and never made again over one that does.

Every pseudonym the gateway made is keyed by the secret: the patients' pseudonyms at the
vendors, the study and instance UIDs the exchange holds, the idempotency keys of its jobs. A
secret that went missing (a volume not mounted, a file lost) and was quietly made anew would
give every patient new pseudonyms, and jobs the exchange holds under their old keys could no
longer be sent (the exchange refuses a key it knows with other content). So a gateway whose
workdir holds what earlier runs kept refuses to start without it, and says where to get it
back: the hospital's key escrow. And since a copy from the escrow may be the wrong one (another
hospital's, an old one), the vault keeps the fingerprint of the secret its pseudonyms were
made under: a gateway given another secret refuses to start too, until the engineer puts the
right one back or says the change is meant (`aifi gateway-secret --adopt`).
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

from aifi.dicom.pseudonym import PseudonymKey, create_secret_file
from aifi.gateway.backup import DATABASES, secret_fingerprint
from aifi.gateway.vault import Keying, Vault, read_keying

log = logging.getLogger(__name__)

#: The vault's file in a workdir.
VAULT = "vault.db"


class SecretMissing(FileNotFoundError):
    """The secret is gone from a workdir that was keyed with it; the message says what to do."""


def kept_by_earlier_runs(workdir: Path) -> list[str]:
    """What `workdir` holds that was made under a secret: the gateway's databases."""
    return [name for name in DATABASES if (workdir / name).exists()]


def missing_secret_problem(secret: Path, workdir: Path) -> str | None:
    """Why the gateway must not start for want of its secret, or None: it is there, or the
    workdir is new and the secret is made for it at the first start."""
    if secret.exists():
        return None
    kept = kept_by_earlier_runs(workdir)
    if not kept:
        return None
    return (
        f"the pseudonymisation secret {secret} is missing, yet {workdir} holds "
        f"{', '.join(kept)} of earlier runs, made under it: put the hospital's secret back "
        "from its key escrow at that path (or mount the volume that holds it), then start the "
        "gateway again. A new secret is never made over them: every patient would get new "
        "pseudonyms, and the jobs the exchange holds could not be sent again "
        "(docs/hospital-guide.md, section 7)"
    )


def open_secret(secret: Path, workdir: Path) -> PseudonymKey:
    """The hospital's key: read from `secret`, or made there (durably, mode 0600) when the
    workdir is new.

    Raises
    ------
    SecretMissing
        When the secret is missing and the workdir holds what earlier runs made under it;
        nothing is created.
    """
    if not secret.exists():
        problem = missing_secret_problem(secret, workdir)
        if problem is not None:
            raise SecretMissing(problem)
        create_secret_file(secret)
    return PseudonymKey.from_file(secret)


class SecretChanged(ValueError):
    """The secret is not the one the workdir's vault was keyed with; the message says what to
    do."""


def changed_secret_problem(key: PseudonymKey, secret: Path, keying: Keying) -> str | None:
    """Why the gateway must not start with `key` over a vault keyed as `keying` says, or None."""
    fingerprint = secret_fingerprint(key)
    if keying.fingerprint is not None:
        if keying.fingerprint == fingerprint:
            return None
        made_under = f"was made under (fingerprint {keying.fingerprint})"
    elif keying.sample is not None:
        pseudonym, original = keying.sample
        if key.uid(original) == pseudonym:
            return None
        made_under = "was made under another secret: its pseudonyms are not this one's"
    else:
        return None
    return (
        f"the pseudonymisation secret {secret} (fingerprint {fingerprint}) is not the one "
        f"this workdir's vault {made_under}: put the hospital's secret back from its key "
        "escrow (the escrowed copy's fingerprint is shown by `aifi gateway-secret`). To change "
        "the secret on purpose, which gives every patient new pseudonyms, run `aifi "
        "gateway-secret --config … --adopt` with the gateway stopped "
        "(docs/hospital-guide.md, section 7)"
    )


def keep_fingerprint(vault: Vault, key: PseudonymKey, secret: Path, created: bool) -> None:
    """Check `key` against the secret the vault was keyed with, and record it in a vault that
    does not say yet (new, or kept by an earlier release, whose pseudonyms it must have made).

    Raises
    ------
    SecretChanged
        When the vault was keyed with another secret; nothing is recorded.
    """
    keying = vault.keying()
    if (problem := changed_secret_problem(key, secret, keying)) is not None:
        raise SecretChanged(problem)
    if keying.fingerprint is None:
        fingerprint = secret_fingerprint(key)
        vault.key_with(fingerprint)
        if created:
            log.warning(
                "created the pseudonymisation secret %s (fingerprint %s): put a copy in the "
                "hospital's key escrow now (docs/hospital-guide.md, section 7)",
                secret, fingerprint,
            )  # fmt: skip


def vault_keying(workdir: Path) -> Keying:
    """What a workdir's vault says of its secret, read without changing the vault (for
    `--check` and `aifi gateway-secret`); nothing when there is no vault yet.

    Raises
    ------
    sqlite3.Error
        When the vault cannot be read (not when it lacks the table an earlier release lacked).
    """
    path = workdir / VAULT
    if not path.exists():
        return Keying()
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
        return read_keying(connection)
