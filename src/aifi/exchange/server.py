"""Run an exchange inside this process on a background thread (the demo, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

from aifi.app_thread import AppThread
from aifi.exchange.app import Extension, create_app
from aifi.exchange.settings import ExchangeSettings


class ExchangeThread(AppThread):
    """An exchange served by uvicorn on a thread; a context manager that starts and stops it."""

    def __init__(
        self,
        settings: ExchangeSettings,
        host: str = "127.0.0.1",
        port: int = 0,
        extensions: Sequence[Extension] = (),
    ) -> None:
        super().__init__(create_app(settings, extensions=extensions), host, port, name="exchange")
        self.services = self.app.state.services
