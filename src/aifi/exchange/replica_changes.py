"""Job changes made by other replicas, heard through PostgreSQL's LISTEN/NOTIFY.

A replica's long-polls (a vendor's claim, a gateway's wait for ended jobs) are woken by its own
changes at once; without this they would see another replica's changes only at their next
periodic re-check, up to a second later. Every transaction that changes a job also sends a
notification on :data:`CHANNEL`, which PostgreSQL delivers when (and only if) it commits; each
replica keeps one connection listening and wakes its waiters.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import select
import socket
import threading
from collections.abc import Collection
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from aifi.exchange.db import execute_core, normalised_url
from aifi.exchange.notify import ChangeNotifier

log = logging.getLogger(__name__)

CHANNEL = "aifi_jobs"
#: This process's name on the channel: a replica already woke its own waiters for its changes.
REPLICA = secrets.token_hex(8)
CLAIMABLE, CHANGED = "claimable", "changed"
#: Seconds between attempts to listen again after the database went away.
RECONNECT_SECONDS = 1.0
#: TCP keepalives for the listening connection (libpq's names), unless the database URL sets
#: them: it only ever reads, so a connection lost without a word (a failover that moved the
#: address, a firewall dropping an idle flow) would otherwise leave the replica deaf to the
#: others for hours, its long-polls woken only by their one-second re-check. With these it
#: notices within about a minute and listens again.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


#: Built once: it runs in nearly every transaction that changes a job.
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def announce(
    session: Session,
    *,
    claimable: bool = False,
    vendor_id: str | None = None,
    product_id: str | None = None,
    organisations: Collection[str] | None = None,
) -> None:
    """Tell every replica, at this transaction's commit, that a job changed (`claimable`: one
    became ready to claim, for `vendor_id`'s `product_id` when it is one job; `organisations`:
    whose jobs changed, when known)."""
    payload = change_payload(REPLICA, claimable, vendor_id, product_id, organisations)
    execute_core(session, _NOTIFY, {"channel": CHANNEL, "payload": payload})


def change_payload(
    replica: str,
    claimable: bool,
    vendor_id: str | None,
    product_id: str | None,
    organisations: Collection[str] | None,
) -> str:
    """Five fields separated by spaces: the sending replica, the kind of change, for one
    claimable job its vendor and product, and the organisations whose jobs changed, separated
    by commas (ids are slugs: no spaces, no commas). A field not known is empty. A replica of
    an earlier release reads the first four and wakes everyone, as it did."""
    kind = CLAIMABLE if claimable else CHANGED
    vendor, product = (vendor_id or "", product_id or "") if claimable else ("", "")
    touched = ",".join(organisations) if organisations is not None else ""
    return f"{replica} {kind} {vendor} {product} {touched}"


class ReplicaChanges:
    """A thread that listens on :data:`CHANNEL` and wakes this replica's waiters."""

    def __init__(self, database_url: str, notifier: ChangeNotifier) -> None:
        # psycopg's own arguments, as the engine's connections get them: a URL naming a primary
        # and its standby (`?host=a:5432&host=b:5432&target_session_attrs=read-write`) is not
        # one libpq reads, and this connection must follow a failover as the pool does.
        url = make_url(normalised_url(database_url))
        _, arguments = url.get_dialect()().create_connect_args(url)
        arguments.pop("context", None)
        self._arguments: dict[str, Any] = {**KEEPALIVES, **arguments}
        self._notifier = notifier
        self._stop = threading.Event()
        # The listener sleeps until the database sends something or `stop` writes here: an
        # idle replica does not wake at all (a 0.1 s poll cost it 1 % of a core, 10 wake-ups
        # a second).
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="replica-changes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._wake_reader.close()
            self._wake_writer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    autocommit=True, connect_timeout=5, **self._arguments
                ) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    # Changes made while we were not listening: wake waiters to look again.
                    self._notifier.notify(claimable=True)
                    while not self._stop.is_set():
                        # What arrived with the last read (or with LISTEN's answer) first.
                        for change in connection.notifies(timeout=0):
                            self._heard(change.payload)
                        self._sleep_until_data(connection)
            except psycopg.Error as exc:
                log.warning("not hearing other replicas' job changes (%s); retrying", exc)
                self._stop.wait(RECONNECT_SECONDS)
            except Exception:  # never leave the replica deaf: log, listen again
                log.exception("listening for other replicas' job changes failed; retrying")
                self._stop.wait(RECONNECT_SECONDS)

    def _sleep_until_data(self, connection: psycopg.Connection[Any]) -> None:
        """Return when the database sends something (a notification, or the end of the
        connection, which the next read reports) or `stop` is called."""
        select.select([connection.fileno(), self._wake_reader.fileno()], [], [])

    def _heard(self, payload: str) -> None:
        """Wake this replica's waiters for another replica's change (its own woke them)."""
        replica, kind, vendor_id, product_id, touched = [*payload.split(" "), "", "", "", ""][:5]
        if replica == REPLICA:
            return
        self._notifier.notify(
            claimable=kind != CHANGED,
            vendor_id=vendor_id or None,
            product_id=product_id or None,
            organisations=touched.split(",") if touched else None,
        )
