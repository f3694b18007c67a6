"""What becomes of an instance a sender offers the gateway, by C-STORE or by STOW-RS."""

from __future__ import annotations

import re
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
