"""Why a notification did not arrive: one error type per kind of failure, each saying whether
a later attempt can help, so that the gateway knows to retry or to record and move on."""

from __future__ import annotations


class NotificationError(RuntimeError):
    """A channel could not deliver a notice.

    `channel` is ``hl7``, ``fhir`` or ``webhook``; `retryable` says whether the same message
    may succeed later (the receiver was down or slow) or will be refused again (its content
    was rejected). Messages name the endpoint, the message id and the rule, never the patient.
    """

    def __init__(self, channel: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.channel = channel
        self.retryable = retryable


class DeliveryFailed(NotificationError):
    """The receiver could not be reached, did not answer in time, or answered garbled.

    `unreached` is True when no attempt got as far as a connection (refused, no route, a
    name that does not resolve, no answer to it in time): a connection made later shows the
    receiver back (`aifi.gateway.notify.reach`). `stopped`: the gateway's stop cut the send
    short, which says nothing of the receiver. `sent` False: no attempt had a connection to
    send the message on, so it never left the gateway and discloses nothing; by default, so
    when the receiver was never reached (a connection kept open may carry a message and yet
    not count as reaching the receiver: its sender says)."""

    def __init__(
        self,
        channel: str,
        message: str,
        *,
        unreached: bool = False,
        stopped: bool = False,
        sent: bool | None = None,
    ) -> None:
        super().__init__(channel, message, retryable=True)
        self.unreached = unreached
        self.stopped = stopped
        self.sent = not unreached if sent is None else sent


class NotPrepared(NotificationError):
    """The gateway could not prepare the request from its own settings (a signing key or
    bearer token file it cannot read, mid-rotation say): nothing left, and the receiver was
    not asked, so nothing is said of it. Tried again later, as the file may be back."""

    def __init__(self, channel: str, message: str) -> None:
        super().__init__(channel, message, retryable=True)


class Hl7Rejected(NotificationError):
    """The HL7 receiver answered with a negative acknowledgement (AE/AR or CE/CR).

    AE (application error) concerns the message content and will recur; AR (application
    reject) may be a passing problem of the receiver, so it counts as retryable.
    """

    def __init__(self, message: str, *, code: str, control_id: str, text: str) -> None:
        super().__init__("hl7", message, retryable=code in {"AR", "CR"})
        self.code = code
        self.control_id = control_id
        self.text = text


class HttpRejected(NotificationError):
    """A FHIR server or webhook receiver refused the request (a 4xx other than 408/429)."""

    def __init__(self, channel: str, message: str, *, status: int) -> None:
        super().__init__(channel, message, retryable=False)
        self.status = status
