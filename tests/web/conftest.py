"""Fixtures for the clinical pillar's API and pages (see support.pillar)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.pillar import Pillar, pillar_exchange


@pytest.fixture
def pillar(tmp_path: Path) -> Iterator[Pillar]:
    with pillar_exchange(tmp_path) as exchange:
        yield exchange
