"""Whether a notice receiver takes connections: told apart from whether it answers.

A receiver that could not even be connected to (its port closed while a RIS restarts, no
route, a name that does not resolve, or no answer to the connection at all, as behind a
firewall that drops it) is back as soon as it takes a connection again, and a
connection is something the gateway can check without sending anything: no message lands in
the RIS, no alert pages anyone. A receiver that took the connection and then did not answer
in time, or answered with errors, is another matter: only a notice that gets through shows
it is back. So the senders say which of the two a failure was (`DeliveryFailed.unreached`),
and the notice lanes check an unreached receiver's connection when its pause is over
(`Notifier.check_unreached`), so that the gateway's monitoring sees it come back even when no
notice is waiting to try it.
"""

from __future__ import annotations

import errno
import socket
import ssl

import httpx

from aifi.gateway.notify.settings import FhirEndpoint, Hl7Endpoint, WebhookEndpoint
from aifi.http import proxy_for

#: What the operating system says of a connection that could not be made.
NOT_CONNECTED_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH})


def connect_target(endpoint: Hl7Endpoint | FhirEndpoint | WebhookEndpoint) -> tuple[str, int]:
    """The host and port a notice to `endpoint` connects to first: the receiver's own, or,
    for FHIR and the webhook, the proxy the environment names for its URL."""
    if isinstance(endpoint, Hl7Endpoint):
        return endpoint.host, endpoint.port
    url = _url_of(endpoint)
    target = httpx.URL(proxy_for(url) or url)
    return str(target.host), target.port or (443 if target.scheme == "https" else 80)


def http_client(url: str, verify: bool | ssl.SSLContext = True) -> httpx.Client:
    """A client for the receiver at `url` that goes through the proxy `connect_target` names
    (`aifi.http.proxy_for`) and no other: what a check connects to is where notices go."""
    return httpx.Client(transport=httpx.HTTPTransport(proxy=proxy_for(url), verify=verify))


def target_label(endpoint: Hl7Endpoint | FhirEndpoint | WebhookEndpoint) -> str:
    """`connect_target` for people: ``host:port``, a proxy named as such."""
    host, port = connect_target(endpoint)
    own = isinstance(endpoint, Hl7Endpoint) or httpx.URL(_url_of(endpoint)).host == host
    return f"{host}:{port}" + ("" if own else " (its proxy)")


def check_connection(
    endpoint: Hl7Endpoint | FhirEndpoint | WebhookEndpoint, timeout: float
) -> str | None:
    """Why a TCP connection to where notices to `endpoint` go first cannot be made, or None
    when one can. The connection is closed at once: nothing is sent on it."""
    try:
        socket.create_connection(connect_target(endpoint), timeout).close()
    except OSError as exc:
        return f"cannot connect to {target_label(endpoint)}: {exc.strerror or exc}"
    return None


def _url_of(endpoint: FhirEndpoint | WebhookEndpoint) -> str:
    return endpoint.base_url if isinstance(endpoint, FhirEndpoint) else endpoint.url


def never_connected(exc: httpx.TransportError) -> bool:
    """True only when an HTTP request surely failed before its TCP connection was made: the
    connection refused, no route to the host, or a name that does not resolve; or, for a
    plain http:// URL, no answer to the connection in time. httpx says ConnectError and
    ConnectTimeout also for a TLS handshake that failed, was reset or was not answered, which
    come after the connection: a receiver reached, which a connection would wrongly show back.
    Anything not surely before the connection counts as after it."""
    if isinstance(exc, httpx.ConnectTimeout):
        try:
            return exc.request.url.scheme == "http"
        except RuntimeError:  # no request recorded: say nothing it cannot know
            return False
    if not isinstance(exc, httpx.ConnectError):
        return False
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return False
        if isinstance(cause, socket.gaierror) or (
            isinstance(cause, OSError) and cause.errno in NOT_CONNECTED_ERRNOS
        ):
            return True
        seen.add(id(cause))
        # httpcore raises its own error with `from None`: the OS's is its context.
        cause = cause.__cause__ or cause.__context__
    return False
