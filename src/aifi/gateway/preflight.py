"""`aifi gateway --check`: everything the gateway needs, tried before it starts for real.

Connecting a gateway otherwise shows one wrong thing at a time, each in a log: the proxy, the
CA, the API key, a subscription, the PACS's AE titles. Each check here says what it tried and,
when it failed, what to change. None of them changes anything: the secret is not created, no
job is made, the listener's port is only bound for a moment.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import ssl
from pathlib import Path

import httpx

from aifi.checks import (
    Check,
    api_key_file_check,
    exchange_problem,
    exchange_route,
    private_problem,
)
from aifi.dicom.pseudonym import PseudonymKey
from aifi.file_lock import held_alone
from aifi.gateway.backup import WORKDIR_LOCK, restore_cut_off, secret_fingerprint
from aifi.gateway.config import DicomWebListener, GatewayConfig, PacsDestination
from aifi.gateway.dimse import echo
from aifi.gateway.exchange_client import GatewayClient
from aifi.gateway.notify.fhir import endpoint_verify
from aifi.gateway.notify.reach import check_connection, http_client, target_label
from aifi.gateway.notify.settings import FhirEndpoint, Hl7Endpoint, WebhookEndpoint
from aifi.gateway.secret import (
    VAULT,
    changed_secret_problem,
    missing_secret_problem,
    vault_keying,
)
from aifi.http import ExchangeHTTPError


def preflight(config: GatewayConfig, client: GatewayClient | None = None) -> list[Check]:
    """Every check, in the order the guide sets the gateway up."""
    checks = [
        _workdir(config.workdir),
        _secret(config.resolved_secret_file, config.workdir),
        _listener(config),
    ]
    if config.metrics_port is not None:
        checks.append(_exporter(config.metrics_host, config.metrics_port))
    if config.dicomweb is not None:
        checks += _stow(config.dicomweb)
    if config.exchange.api_key_file is not None:  # an `api_key` in the YAML has no file
        checks.append(api_key_file_check(config.exchange.api_key_file))
    own = client is None
    if client is None:
        try:
            client = GatewayClient.connecting(config.exchange, retries=0)
        except (OSError, ValueError) as exc:
            checks.append(Check("exchange", False, f"cannot call it: {exc}"))
    if client is not None:
        try:
            reached = _exchange(config, client)
            checks.append(reached)
            if reached.ok:
                checks += _products(config, client)
        finally:
            if own:
                client.close()
    checks += [_pacs(destination, config.calling_ae_title) for destination in config.pacs]
    notifications = config.notifications
    if notifications.hl7 is not None:
        checks.append(_hl7(notifications.hl7))
    if notifications.fhir is not None:
        checks.append(_fhir(notifications.fhir))
    if notifications.webhook is not None:
        checks.append(_webhook(notifications.webhook))
    return checks


def _workdir(workdir: Path) -> Check:
    name = "workdir"
    if not workdir.exists():
        parent = next(p for p in workdir.parents if p.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            return Check(name, False, f"{workdir} does not exist and {parent} is not writable")
        return Check(name, True, f"{workdir} will be created (mode 0700)")
    if not workdir.is_dir() or not os.access(workdir, os.W_OK | os.X_OK):
        return Check(name, False, f"{workdir} is not a folder this user can write")
    problem = private_problem(workdir)
    if problem:
        return Check(name, False, f"{workdir}: {problem} (it holds identifiable studies)")
    if (cut_off := restore_cut_off(workdir)) is not None:
        return Check(name, False, cut_off)
    with held_alone(workdir / WORKDIR_LOCK) as alone:
        if not alone:
            return Check(name, False, f"{workdir}: a gateway, or a restore, is running on it")
    return Check(name, True, f"{workdir}, writable, private")


def _secret(path: Path, workdir: Path) -> Check:
    name = "pseudonymisation secret"
    if (problem := missing_secret_problem(path, workdir)) is not None:
        return Check(name, False, problem)
    if not path.exists():
        # Its folders are made with it (the workdir's, say, on a first start).
        nearest = next(folder for folder in path.parents if folder.exists())
        if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
            return Check(name, False, f"{path} is missing and {nearest} is not writable")
        return Check(
            name,
            True,
            f"{path} is created at the first start in this new workdir (mode 0600): escrow it then",
        )
    try:
        key = PseudonymKey.from_file(path)
    except OSError as exc:
        return Check(name, False, f"{path}: cannot read it ({exc.strerror})")
    except ValueError as exc:
        return Check(name, False, f"{path}: {exc}")
    if problem := private_problem(path):
        return Check(name, False, f"{path}: {problem}")
    try:
        keying = vault_keying(workdir)
    except sqlite3.Error as exc:
        return Check(name, False, f"{workdir / VAULT}: cannot read it to check the secret ({exc})")
    if problem := changed_secret_problem(key, path, keying):
        return Check(name, False, problem)
    return Check(name, True, f"{path}, private, fingerprint {secret_fingerprint(key)}")


def _listener(config: GatewayConfig) -> Check:
    dicom = config.dicom
    problem = _cannot_listen(dicom.host, dicom.port)
    where = f"{dicom.host}:{dicom.port}"
    if problem:
        return Check("DICOM listener", False, f"cannot listen on {where}: {problem}")
    return Check("DICOM listener", True, f"{dicom.ae_title} can listen on {where}")


def _exporter(host: str, port: int) -> Check:
    name = "metrics exporter"
    problem = _cannot_listen(host, port)
    if problem:
        return Check(name, False, f"cannot listen on {host}:{port}: {problem}")
    return Check(name, True, f"can serve http://{host}:{port}/metrics to the monitoring")


def _stow(web: DicomWebListener) -> list[Check]:
    """The STOW-RS listener: its port, its certificate, and each sender's password file."""
    name = "STOW-RS listener"
    where = f"{web.host}:{web.port}"
    problem = _cannot_listen(web.host, web.port)
    if problem:
        checks = [Check(name, False, f"cannot listen on {where}: {problem}")]
    elif web.tls_cert_file is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                web.tls_cert_file, web.tls_key_file
            )
            checks = [Check(name, True, f"can serve https://{where}/dicom-web")]
        except (OSError, ssl.SSLError) as exc:
            checks = [Check(name, False, f"cannot use tls_cert_file and tls_key_file: {exc}")]
    else:
        checks = [Check(name, True, f"can serve http://{where}/dicom-web (plain HTTP)")]
    for sender in web.senders:
        private = private_problem(sender.password_file)
        checks.append(
            Check(
                f"STOW-RS sender {sender.name}",
                private is None,
                f"{sender.password_file}: {private}"
                if private
                else f"HTTP Basic user {sender.name}, password in {sender.password_file}",
            )
        )
    return checks


