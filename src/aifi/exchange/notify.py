"""Wake long-polling requests when jobs change, from any thread of this process.

On PostgreSQL other replicas' changes arrive through LISTEN/NOTIFY (`replica_changes`).
Waiters also re-check on a short period, so the notifier only makes the common case fast,
never correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class _ClaimWaiter:
    future: asyncio.Future[None]
    vendor_id: str | None
    product_ids: frozenset[str]

    def wants(self, vendor_id: str, product_id: str | None) -> bool:
        if self.vendor_id not in (None, vendor_id):
            return False
        return not self.product_ids or product_id is None or product_id in self.product_ids


class ChangeNotifier:
    """Two kinds of waiter: those woken by a change to their organisation's jobs (a hospital
    waiting for ended jobs), and vendors' claims, woken when a job becomes claimable.

    A change wakes the waiters of the organisations it touched (a job's hospital and vendor)
    and the operator's, not every organisation's: seventy hospitals' gateways each keep a
    long-poll open, and a job ending at one of them would otherwise send all seventy polls
    back to the database, on every replica. A change whose organisations are not known (jobs
    put back after their leases ran out, a replica that listens again) wakes everyone.

    A job made claimable for a known vendor wakes one of that vendor's waiting claims, the
    longest waiting: one job can go to one claim only, and waking every waiting worker of the
    vendor made all but one of them run a claim that found nothing.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        #: By the organisation whose jobs they wait on; None: any organisation's (the operator).
        self._waiters: dict[str | None, set[asyncio.Future[None]]] = {}
        self._claim_waiters: list[_ClaimWaiter] = []
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(
        self,
        *,
        claimable: bool = False,
        vendor_id: str | None = None,
        product_id: str | None = None,
        organisations: Collection[str] | None = None,
    ) -> None:
        """A job changed; callable from any thread.

        `claimable`: one became ready to claim — for `vendor_id`'s `product_id` if given (one
        claim of that vendor is woken), else for anyone (every claim is woken).
        `organisations`: those whose jobs changed (each job's hospital and vendor); None when
        not known, which wakes every organisation's waiters.
        """
        loop = self._loop
        if loop is not None and not loop.is_closed():
            touched = None if organisations is None else frozenset(organisations)
            loop.call_soon_threadsafe(self._wake, claimable, vendor_id, product_id, touched)

    def _wake(
        self,
        claimable: bool,
        vendor_id: str | None,
        product_id: str | None,
        organisations: frozenset[str] | None,
    ) -> None:
        with self._lock:
            woken = [
                future
                for organisation in self._touched(organisations)
                for future in self._waiters.pop(organisation, ())
            ]
            if claimable and vendor_id is None:
                woken += [waiter.future for waiter in self._claim_waiters]
                self._claim_waiters = []
            elif claimable and vendor_id is not None:
                chosen = next(
                    (
                        waiter
                        for waiter in self._claim_waiters
                        if not waiter.future.done() and waiter.wants(vendor_id, product_id)
                    ),
                    None,
                )
                if chosen is not None:
                    self._claim_waiters.remove(chosen)
                    woken.append(chosen.future)
        for future in woken:
            if not future.done():
                future.set_result(None)

    def watchers(self, organisation_id: str | None = None) -> int:
        """How many long-polls wait on `organisation_id`'s jobs (None: on anyone's)."""
        with self._lock:
            return len(self._waiters.get(organisation_id, ()))

    def _touched(self, organisations: frozenset[str] | None) -> list[str | None]:
        """Whose waiters a change to `organisations`' jobs wakes (the operator's always)."""
        if organisations is None:
            return list(self._waiters)
        return [None, *organisations]

    async def wait(self, timeout: float, organisation_id: str | None = None) -> None:
        """Return at the next change to `organisation_id`'s jobs (None: anyone's) or after
        `timeout` seconds, whichever comes first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.setdefault(organisation_id, set()).add(future)
        try:
            await _until(future, timeout)
        finally:
            with self._lock:
                waiting = self._waiters.get(organisation_id)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[organisation_id]

    async def wait_claimable(
        self, timeout: float, vendor_id: str | None = None, product_ids: Sequence[str] = ()
    ) -> None:
        """Return when a job this vendor may claim (of `product_ids`, if any) becomes
        claimable, or after `timeout` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _ClaimWaiter(future, vendor_id, frozenset(product_ids))
        with self._lock:
            self._claim_waiters.append(waiter)
        try:
            await _until(future, timeout)
        finally:
            with self._lock:
                if waiter in self._claim_waiters:
                    self._claim_waiters.remove(waiter)


async def _until(future: asyncio.Future[None], timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(future), timeout)
