"""A replica's settings from the environment: the connection pool follows its thread counts
unless the operator sets it; an empty variable turns its setting off; a value that does not
fit is named in a line, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aifi.cli import app as cli_app
from aifi.exchange.settings import ExchangeSettings, read_settings


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


#: Settings a variable left empty turns off, as docs/deploy.md says (the restore drill
#: empties the first five, so that a restored copy purges and ends nothing).
OFF_WHEN_EMPTY = (
    "AIFI_RETAIN_INPUTS_SECONDS",
    "AIFI_RETAIN_RESULTS_SECONDS",
    "AIFI_RETAIN_UNDELIVERED_SECONDS",
    "AIFI_EXPIRE_UNFINISHED_SECONDS",
    "AIFI_ARCHIVE_AUDIT_AFTER_SECONDS",
)


def test_a_variable_left_empty_turns_its_setting_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OFF_WHEN_EMPTY:
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("AIFI_DATABASE_POOL_SIZE", " ")
    settings = read_settings()
    assert settings.retain_inputs_seconds is None
    assert settings.retain_results_seconds is None
    assert settings.retain_undelivered_seconds is None
    assert settings.expire_unfinished_seconds is None
    assert settings.archive_audit_after_seconds is None
    assert settings.resolved_pool_size() == 2 * (
        settings.request_threads + settings.transfer_threads
    )


def test_a_value_a_setting_cannot_take_is_named_not_traced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIFI_RETAIN_INPUTS_SECONDS", "a week")
    monkeypatch.setenv("AIFI_MAX_ATTEMPTS", "three")
    answer = CliRunner().invoke(cli_app, ["exchange", "--check", "--data-dir", str(tmp_path)])
    assert answer.exit_code == 2
    assert "AIFI_RETAIN_INPUTS_SECONDS=a week: Input should be a valid number" in answer.output
    assert "AIFI_MAX_ATTEMPTS=three: Input should be a valid integer" in answer.output
    assert "Traceback" not in answer.output and "ValidationError" not in answer.output
