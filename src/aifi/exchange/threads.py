"""A replica's two kinds of worker thread: requests, and large blob transfers.

Blocking work (a transaction, a check, a file or object-store transfer) runs on worker
threads while the event loop goes on. A small job's request needs its thread for a few
milliseconds of the interpreter and a few round trips to the database; four such threads
keep a replica's core busy with PostgreSQL on the same network, and more only hand the
interpreter lock around: in alternating runs one busy replica spent 20–21 ms of CPU per
small job with ten threads and 16–17 with four (48 against 57 jobs/s), and forty (AnyIO's
default) were slower still. Where each statement's round trip takes a millisecond or more
(PostgreSQL far away), raise `AIFI_REQUEST_THREADS` until the replica's core is busy again.

A large instance or result may spend seconds on its way to or from the object store; on the
same few threads one of those would hold back every other request. So large transfers get
threads of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

#: Threads for requests (AnyIO's default limiter), `AIFI_REQUEST_THREADS`.
REQUEST_THREADS = 4
#: Threads for large uploads and streamed downloads, `AIFI_TRANSFER_THREADS`.
TRANSFER_THREADS = 16


def limit_request_threads(count: int) -> None:
    """Let at most `count` requests run their blocking work at once; call on the event loop
    (the limit belongs to the loop)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = count


class TransferThreads:
    """Runs large blob transfers on threads that requests do not wait for."""

    def __init__(self, count: int = TRANSFER_THREADS) -> None:
        self._limiter = anyio.CapacityLimiter(count)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)

    async def stream(self, chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
        """`chunks` read one by one on a transfer thread (a download from the object store);
        closed when the response ends, also when the client went away first."""
        iterator = iter(chunks)
        try:
            while (chunk := await self.run(next, iterator, None)) is not None:
                yield chunk
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
