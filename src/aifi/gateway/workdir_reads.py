"""Reading a gateway's databases from a command run beside it (the gateway may be running):
never while a backup or a restore is moving them, nor before they exist."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aifi.file_lock import held_alone
from aifi.gateway.backup import COPY_LOCK, RESTORE_STAGING, restore_cut_off


class WorkdirNotReady(Exception):
    """The databases cannot be read now; the message says why and what to do."""


@contextmanager
def databases_in_place(
    workdir: Path, names: Sequence[str], error: type[Exception] = WorkdirNotReady
) -> Iterator[list[Path]]:
    """The paths of the databases `names` in `workdir`, refused (raising `error`) while a
    restore is putting them in place or was cut off (they may be the backup's, or about to be
    moved aside), or before a first start. Held against a restore's renames (`backup.lock`)
    for as long as the caller works."""
    if not workdir.is_dir():
        raise error(f"{workdir} does not exist: start the gateway once, or restore it first")
    with held_alone(workdir / COPY_LOCK) as alone:
        if not alone:
            raise error(f"a backup or a restore is running on {workdir}; try again when it is done")
        if (cut_off := restore_cut_off(workdir)) is not None:
            raise error(cut_off)
        if any(workdir.glob(f"{RESTORE_STAGING}*")):
            raise error(f"a restore is copying a backup into {workdir}; try again when it is done")
        paths = [workdir / name for name in names]
        for database in paths:
            if not database.exists():
                raise error(
                    f"{database} does not exist: start the gateway once, or restore it first"
                )
        yield paths
