"""Checks before a first start (`aifi gateway --check`, `aifi exchange --check`), shown as
one table: a person setting up a gateway or a replica sees every problem at once, each with
what to change, instead of one at a time in a log."""

from __future__ import annotations

import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from aifi.http import ApiClient, ExchangeHTTPError, ExchangeNotTrusted, without_password


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


#: Permission bits that let others than the owner in: a secret, or identifiable data, must
#: have none of them.
OTHERS = 0o077


def private_problem(path: Path) -> str | None:
    """What is wrong with `path`'s permissions for a secret (or identifiable data), if anything."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & OTHERS:
        return None
    wanted = 0o700 if path.is_dir() else 0o600
    return f"mode {mode:04o}: others may read it; make it {wanted:04o}"


def api_key_file_check(path: Path) -> Check:
    """The API key's file, held to a secret's rule: a key others on the host can read lets them
    act as the hospital or vendor at the exchange. The gateway's and the worker's checks say it
    in the same words."""
    name = "API key file"
    try:
        problem = private_problem(path)
    except OSError as exc:
        return Check(name, False, f"{path}: cannot read it ({exc.strerror})")
    if problem:
        return Check(name, False, f"{path}: {problem}")
    return Check(name, True, f"{path}, private")


def exchange_route(client: ApiClient) -> str:
    """The exchange's address as the checks name it, with the proxy on the way, if any."""
    proxy = f" through proxy {without_password(client.proxy)}" if client.proxy else ""
    return client.base_url + proxy


def exchange_problem(exc: ExchangeHTTPError | httpx.TransportError, route: str) -> str:
    """What went wrong asking the exchange at `route`, put as what to look at."""
    if isinstance(exc, ExchangeNotTrusted):
        return str(exc)
    if isinstance(exc, httpx.TransportError):
        return f"cannot reach {route}: {exc or type(exc).__name__} (DNS, firewall, proxy?)"
    if exc.status == 401:
        return f"{route} refused the API key (401): {exc.detail}"
    return f"{route} answered {exc.status}: {exc.detail}"


def show(title: str, checks: Sequence[Check]) -> bool:
    """Print the table and a one-line verdict; True when every check passed."""
    table = Table("check", "", "what was found", title=title)
    for item in checks:
        table.add_row(item.name, "[green]ok[/]" if item.ok else "[red]FAILED[/]", item.detail)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    failed = [item.name for item in checks if not item.ok]
    if failed:
        console.print(f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}")
        return False
    console.print(f"all {len(checks)} checks passed")
    return True
