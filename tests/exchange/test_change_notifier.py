"""Long-poll wake-ups: every change wakes job watchers, only claimable jobs wake claims."""

from __future__ import annotations

import asyncio

from aifi.exchange.notify import ChangeNotifier


def test_claims_sleep_through_changes_that_free_no_job_and_wake_for_those_that_do() -> None:
    async def scenario() -> None:
        notifier = ChangeNotifier()
        notifier.bind(asyncio.get_running_loop())
        watcher = asyncio.create_task(notifier.wait(60))
        claim = asyncio.create_task(notifier.wait(60, claimable=True))
        await asyncio.sleep(0)  # both tasks run up to their wait: registered

        notifier.notify()  # e.g. a job completed: nothing new to claim
        await asyncio.wait_for(watcher, 30)
        assert not claim.done()

        notifier.notify(claimable=True)  # a job became ready
        await asyncio.wait_for(claim, 30)

    asyncio.run(scenario())
