"""Replacement values: dummies per VR (action D), shifted dates (C under Modified Dates) and
free text with the identity taken out (C under Clean Descriptors / Structured Content).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset

#: Non-empty dummy values that hold no identity and are valid for their VR (action D).
_DUMMIES: dict[str, Any] = {
    "AE": "ANONYMOUS",
    "AS": "000D",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UR": "ANONYMIZED",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "AT": 0,
    "OB": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
}

#: VRs whose values are free or coded text that may carry identity.
TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT", "PN", "CS", "AE", "UR"})
#: VRs of free-text comments, where anything can be written.
FREE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC"})


def dummy_value(vr: str) -> Any:
    """A non-empty value for `vr` that holds no identity; a sequence gets one empty item."""
    if vr == "SQ":
        return [Dataset()]
    # Ambiguous VRs like "US or SS" / "OB or OW": the first one is as good a dummy as any.
    return _DUMMIES.get(vr.split(" ")[0], b"\x00\x00")


def shift_date(value: str, days: int) -> str:
    """A DA value moved `days` back; an unparseable value becomes empty rather than leak."""
    text = value.strip()
    if len(text) != 8 or not text.isdigit():
        return ""
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:])) - dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def shift_datetime(value: str, days: int) -> str:
    """A DT value whose date part moves `days` back (time of day and UTC offset survive).

    A DT with less than a full date (only a year or a month) cannot be shifted exactly and is
    emptied.
    """
    text = value.strip()
    if len(text) < 8:
        return ""
    shifted = shift_date(text[:8], days)
    return shifted + text[8:] if shifted else ""


_DATE_PATTERNS = (
    re.compile(r"\b\d{4}[-./]?\d{2}[-./]?\d{2}\b"),
    re.compile(r"\b\d{1,2}[-./]\d{1,2}[-./]\d{2,4}\b"),
)
_LONG_NUMBER = re.compile(r"\d{5,}")
_SPACES = re.compile(r"\s{2,}")


class TextCleaner:
    """Removes the instance's own identity from free text (the "C" of descriptors and content).

    The identity tokens are the values the profile removes from the same instance (names, IDs,
    addresses, dates, institution …): a descriptor such as "CT HEAD DOE JOHN 123456" becomes
    "CT HEAD". Dates and long digit runs (identifier-like) go too, whoever they belong to.
    """

    def __init__(self, identity_values: Iterable[str]) -> None:
        tokens: set[str] = set()
        for value in identity_values:
            for token in re.split(r"[\s^=,;:/\\()\[\]\"']+", value):
                token = token.strip(".-_")
                if len(token) >= 3 or (len(token) == 2 and not token.isdigit()):
                    tokens.add(token.lower())
        ordered = sorted(tokens, key=len, reverse=True)
        self._pattern = (
            re.compile(
                r"(?<![0-9A-Za-z])(?:"
                + "|".join(re.escape(t) for t in ordered)
                + r")(?![0-9A-Za-z])",
                re.IGNORECASE,
            )
            if ordered
            else None
        )

    def clean(self, text: str) -> str:
        """The text without identity tokens, dates and long numbers, spaces tidied."""
        if self._pattern is not None:
            text = self._pattern.sub(" ", text)
        for pattern in _DATE_PATTERNS:
            text = pattern.sub(" ", text)
        text = _LONG_NUMBER.sub(" ", text)
        return _SPACES.sub(" ", text).strip()
