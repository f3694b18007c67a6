"""What becomes of an instance a sender offers the gateway, by C-STORE or by STOW-RS."""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass

UID = re.compile(r"^[0-9][0-9.]{0,63}$")

#: Statuses of a C-STORE (PS3.4 Annex B); STOW-RS answers them as Failure Reasons.
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC210
OUT_OF_RESOURCES = 0xA700
#: An instance sent by STOW-RS to a study it does not belong to (the "does not match" family).
STUDY_MISMATCH = 0xA900


@dataclass(frozen=True)
class Receipt:
    """A status, what could be read of the instance, and why it was refused."""

    status: int
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.status == SUCCESS


#: The `reason` label of a refused instance, by status.
REASONS = {
    CANNOT_UNDERSTAND: "not-dicom",
    OUT_OF_RESOURCES: "cannot-store",
    STUDY_MISMATCH: "wrong-study",
}


class Refusals:
    """What was refused at receipt since the gateway started, for its metrics: refused
    instances by way in, sender and reason, and STOW-RS requests refused whole by status.

    The one tally the gateway keeps in memory: a refusal leaves nothing in the state database
    (and a full disk, one of its reasons, could not record it there). Prometheus's `increase()`
    takes a restart's return to zero as a reset.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: Counter[tuple[str, str, str]] = Counter()
        self._requests: Counter[str] = Counter()

    def instance(self, way: str, sender: str, status: int) -> None:
        reason = REASONS.get(status, f"status-{status:04x}")
        with self._lock:
            self._instances[(way, sender, reason)] += 1

    def request(self, status: int) -> None:
        with self._lock:
            self._requests[str(status)] += 1

    def instances(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._instances)

    def requests(self) -> dict[str, int]:
        with self._lock:
            return dict(self._requests)
