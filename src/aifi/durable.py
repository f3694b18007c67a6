"""Putting a file under its name so that a power cut cannot take it back.

A gateway acknowledges an instance to the modality, and the exchange commits a job's row, only
once the file is on the disk: its bytes, the folder that holds its name (a rename lives in the
folder, not in the file) and the parent of each folder made for it. ext4 happens to commit a
new name along with the file's own fsync; XFS and others do not, and POSIX promises nothing.

The file is flushed after its rename, not before: on ext4 that flush then commits the rename
too and the folder's flush finds nothing left to write, one journal commit per file instead of
two (the gateway's ingest fell from about 89 to 64 instances/s with the flush first). Until the
function returns nothing has been acknowledged, so a name whose bytes a power cut lost is only
ever a file the sender will send again."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; the ones made, deepest first."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
            new.mkdir()
    return missing


def fsync_path(path: Path) -> None:
    """Flush a file's bytes, or a folder's names, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path) -> None:
    """Move `source` to `target` (replacing what was there) and make both bytes and name
    durable; the folders on the way are made if missing.

    A `source` on another file system (a temporary folder on tmpfs) is copied beside the target
    first, so the target appears complete or not at all.
    """
    made = make_folders(target.parent)
    try:
        os.replace(source, target)
        fsync_path(target)
        fsync_path(target.parent)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_then_replace(source, target)  # flushes the copy and its folder
    for new in made:
        fsync_path(new.parent)


def write_atomically(target: Path, write: Callable[[BinaryIO], object], *, fsync: bool) -> None:
    """Write `target` through `write` into a file beside it, then rename: it appears complete
    or not at all. `fsync`: the bytes are flushed before the rename and the name after it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    part = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        os.replace(part, target)
        if fsync:
            fsync_path(target.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _copy_then_replace(source: Path, target: Path) -> None:
    with source.open("rb") as original:
        write_atomically(
            target, lambda out: shutil.copyfileobj(original, out, 1024 * 1024), fsync=True
        )
    source.unlink(missing_ok=True)
