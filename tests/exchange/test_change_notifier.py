"""Long-poll wake-ups: a change wakes the job watchers of the organisations it touched (and the
operator's; everyone's when not known); a job made claimable wakes one claim of its vendor, the
longest waiting one that may take it."""

from __future__ import annotations

import asyncio

from aifi.exchange.notify import ChangeNotifier


def test_claims_sleep_through_changes_that_free_no_job_and_wake_for_those_that_do() -> None:
    async def scenario() -> None:
        notifier = ChangeNotifier()
        notifier.bind(asyncio.get_running_loop())
        watcher = asyncio.create_task(notifier.wait(60))
        claim = asyncio.create_task(notifier.wait_claimable(60, "vendor-a"))
        await asyncio.sleep(0)  # both tasks run up to their wait: registered

        notifier.notify()  # e.g. a job completed: nothing new to claim
        await asyncio.wait_for(watcher, 30)
        assert not claim.done()

        notifier.notify(claimable=True)  # jobs put back after a lease ran out: anyone's
        await asyncio.wait_for(claim, 30)

    asyncio.run(scenario())


def test_one_claimable_job_wakes_one_claim_of_its_vendor_that_may_take_it() -> None:
    async def scenario() -> None:
        notifier = ChangeNotifier()
        notifier.bind(asyncio.get_running_loop())
        other_vendor = asyncio.create_task(notifier.wait_claimable(60, "vendor-b"))
        other_product = asyncio.create_task(notifier.wait_claimable(60, "vendor-a", ["product-x"]))
        first = asyncio.create_task(notifier.wait_claimable(60, "vendor-a"))
        second = asyncio.create_task(notifier.wait_claimable(60, "vendor-a", ["product-a"]))
        await asyncio.sleep(0)
        waiting = [other_vendor, other_product, first, second]

        notifier.notify(claimable=True, vendor_id="vendor-a", product_id="product-a")
        await asyncio.wait_for(first, 30)
        await asyncio.sleep(0)
        assert [task.done() for task in waiting] == [False, False, True, False]

        notifier.notify(claimable=True, vendor_id="vendor-a", product_id="product-a")
        await asyncio.wait_for(second, 30)
        assert not other_vendor.done() and not other_product.done()

        notifier.notify(claimable=True)  # anyone's: everyone still waiting looks
        await asyncio.wait_for(asyncio.gather(other_vendor, other_product), 30)

    asyncio.run(scenario())


def test_a_change_wakes_the_waiters_of_the_organisations_it_touched_and_the_operators() -> None:
    """Seventy hospitals each keep a long-poll open: a job ending at one of them must not send
    the other sixty-nine back to the database."""

    async def scenario() -> None:
        notifier = ChangeNotifier()
        notifier.bind(asyncio.get_running_loop())
        own = asyncio.create_task(notifier.wait(60, "hospital-a"))
        other = asyncio.create_task(notifier.wait(60, "hospital-b"))
        vendor = asyncio.create_task(notifier.wait(60, "vendor-a"))
        operator = asyncio.create_task(notifier.wait(60))
        await asyncio.sleep(0)

        notifier.notify(organisations=("hospital-a", "vendor-a"))  # hospital-a's job ended
        await asyncio.wait_for(asyncio.gather(own, vendor, operator), 30)
        await asyncio.sleep(0)
        assert not other.done()

        again = asyncio.create_task(notifier.wait(60, "hospital-a"))
        await asyncio.sleep(0)
        notifier.notify(claimable=True)  # leases ran out: whose jobs is not known
        await asyncio.wait_for(asyncio.gather(other, again), 30)

    asyncio.run(scenario())
