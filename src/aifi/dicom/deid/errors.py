"""The two ways de-identification of one instance can end without an output.

Messages name the rule and the attribute, never a value: they are shown to hospital staff and
written to logs that leave the hospital's control.
"""

from __future__ import annotations


class DeidError(Exception):
    """The input is not DICOM the engine can read or write back (truncated, malformed, …)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DeidRefused(Exception):
    """The input is readable but must not leave the hospital under the requested options.

    The typical case is burned-in text in the pixel data; `reason` is written for the person who
    decides whether to configure pixel cleaning for that source.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
