"""A small retrying HTTP client for the exchange API, shared by the gateway and the vendor SDK.

Both reach the exchange over HTTP only; this module is the one place that knows how the API
reports errors (JSON `detail`) and which failures are worth another try, and how a client
inside a hospital or a vendor's network gets out: through the proxy its network requires, and
trusting the CA of a proxy that inspects TLS.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import httpx

#: Statuses worth a retry: the exchange (or its load balancer) is briefly unavailable.
TRANSIENT = frozenset({502, 503, 504})
CHUNK = 1024 * 1024
#: Further attempts of a failed request by default. With the backoff (0.2 s doubling to at most
#: 5 s) they span about 20 s: a replica or the exchange restarting, not a long outage, which
#: the gateway's job retry and the worker's loop ride out instead.
RETRIES = 8
#: The longest a retry waits for the exchange's `Retry-After`: it is a hint from a server in
#: trouble, and a request still has to end within the span its caller plans around.
LONGEST_RETRY_AFTER = 30.0
#: Characters of an unexpected answer's body quoted in its error: enough to recognise a
#: proxy's or a load balancer's page, not enough to carry a page into the logs.
QUOTED_BODY = 80
#: Seconds our servers keep an idle connection open: longer than a client keeps one in its pool
#: (httpx: 5 s; a load balancer's upstream pool, by its own setting), so that no client sends
#: a request on a connection the server is closing at that moment, which the client sees as
#: "server disconnected without sending a response" (uvicorn's default is 5 s, as httpx's).
SERVER_KEEP_ALIVE_SECONDS = 65


class ExchangeHTTPError(RuntimeError):
    """The exchange answered with an error; `detail` is its explanation, `retry_after` the
    seconds its `Retry-After` asked the caller to wait (None when it did not say)."""

    def __init__(
        self, status: int, detail: str, method: str, path: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{method} {path}: {status} {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class LeaseLost(ExchangeHTTPError):
    """409: the object changed meanwhile (a lease expired, a job ended)."""


class UnexpectedAnswer(ExchangeHTTPError):
    """A redirect, or a success whose body is not the JSON the call expects: something in
    front of the exchange answered in its place (a load balancer's maintenance page, a
    proxy's own page), or the address is not an exchange's. Nothing says the request was
    carried out, so it is the exchange's trouble, to try again later; `detail` describes the
    answer in a few words and never quotes it whole."""


class ExchangeNotTrusted(httpx.ConnectError):
    """The exchange's TLS certificate does not verify. Trying again cannot help, so it is not
    retried; the message says what to set."""


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url`: HTTPS_PROXY (HTTP_PROXY for http://), else
    an http(s) ALL_PROXY, unless NO_PROXY covers its host (a name, a domain, or a host:port)
    — read as curl, pip and the standard library read them. A proxy named without a scheme
    (``proxy.hospital.local:3128``) is an http:// one, as curl takes it; an ALL_PROXY of
    another kind (socks5://) is not one these clients can use, and is passed by."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname:
        plain = parts.port is None or ":" in parts.hostname  # an IPv6 address: by itself
        host = parts.hostname if plain else f"{parts.hostname}:{parts.port}"
        if urllib.request.proxy_bypass(host):  # matches entries with and without a port
            return None
    proxies = urllib.request.getproxies()
    everything = _with_scheme(proxies.get("all"))
    if everything and not everything.startswith(("http://", "https://")):
        everything = None
    return _with_scheme(proxies.get(parts.scheme)) or everything


def _with_scheme(proxy: str | None) -> str | None:
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def without_password(url: str) -> str:
    """A proxy URL fit to print or log: a password in it is not."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{parts.username}:***@{parts.hostname}{port}").geturl()


def trusting(ca_file: Path | None) -> ssl.SSLContext | bool:
    """Verification against the public roots (or SSL_CERT_FILE), and also `ca_file`: the CA
    of a proxy that re-signs TLS, or of a private exchange."""
    if ca_file is None:
        return True
    context = httpx.create_ssl_context()
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{ca_file}: not a readable PEM file of CA certificates ({exc})") from exc
    return context


def _untrusted(exc: httpx.ConnectError, base_url: str) -> ExchangeNotTrusted | None:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    return ExchangeNotTrusted(
        f"the TLS certificate of {base_url} is not trusted ({cause.verify_message}). If a "
        "proxy on the way re-signs TLS, trust its CA: exchange.ca_file in the gateway's "
        "configuration, ca_file for the vendor SDK"
    )


def pause(attempt: int) -> float:
    """Seconds to wait after failed attempt `attempt` (from 0): 0.2 s, doubling, at most 5."""
    return min(0.2 * 2**attempt, 5.0)


