"""Run an exchange inside this process on a background thread (the demo, tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from types import TracebackType

import uvicorn

from aifi.exchange.app import Extension, create_app
from aifi.exchange.settings import ExchangeSettings


class ExchangeThread:
    """An exchange served by uvicorn on a thread; a context manager that starts and stops it."""

    def __init__(
        self,
        settings: ExchangeSettings,
        host: str = "127.0.0.1",
        port: int = 0,
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.host = host
        self.app = create_app(settings, extensions=extensions)
        self.services = self.app.state.services
        # Bound here, not merely chosen: a port chosen now and bound only at start could be
        # handed to another server in between.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            host=host,
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="exchange",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ExchangeThread:
        self._thread.start()
        ready = threading.Event()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the exchange did not start on {self.host}:{self.port}")
            if ready.wait(0.01) or (timeout := timeout - 0.01) <= 0:
                raise TimeoutError(f"the exchange did not start within the timeout on {self.port}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> ExchangeThread:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
