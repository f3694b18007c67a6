"""The hospital's pseudonymisation secret on the gateway: made once, for a workdir that holds
nothing yet, and never made again over one that does.

Every pseudonym the gateway made is keyed by the secret: the patients' pseudonyms at the
vendors, the study and instance UIDs the exchange holds, the idempotency keys of its jobs. A
secret that went missing (a volume not mounted, a file lost) and was quietly made anew would
give every patient new pseudonyms, and jobs the exchange holds under their old keys could no
longer be sent (the exchange refuses a key it knows with other content). So a gateway whose
workdir holds what earlier runs kept refuses to start without it, and says where to get it
back: the hospital's key escrow.
"""

from __future__ import annotations

from pathlib import Path

from aifi.dicom.pseudonym import PseudonymKey, create_secret_file
from aifi.gateway.backup import DATABASES


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
