"""A small retrying HTTP client for the exchange API, shared by the gateway and the vendor SDK.

Both reach the exchange over HTTP only; this module is the one place that knows how the API
reports errors (JSON `detail`) and which failures are worth another try.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

#: Statuses worth a retry: the exchange (or its load balancer) is briefly unavailable.
TRANSIENT = frozenset({502, 503, 504})
CHUNK = 1024 * 1024


class ExchangeHTTPError(RuntimeError):
    """The exchange answered with an error; `detail` is its explanation."""

    def __init__(self, status: int, detail: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {detail}")
        self.status = status
        self.detail = detail


class LeaseLost(ExchangeHTTPError):
    """409: the object changed meanwhile (a lease expired, a job ended)."""


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


class ApiClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._retries = retries
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport or httpx.HTTPTransport(retries=3),
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, body_path: Path | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send, retrying connection failures and 502/503/504 with backoff.

        Only idempotent calls go through here (every exchange call is, by key), so a retry
        never doubles anything. A file body is given as `body_path` and streamed afresh on
        every attempt (a generator would be spent after the first).
        """
        delay = 0.2
        for attempt in range(self._retries + 1):
            if body_path is not None:
                kwargs["content"] = file_chunks(body_path)
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == self._retries:
                    raise
            else:
                if response.status_code not in TRANSIENT or attempt == self._retries:
                    return checked(response, method, path)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def download(self, path: str, target: Path, headers: dict[str, str] | None = None) -> int:
        """Stream a response body to `target` (written whole or not at all); returns its size.

        A broken connection or a 502/503/504 starts the download again from the beginning.
        """
        partial = target.with_name(target.name + ".part")
        delay = 0.2
        for attempt in range(self._retries + 1):
            size = 0
            try:
                with self._http.stream("GET", path, headers=headers) as response:
                    if response.status_code >= 400:
                        response.read()
                        if response.status_code in TRANSIENT and attempt < self._retries:
                            raise httpx.TransportError(f"{response.status_code} from the exchange")
                        checked(response, "GET", path)
                    with partial.open("wb") as out:
                        for chunk in response.iter_bytes(CHUNK):
                            out.write(chunk)
                            size += len(chunk)
            except httpx.TransportError:
                partial.unlink(missing_ok=True)
                if attempt == self._retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            partial.replace(target)
            return size
        raise AssertionError("unreachable")


def checked(response: httpx.Response, method: str, path: str) -> httpx.Response:
    if response.status_code < 400:
        return response
    try:
        detail = str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        detail = response.text
    error = LeaseLost if response.status_code == 409 else ExchangeHTTPError
    raise error(response.status_code, detail, method, path)
