"""What the `aifi` commands write to the journal: their own lines, not one per HTTP request
(a gateway's idle long-polls alone made some 8,640 a day); `--verbose` brings those back."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from aifi.cli import _logging


@pytest.fixture
def httpx_level() -> Iterator[logging.Logger]:
    logger = logging.getLogger("httpx")
    before = logger.level
    yield logger
    logger.setLevel(before)


def test_requests_are_not_logged_one_by_one(httpx_level: logging.Logger) -> None:
    _logging(verbose=False)
    assert not httpx_level.isEnabledFor(logging.INFO)
    assert httpx_level.isEnabledFor(logging.WARNING)


def test_verbose_logs_every_request(httpx_level: logging.Logger) -> None:
    _logging(verbose=True)
    assert httpx_level.isEnabledFor(logging.INFO)
