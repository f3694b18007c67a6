"""Every request the product's vendor key makes to the kit's exchange, for the tenant-wall check.

The exchange audits refused reads of a job, but not every refused request; the kit needs the
whole picture of what the product tried. :class:`VendorTraffic` is an ASGI middleware the kit
adds to its own exchange app before it starts: it notes method, path, status and, for a
refusal, the exchange's explanation, for requests that carry a watched key. Requests marked
with :data:`PROBE_HEADER` are the kit's own probes and are not the product's traffic.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBE_HEADER = "x-aifi-conformance-probe"
#: A path under one job: /jobs/{id} or /jobs/{id}/...; /jobs/claim is not a job.
_JOB_PATH = re.compile(r"^/jobs/(?P<job>[^/]+)(?:/|$)")
_DETAIL_LIMIT = 4096


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int
    detail: str = ""

    @property
    def job_id(self) -> str | None:
        """The job the request is about, if it is about one."""
        match = _JOB_PATH.match(self.path)
        if match is None or match["job"] == "claim":
            return None
        return match["job"]


class TrafficJournal:
    """Thread-safe list of the watched key's requests (written by the server's event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: set[bytes] = set()
        self._records: list[RequestRecord] = []

    def watch(self, api_key: str) -> None:
        with self._lock:
            self._keys.add(f"Bearer {api_key}".encode())

    def watches(self, authorization: bytes | None) -> bool:
        with self._lock:
            return authorization is not None and authorization in self._keys

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)


class VendorTraffic:
    """ASGI middleware: journal the watched key's requests, pass everything through unchanged."""

    def __init__(self, app: ASGIApp, journal: TrafficJournal) -> None:
        self.app = app
        self.journal = journal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if PROBE_HEADER.encode() in headers or not self.journal.watches(
            headers.get(b"authorization")
        ):
            await self.app(scope, receive, send)
            return
        status = 0
        body = bytearray()

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400:
                body.extend(message.get("body", b"")[: max(0, _DETAIL_LIMIT - len(body))])
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self.journal.add(
                RequestRecord(
                    method=str(scope["method"]),
                    path=str(scope["path"]),
                    status=status,
                    detail=_detail(bytes(body)),
                )
            )


def _detail(body: bytes) -> str:
    if not body:
        return ""
    try:
        return str(json.loads(body).get("detail", ""))
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")
