"""Shared test fixtures: real peers are required under CI=true and skipped, with a reason, locally."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_executable(name: str, package: str) -> str:
    """The path of a peer's executable; skip (locally) or fail (under CI=true) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install the Debian package '{package}' (make test does, as root)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    return require_executable("dciodvfy", "dicom3tools")
