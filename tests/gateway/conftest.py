"""Fixtures for gateway tests: the national path on one machine (see support.national)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.national import National, national_path


@pytest.fixture
def national(tmp_path: Path) -> Iterator[National]:
    with national_path(tmp_path) as path:
        yield path
