"""Small DICOM files are parsed from memory, not from the file.

pydicom seeks the file for nearly every element it reads (about fifty seeks for a one-slice
CT's header or a small SR). Each seek is a system call that lets go of the interpreter lock, so
on a busy exchange replica, whose request threads contend for that lock, each one can cost a
pair of context switches. A small file is read in one call instead and parsed from a buffer.
Large files are still parsed from disk: their bulk values stay there (deferred) and memory
does not grow with the file.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

#: Files up to this size are read whole before parsing: as large as an upload the exchange
#: already reads into memory before checking it.
IN_MEMORY_BYTES = 1024 * 1024


def parse_source(path: Path, size: int | None = None) -> Path | BytesIO:
    """What to hand `pydicom.dcmread` for the file at `path` (`size` if already known): its
    bytes when it is small, else the path."""
    size = path.stat().st_size if size is None else size
    if size > IN_MEMORY_BYTES:
        return path
    return BytesIO(path.read_bytes())
