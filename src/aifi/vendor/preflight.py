"""`aifi worker --check`: what a vendor's worker needs, tried before it claims a job.

A worker that cannot do its work otherwise says so one way at a time, in its log: a key the
exchange refuses (a warning a second), a product registered under another vendor or not yet
admitted (no job ever comes), a folder without room (each job handed back). Each check here
says what it tried and what to change. None of them changes anything.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import httpx

from aifi.checks import Check, api_key_file_check, exchange_problem, exchange_route
from aifi.http import ExchangeHTTPError, UnexpectedAnswer, json_list, json_object
from aifi.vendor.client import VendorClient

#: Free space a worker's folder should have: a large study's inputs and the product's outputs.
ROOM_WANTED = 2 * 1024**3


def preflight(
    client: VendorClient, product_id: str, api_key_file: Path, workdir: Path | None
) -> list[Check]:
    """Every check, in the order the vendor guide sets a worker up."""
    checks = [api_key_file_check(api_key_file), _workdir(workdir)]
    reached, vendor = _exchange(client)
    checks.append(reached)
    if vendor is not None:
        checks.append(_product(client, product_id, vendor))
    return checks


def _workdir(workdir: Path | None) -> Check:
    name = "workdir"
    folder = workdir or Path(tempfile.gettempdir())
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return Check(name, False, f"{folder}: {existing} is not a folder this user can write")
    free = shutil.disk_usage(existing).free
    room = f"{free / 1024**3:.1f} GiB free"
    if free < ROOM_WANTED:
        return Check(
            name,
            False,
            f"{folder}: {room}; a large study and its results need {ROOM_WANTED // 1024**3} "
            "GiB, or jobs are handed back (choose another with --workdir)",
        )
    made = "" if existing == folder else " (created at start)"
    return Check(name, True, f"{folder}{made}, writable, {room}")


def _exchange(client: VendorClient) -> tuple[Check, str | None]:
    """Whether the exchange takes the key, and as which vendor."""
    name = "exchange"
    route = exchange_route(client)
    try:
        found = json_list(client.request("GET", "/organisations"), "id", "kind")
    except UnexpectedAnswer as exc:
        # A typo in --exchange landing on some web server, a captive portal, a TLS proxy's
        # block page: each answers, but not as the exchange's API does.
        return Check(name, False, _not_an_exchange(route, exc.detail)), None
    except (ExchangeHTTPError, httpx.TransportError) as exc:
        if isinstance(exc, ExchangeHTTPError) and exc.status == 404:  # every exchange has it
            return Check(name, False, _not_an_exchange(route, "404 Not Found")), None
        return Check(name, False, exchange_problem(exc, route)), None
    vendors = [str(org["id"]) for org in found if org["kind"] == "vendor"]
    if len(vendors) != 1:
        holders = ", ".join(f"{org['id']} ({org['kind']})" for org in found) or "nobody"
        return Check(name, False, f"the API key belongs to {holders}, not to a vendor"), None
    return Check(name, True, f"{route}, as vendor {vendors[0]}"), vendors[0]


def _not_an_exchange(route: str, answer: str) -> str:
    return (
        f"{route} is not an AIFI exchange: GET /organisations answered {answer} "
        "(check --exchange, and any proxy on the way)"
    )


def _product(client: VendorClient, product_id: str, vendor: str) -> Check:
    name = f"product {product_id}"
    try:
        answer = client.request("GET", f"/products/{product_id}")
        product = json_object(answer, "name", "version", "vendor", "status")
    except ExchangeHTTPError as exc:
        if exc.status == 404:
            return Check(name, False, f"not in the catalogue: register it (--register {vendor})")
        return Check(name, False, f"the exchange answered {exc.status}: {exc.detail}")
    except httpx.TransportError as exc:
        return Check(name, False, f"could not be read: {exc}")
    label = f"{product['name']} {product['version']}"
    if product["vendor"] != vendor:
        return Check(
            name,
            False,
            f"{label} is {product['vendor']}'s: this worker would never be offered its jobs",
        )
    if product["status"] != "admitted":
        return Check(
            name,
            False,
            f"{label} is {product['status']}: no hospital can send it studies until the "
            "national operator admits it",
        )
    return Check(name, True, f"{label}, admitted")
