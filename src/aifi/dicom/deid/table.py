"""PS3.15 Table E.1-1 as data: one row per attribute, the Basic Profile action and each option's.

The table ships in `data/annex-e-table-e1-1.json` (edition 2024b, MIT-licensed extraction by
Innolitics; licence beside it). Everything the engine does to a standard attribute is decided
here, so a new edition of the standard is a data change, not a code change.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from aifi.dicom.deid.options import OPTION_SPECS

TABLE_RESOURCE = "annex-e-table-e1-1.json"


class Action(enum.Enum):
    """The action codes of PS3.15 Table E.1-1 (E.3.1), including the conditional combinations."""

    D = "D"  # replace with a non-zero-length dummy value consistent with the VR
    Z = "Z"  # replace with a zero-length value (or a dummy)
    X = "X"  # remove
    K = "K"  # keep (sequences are still cleaned)
    C = "C"  # clean: keep similar meaning, no identity
    U = "U"  # replace with a consistent non-zero-length UID
    Z_D = "Z/D"  # Z unless D is needed for IOD conformance (Type 1)
    X_Z = "X/Z"  # X unless Z is needed (Type 2)
    X_D = "X/D"  # X unless D is needed (Type 1)
    X_Z_D = "X/Z/D"  # X unless Z (Type 2) or D (Type 1) is needed
    X_Z_U = "X/Z/U*"  # X unless Z or, for sequences of references, U of contained UIDs


CONDITIONAL_ACTIONS = frozenset({Action.Z_D, Action.X_Z, Action.X_D, Action.X_Z_D, Action.X_Z_U})


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1."""

    name: str
    tag_text: str
    in_standard_iod: bool
    basic: Action
    by_option: Mapping[str, Action]

    def action_for(self, options: Iterable[str]) -> Action:
        """The action under a set of options.

        An option that names this row overrides the Basic Profile. Where two chosen options both
        name the row and disagree (e.g. Retain Device Identity K and Modified Dates C on a
        calibration date), Clean wins over Keep: it is the more protective of the two and still
        keeps the value's meaning.
        """
        chosen = [self.by_option[o] for o in options if o in self.by_option]
        if not chosen:
            return self.basic
        return Action.C if Action.C in chosen else chosen[0]


@dataclass(frozen=True)
class ProfileTable:
    """Table E.1-1 indexed for the engine."""

    rows: tuple[ProfileRow, ...]
    by_tag: Mapping[int, ProfileRow]
    curve: ProfileRow  # (50xx,xxxx)
    overlay_data: ProfileRow  # (60xx,3000)
    overlay_comments: ProfileRow  # (60xx,4000)
    private: ProfileRow  # (gggg,eeee) where gggg is odd


_COLUMN_TO_OPTION = {
    spec.column: name for name, spec in OPTION_SPECS.items() if spec.column is not None
}
_PLAIN_TAG = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)")


def parse_rows(raw: list[dict[str, str]]) -> ProfileTable:
    """Build the indexed table from the JSON rows; raises ValueError on an unknown action code."""
    rows: list[ProfileRow] = []
    by_tag: dict[int, ProfileRow] = {}
    special: dict[str, ProfileRow] = {}
    for item in raw:
        try:
            row = ProfileRow(
                name=item["name"],
                tag_text=item["tag"],
                in_standard_iod=item.get("stdCompIOD") == "Y",
                basic=Action(item["basicProfile"]),
                by_option={
                    _COLUMN_TO_OPTION[column]: Action(item[column])
                    for column in _COLUMN_TO_OPTION
                    if column in item
                },
            )
        except ValueError as exc:
            raise ValueError(f"Table E.1-1 row {item.get('tag')}: {exc}") from exc
        rows.append(row)
        match = _PLAIN_TAG.fullmatch(row.tag_text)
        if match:
            by_tag[int(match.group(1) + match.group(2), 16)] = row
        else:
            special[item["id"]] = row
    return ProfileTable(
        rows=tuple(rows),
        by_tag=by_tag,
        curve=special["50xxxxxx"],
        overlay_data=special["60xx3000"],
        overlay_comments=special["60xx4000"],
        private=special["ggggeeee-where-gggg-is-odd"],
    )


#: Attributes that name or date a patient and that the shipped edition does not list. Unlisted
#: standard attributes are kept, so these would leave the hospital as sent; they are removed,
#: as their counterparts the table does list are (Patient's Birth Date is Z, a dummy date, in
#: the Basic Profile; these are free text in the calendar named, and Type 3).
SUPPLEMENT: tuple[dict[str, str], ...] = (
    {"id": "00100033", "tag": "(0010,0033)", "basicProfile": "X",
     "name": "Patient's Birth Date in Alternative Calendar"},
    {"id": "00100034", "tag": "(0010,0034)", "basicProfile": "X",
     "name": "Patient's Death Date in Alternative Calendar"},
    # Ethnic Group (0010,2160) is X, kept under Retain Patient Characteristics: so is its code.
    {"id": "00102161", "tag": "(0010,2161)", "basicProfile": "X", "rtnPatCharsOpt": "K",
     "name": "Ethnic Group Code Sequence"},
)  # fmt: skip


@lru_cache(maxsize=1)
def load_table() -> ProfileTable:
    """The Table E.1-1 shipped with the package, with :data:`SUPPLEMENT` (read once per
    process)."""
    text = resources.files("aifi.dicom.deid").joinpath("data", TABLE_RESOURCE).read_text("utf-8")
    shipped: list[dict[str, str]] = json.loads(text)
    listed = {row["tag"] for row in shipped}
    return parse_rows(shipped + [row for row in SUPPLEMENT if row["tag"] not in listed])
