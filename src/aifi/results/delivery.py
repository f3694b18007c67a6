"""What became of a completed job's results at the hospital, as its gateway tells the exchange
when it acknowledges the job: the exchange's only view past its own door.

Shared by the exchange, which keeps it on the job, and the gateway, which says it; the national
operator counts the results that never reached a radiologist by product, and a gateway restored
from an earlier backup reads back what it did with a job it forgot.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Delivery(StrEnum):
    """A completed job's results at the hospital. Only `delivered` put them in the PACS."""

    #: Filed in every PACS the hospital configured (a completed job an acknowledgement that
    #: says what became of results does not name).
    delivered = "delivered"
    #: They could not be filed as they are (unreadable, reusing the study's own UIDs, a
    #: name no result may have): what the vendor made, the same when fetched again.
    unfileable = "unfileable"
    #: The gateway could not map them back to the patient's study: its vault no longer knows
    #: the study, or the exchange names another study for the job. The hospital's side (or
    #: the exchange's), not the vendor's results.
    unmapped = "unmapped"
    #: The exchange purged them, after its retention time, before the gateway fetched them.
    purged = "purged"
    #: The hospital chose not to bring the job home (`aifi gateway-unknown-jobs --let-go`).
    let_go = "let_go"
    #: The exchange's blob store lost them before the gateway fetched them (restored to an
    #: earlier moment, or emptied by something other than retention); the gateway sends the
    #: study again when it can.
    lost = "lost"


#: What a gateway may say of results that did not reach the PACS.
#: (Spelled out, so that a refusal names the values as they are sent.)
NotDelivered = Literal["unfileable", "unmapped", "purged", "let_go", "lost"]

#: Why results did not reach the PACS, in words for the hospital's records.
NOT_DELIVERED_BECAUSE = {
    Delivery.unfileable: "they could not be filed in the PACS as they are",
    Delivery.unmapped: "they could not be mapped back to the patient's study",
    Delivery.purged: "the exchange purged them before the gateway fetched them",
    Delivery.let_go: "the hospital let the job go without bringing it home",
    Delivery.lost: "the exchange's store lost them before the gateway fetched them",
}
