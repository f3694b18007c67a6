"""Our servers keep an idle connection open longer than an HTTP client keeps it in its pool:
a client that reuses a connection idle for as long as its pool allows (httpx: 5 s) must not
meet a server closing it at that moment ("server disconnected without sending a
response"), which uvicorn's default of 5 s made a race."""

from __future__ import annotations

import socket

import httpx

from aifi.app_thread import AppThread
from aifi.http import SERVER_KEEP_ALIVE_SECONDS


async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def test_an_idle_connection_outlives_a_clients_pool() -> None:
    pool_expiry = httpx.Limits().keepalive_expiry
    assert pool_expiry is not None and pool_expiry < SERVER_KEEP_ALIVE_SECONDS
    server = AppThread(app, name="keep-alive")
    with server, socket.create_connection((server.host, server.port), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        # Idle for a second longer than a client's pool keeps a connection: the server
        # must neither close it (recv would answer b"") nor answer anything.
        connection.settimeout(pool_expiry + 1)
        try:
            closed = connection.recv(1) == b""
        except TimeoutError:
            closed = False
        assert not closed, "the server closed a connection a client's pool still holds"
        connection.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 200")
