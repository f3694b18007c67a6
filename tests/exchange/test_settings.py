"""A replica's connection pool follows its thread counts unless the operator sets it."""

from __future__ import annotations

import pytest

from aifi.exchange.settings import ExchangeSettings


def test_the_pool_grows_with_the_threads_that_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFI_REQUEST_THREADS", "50")
    monkeypatch.setenv("AIFI_TRANSFER_THREADS", "30")
    assert ExchangeSettings().resolved_pool_size() == 160


def test_the_default_pool_holds_every_default_thread_twice() -> None:
    settings = ExchangeSettings()
    threads = settings.request_threads + settings.transfer_threads
    assert settings.resolved_pool_size() == 2 * threads


def test_a_pool_size_the_operator_sets_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFI_REQUEST_THREADS", "50")
    monkeypatch.setenv("AIFI_DATABASE_POOL_SIZE", "12")
    assert ExchangeSettings().resolved_pool_size() == 12
