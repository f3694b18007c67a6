"""Serve an ASGI app from a thread of this process: the in-process exchange (the demo, tests,
benchmarks) and the gateway's DICOMweb listener."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any, Self

import uvicorn

from aifi.http import SERVER_KEEP_ALIVE_SECONDS


class AppThread:
    """An ASGI app served by uvicorn on a daemon thread; a context manager that starts and
    stops it."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "http",
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.host = host
        self.app = app
        self.scheme = "https" if ssl_certfile else "http"
        # Bound here, not merely chosen: a port chosen now and bound only at start could be
        # handed to another server in between.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_keep_alive=SERVER_KEEP_ALIVE_SECONDS,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        self._server = uvicorn.Server(config)
        self._name = name
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=name, daemon=True
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        self._thread.start()
        ready = threading.Event()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the {self._name} server did not start on {self.url}")
            if ready.wait(0.01) or (timeout := timeout - 0.01) <= 0:
                raise TimeoutError(f"the {self._name} server did not start in time on {self.url}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
