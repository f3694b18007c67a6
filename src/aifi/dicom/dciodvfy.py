"""Run dicom3tools' `dciodvfy` on a DICOM file and report its errors and warnings.

Every DICOM object the project writes is checked against the IODs by an independent
implementation; this wrapper turns its text output into something a test or the conformance
kit can act on.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


class DciodvfyMissing(RuntimeError):
    """dicom3tools is not installed (Debian package `dicom3tools`)."""


@dataclass(frozen=True)
class IodReport:
    """What `dciodvfy` said about one file."""

    path: Path
    iod: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def dciodvfy_path() -> str | None:
    return shutil.which("dciodvfy")


def verify_iod(path: Path, timeout: float = 120.0) -> IodReport:
    """Check `path` with `dciodvfy`; raise :class:`DciodvfyMissing` when the tool is absent."""
    exe = dciodvfy_path()
    if exe is None:
        raise DciodvfyMissing("dciodvfy not found: install the Debian package 'dicom3tools'")
    proc = subprocess.run(
        [exe, "-filename", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("Error", "Abort"))]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    iod = next(
        (ln for ln in lines if not ln.startswith(("Error", "Warning", "Abort", "Filename"))), ""
    )
    return IodReport(path=path, iod=iod, errors=errors, warnings=warnings)
