"""Wake long-polling requests when jobs change, from any thread of this process.

On PostgreSQL other replicas' changes arrive through LISTEN/NOTIFY (`replica_changes`).
Waiters also re-check on a short period, so the notifier only makes the common case fast,
never correct.
"""

from __future__ import annotations

import asyncio
import threading


class ChangeNotifier:
    """Two kinds of waiter: those woken by any job change (a hospital waiting for ended jobs)
    and those woken only when a job becomes claimable (vendors' claims, the most numerous)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._claim_waiters: set[asyncio.Future[None]] = set()
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, *, claimable: bool = False) -> None:
        """A job changed (`claimable`: one became ready to claim); callable from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, claimable)

    def _wake(self, claimable: bool) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, set()
            if claimable:
                waiters |= self._claim_waiters
                self._claim_waiters = set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout: float, *, claimable: bool = False) -> None:
        """Return at the next change (with `claimable`, the next job ready to claim) or after
        `timeout` seconds, whichever comes first."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._claim_waiters if claimable else self._waiters
        with self._lock:
            waiters.add(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(waiter)
                self._claim_waiters.discard(waiter)
