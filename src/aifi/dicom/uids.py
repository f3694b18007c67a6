"""Whether a UID is one a database column and a PACS take (PS3.5 9.1).

A UID is digits and dots, at most 64 characters. The standard also forbids a component with
a leading zero; modalities in the field write them, so an input's UIDs (a hospital's
images) are let through with them, while a result's (made for the hospital now) are not.
"""

from __future__ import annotations

import re

#: At most this many characters (PS3.5 9.1).
LONGEST = 64
_STRICT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_LENIENT = re.compile(r"[0-9]+(\.[0-9]+)*")


def uid_problem(uid: str, *, strict: bool = True) -> str | None:
    """What is wrong with `uid`, in words that never quote it (it may hold anything); None
    when nothing is. `strict`: components with a leading zero are wrong too."""
    if not uid:
        return "missing"
    if len(uid) > LONGEST:
        return f"not a UID: {len(uid)} characters, at most {LONGEST}"
    if not (_STRICT if strict else _LENIENT).fullmatch(uid):
        return (
            "not a UID: digits and dots only, no component starting with 0"
            if strict
            else "not a UID: digits and dots only"
        )
    return None