def retry_after(response: httpx.Response) -> float | None:
    """The seconds an answer's `Retry-After` asks for, or None. Only a number of seconds is
    read: the other form, an HTTP date, would need the two clocks to agree."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isascii() and value.isdigit() else None


def retry_pause(attempt: int, asked: float | None) -> float:
    """Seconds to wait after failed attempt `attempt`: the back-off, or longer when the
    exchange asked for longer (up to `LONGEST_RETRY_AFTER`), so that every client does not
    knock again at once on an exchange that said when it could answer."""
    return max(pause(attempt), min(asked or 0.0, LONGEST_RETRY_AFTER))


class _TransientAnswer(httpx.TransportError):
    """A 502/503/504 answered to a download: started again, as a broken one is."""

    def __init__(self, answer: httpx.Response) -> None:
        super().__init__(f"{answer.status_code} from the exchange")
        self.answer = answer


def stopped_during(seconds: float, stop: threading.Event | None) -> bool:
    """Wait `seconds` before trying again, or less if `stop` is set meanwhile; whether it is
    set (then nothing is tried again)."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


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
        retries: int = RETRIES,
        transport: httpx.BaseTransport | None = None,
        proxy: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        """`retries`: further attempts of a request that could not connect, broke off, or met
        502/503/504 (the default rides out about 20 s of an exchange restarting); `proxy`: the
        HTTP proxy to reach the exchange through (default: the environment's, see
        `proxy_for`); `ca_file`: a CA to trust besides the public roots."""
        self.base_url = base_url.rstrip("/")
        self._retries = retries
        self._give_up: threading.Event | None = None
        #: The proxy requests go through, if any (the gateway logs it at start).
        self.proxy = proxy or proxy_for(self.base_url)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            # One transport, so one proxy: every request goes to the exchange's one host. It
            # does not retry connections itself: `request` and `download` retry every failure,
            # so one layer decides how long a request rides out an outage.
            transport=transport or httpx.HTTPTransport(proxy=self.proxy, verify=trusting(ca_file)),
        )

    def give_up_when(self, stop: threading.Event) -> None:
        """Once `stop` is set, a request that failed is not tried again: its error is raised
        at once. For a service being stopped whose every call can be made again at its next
        start (the gateway: its state says what is still to do), so that a stop during an
        outage does not wait out each call's retries (about 20 s). Not for a call whose
        work would be lost: a vendor worker hands its result in however it is stopped."""
        self._give_up = stop

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body_path: Path | None = None,
        retries: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send, retrying connection failures and 502/503/504 with backoff.

        The retry sends the very same request, so it suits idempotent calls only (nearly
        every exchange call is, by key). A call that is not, such as a claim, passes
        `retries=0` and retries itself, saying it is a retry (the default: the client's
        `retries`). A file body is given as `body_path` and streamed afresh on every attempt
        (a generator would be spent after the first).
        """
        retries = self._retries if retries is None else retries
        for attempt in range(retries + 1):
            if body_path is not None:
                kwargs["content"] = file_chunks(body_path)
            wait = pause(attempt)
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                if untrusted := _untrusted(exc, self.base_url):
                    raise untrusted from exc
                if attempt == retries or stopped_during(wait, self._give_up):
                    raise
            except httpx.TransportError:
                if attempt == retries or stopped_during(wait, self._give_up):
                    raise
            else:
                if response.status_code not in TRANSIENT or attempt == retries:
                    return checked(response, method, path)
                wait = retry_pause(attempt, retry_after(response))
                if stopped_during(wait, self._give_up):
                    return checked(response, method, path)
        raise AssertionError("unreachable")

    def download(
        self,
        path: str,
        target: Path,
        headers: dict[str, str] | None = None,
        media_types: frozenset[str] | None = None,
    ) -> int:
        """Stream a response body to `target` (written whole or not at all); returns its size.

        A broken connection or a 502/503/504 starts the download again from the beginning.
        `media_types`: the Content-Types the exchange serves this file with; a success with
        another (a proxy's HTML page answered 200) is not the file but an UnexpectedAnswer,
        and nothing is written. An answer without a Content-Type is taken: nothing says it
        is not the file.
        """
        partial = target.with_name(target.name + ".part")
        for attempt in range(self._retries + 1):
            size = 0
            try:
                with self._http.stream("GET", path, headers=headers) as response:
                    if response.status_code >= 300:  # a redirect's page is not the file
                        response.read()
                        if response.status_code in TRANSIENT and attempt < self._retries:
                            raise _TransientAnswer(response)
                        checked(response, "GET", path)
                    if media_types is not None:
                        _served_as(response, media_types)
                    with partial.open("wb") as out:
                        for chunk in response.iter_bytes(CHUNK):
                            out.write(chunk)
                            size += len(chunk)
            except httpx.TransportError as exc:
                partial.unlink(missing_ok=True)
                if isinstance(exc, httpx.ConnectError) and (
                    untrusted := _untrusted(exc, self.base_url)
                ):
                    raise untrusted from exc
                if attempt == self._retries or stopped_during(pause(attempt), self._give_up):
                    if isinstance(exc, _TransientAnswer):  # said as when retries run out
                        checked(exc.answer, "GET", path)
                    raise
                continue
            except BaseException:  # a full disk, a refusal, an interrupt: no half-file stays
                partial.unlink(missing_ok=True)
                raise
            partial.replace(target)
            return size
        raise AssertionError("unreachable")


def no_such_job(exc: BaseException) -> bool:
    """Whether the exchange answered that it has no such job (404 "no job …"): a job it
    forgot, its database restored to a moment before the job was made, or, for a key of
    another organisation, one it does not show. A 404 of something in front of the exchange
    says nothing of the job."""
    return (
        isinstance(exc, ExchangeHTTPError)
        and not isinstance(exc, UnexpectedAnswer)
        and exc.status == 404
        and exc.detail.startswith("no job ")
    )


def blob_gone(exc: BaseException) -> bool:
    """Whether the exchange answered that a blob it listed is gone for good (404): purged by
    its retention, or missing from its store (restored to an earlier moment). Not one replaced
    as it was read, which is there when asked again."""
    return (
        isinstance(exc, ExchangeHTTPError)
        and not isinstance(exc, UnexpectedAnswer)
        and exc.status == 404
        and (
            exc.detail.endswith("(retention)")  # "is no longer held", "was purged at …"
            or blob_lost(exc)
        )
    )


def blob_lost(exc: BaseException) -> bool:
    """Whether the exchange answered that a blob it listed is missing from its store, though
    retention did not take it (`BlobMissing`: the store restored to an earlier moment)."""
    return (
        isinstance(exc, ExchangeHTTPError)
        and not isinstance(exc, UnexpectedAnswer)
        and exc.status == 404
        and "is missing from the exchange's blob store" in exc.detail
    )


def checked(response: httpx.Response, method: str, path: str) -> httpx.Response:
    """The response if it is a success; otherwise the error it stands for. A redirect is not
    followed: the exchange's API never redirects, so one comes from something in front of
    it (a maintenance page), and its page is not the answer the caller waits for."""
    if response.status_code < 300:
        return response
    if response.status_code < 400:
        where = response.headers.get("Location", "nowhere")[:QUOTED_BODY]
        raise UnexpectedAnswer(response.status_code, f"a redirect to {where}", method, path)
    try:
        detail = str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        detail = response.text
    error = LeaseLost if response.status_code == 409 else ExchangeHTTPError
    raise error(response.status_code, detail, method, path, retry_after(response))


def _served_as(response: httpx.Response, media_types: frozenset[str]) -> None:
    """Raise UnexpectedAnswer unless the answer's Content-Type, if it has one, is among
    `media_types`: a page that something in front of the exchange answered 200 in its place
    would otherwise be saved, and used, as the file."""
    kind = response.headers.get("Content-Type")
    if kind is None or kind.split(";")[0].strip().lower() in media_types:
        return
    expected = " or ".join(sorted(media_types))
    raise unexpected(response, f"{kind[:QUOTED_BODY]}, not the {expected} expected")


def unexpected(response: httpx.Response, what: str) -> UnexpectedAnswer:
    """The error for an answer that is not what the call expects; `what` says what it was."""
    request = response.request
    return UnexpectedAnswer(
        response.status_code, what, request.method, request.url.path, retry_after(response)
    )


def json_object(response: httpx.Response, *fields: str) -> dict[str, Any]:
    """The answer's JSON object, which must hold at least `fields`: the shape every caller
    reads from. Anything else raises UnexpectedAnswer, not a KeyError or a JSON error deep in
    the caller, so that whoever runs the client sees in one place that the answer was wrong."""
    data = _parsed(response)
    if not isinstance(data, dict):
        raise unexpected(response, f"JSON that is not an object: {_quoted(response)}")
    if missing := [name for name in fields if name not in data]:
        raise unexpected(response, f"a JSON object without {', '.join(missing)}")
    return data


def json_list(response: httpx.Response, *fields: str) -> list[dict[str, Any]]:
    """The answer's JSON list of objects, each holding at least `fields` (see json_object)."""
    data = _parsed(response)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise unexpected(response, f"JSON that is not a list of objects: {_quoted(response)}")
    if any(name not in item for item in data for name in fields):
        raise unexpected(response, f"a list of objects without {', '.join(fields)}")
    return data


def _parsed(response: httpx.Response) -> Any:
    if not response.content:
        raise unexpected(response, "an empty answer, not the JSON expected")
    try:
        return response.json()
    except ValueError:  # not JSON, or not text at all
        kind = response.headers.get("Content-Type", "no Content-Type")
        raise unexpected(response, f"{kind}, not the JSON expected: {_quoted(response)}") from None


def _quoted(response: httpx.Response) -> str:
    """The start of the body on one line, to recognise whose page it is."""
    text = " ".join(response.content[:QUOTED_BODY].decode(errors="replace").split())
    return repr(text + ("…" if len(response.content) > QUOTED_BODY else ""))