def _cannot_listen(host: str, port: int) -> str | None:
    """Why this host cannot listen on `host:port`, or None; the port is bound for a moment."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return {
                errno.EADDRINUSE: "another program listens there (a gateway already running?)",
                errno.EACCES: "ports below 1024 need privileges the service account lacks",
                errno.EADDRNOTAVAIL: "this host has no such address",
            }.get(exc.errno or 0, exc.strerror or str(exc))
    return None


def _exchange(config: GatewayConfig, client: GatewayClient) -> Check:
    name = "exchange"
    route = exchange_route(client)
    try:
        found = client.request("GET", "/organisations").json()
    except (ExchangeHTTPError, httpx.TransportError) as exc:
        return Check(name, False, exchange_problem(exc, route))
    mine = {str(org["id"]): str(org["kind"]) for org in found}
    if mine.get(config.hospital) != "hospital":
        holders = ", ".join(f"{org} ({kind})" for org, kind in mine.items()) or "nobody"
        return Check(
            name,
            False,
            f"the API key belongs to {holders}, not to hospital {config.hospital!r}",
        )
    return Check(name, True, f"{route}, as hospital {config.hospital}")


def _products(config: GatewayConfig, client: GatewayClient) -> list[Check]:
    try:
        rows = client.request("GET", "/subscriptions").json()
    except (ExchangeHTTPError, httpx.TransportError) as exc:
        return [Check("products", False, f"the hospital's subscriptions could not be read: {exc}")]
    subscribed = {str(row["product_id"]) for row in rows if row["active"]}
    checks = []
    for product_id in sorted({route.product for route in config.routes}):
        name = f"product {product_id}"
        try:
            product = client.product(product_id)
        except ExchangeHTTPError as exc:
            checks.append(Check(name, False, f"a route names it, but the exchange: {exc.detail}"))
            continue
        label = f"{product['name']} {product['version']} ({product['status']})"
        if product_id not in subscribed:
            checks.append(
                Check(
                    name,
                    False,
                    f"{label}: the hospital does not subscribe to it; its studies would be "
                    f"refused (subscribe: aifi gateway-subscriptions --config … --subscribe "
                    f"{product_id})",
                )
            )
        else:
            checks.append(Check(name, True, f"{label}, subscribed"))
    return checks


def _pacs(destination: PacsDestination, calling_ae: str) -> Check:
    name = f"PACS {destination.name}"
    problem = echo(destination.host, destination.port, destination.ae_title, calling_ae)
    if problem:
        return Check(name, False, problem)
    return Check(
        name,
        True,
        f"{destination.ae_title}@{destination.host}:{destination.port} answers {calling_ae}",
    )


def _hl7(endpoint: Hl7Endpoint) -> Check:
    """A connection only: a test message would land in the RIS."""
    problem = check_connection(endpoint, endpoint.timeout_seconds)
    if problem is not None:
        return Check("HL7 v2 (MLLP)", False, problem)
    where = target_label(endpoint)
    return Check("HL7 v2 (MLLP)", True, f"{where} accepts connections (no message sent)")


def _fhir(endpoint: FhirEndpoint) -> Check:
    """The server's CapabilityStatement (`GET [base]/metadata`), which every FHIR server
    answers and which writes nothing; and the bearer token's file, if one is named."""
    name = "FHIR"
    try:
        endpoint.bearer_token()  # as each report reads it
    except OSError as exc:
        return Check(name, False, f"{endpoint.bearer_token_file}: {exc.strerror or exc}")
    except ValueError as exc:  # empty, two tokens, or not text
        return Check(name, False, f"bearer token: {exc}")
    url = endpoint.base_url.rstrip("/") + "/metadata"
    try:
        with http_client(endpoint.base_url, endpoint_verify(endpoint)) as client:
            response = client.get(
                url, headers={"Accept": "application/fhir+json"}, timeout=endpoint.timeout_seconds
            )
        statement = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError) as exc:
        return Check(name, False, f"{url}: {exc}")
    if statement.get("resourceType") != "CapabilityStatement":
        return Check(
            name, False, f"{url} answered {response.status_code}, not a CapabilityStatement"
        )
    software = statement.get("software", {}).get("name", "a FHIR server")
    return Check(name, True, f"{software}, FHIR {statement.get('fhirVersion', '?')} at {url}")


def _webhook(endpoint: WebhookEndpoint) -> Check:
    """Its signing key and a connection to its host (or to the proxy that carries it): a
    request would page someone."""
    name = "STAT webhook"
    try:
        endpoint.signing_key()  # as each alert reads it
    except OSError as exc:
        return Check(name, False, f"signing key file {endpoint.secret_file}: {exc.strerror or exc}")
    except ValueError as exc:  # empty, or not text
        return Check(name, False, f"signing key: {exc}")
    problem = check_connection(endpoint, endpoint.timeout_seconds)
    if problem is not None:
        return Check(name, False, problem)
    return Check(name, True, f"{target_label(endpoint)} accepts connections (no alert sent)")
