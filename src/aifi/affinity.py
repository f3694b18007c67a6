"""One exchange replica to one CPU core.

A replica is one Python process: its request threads and its event loop take turns holding the
interpreter lock, so it never uses much more than one core. Left to the scheduler, those threads
are spread over the cores, and every handoff of the lock becomes a wake-up across cores, which
costs tens of microseconds on a virtual machine (against about one on the same core), hundreds
of times per job. Pinned to one core, the replica's threads hand the lock over where they run:
on a two-core machine a lone PostgreSQL replica made a quarter as many context switches per
job, spent a fifth less CPU per job and did a quarter more jobs a second (docs/benchmarks.md).
Run one replica per core, each pinned to its own.
"""

from __future__ import annotations

import os


class NoSuchCore(ValueError):
    """The core asked for is not one this process may run on."""


def pin_to_core(core: int) -> None:
    """Run this process, and every thread it starts from now on, on `core` alone.

    Call it before the process starts its threads: a thread inherits the affinity of the one
    that starts it, and threads started earlier keep theirs.

    Raises
    ------
    NoSuchCore
        When `core` is not among the cores this process may use (naming those).
    """
    allowed = sorted(os.sched_getaffinity(0))
    if core not in allowed:
        raise NoSuchCore(
            f"core {core} is not one this process may run on (allowed: "
            f"{', '.join(map(str, allowed))})"
        )
    os.sched_setaffinity(0, {core})
