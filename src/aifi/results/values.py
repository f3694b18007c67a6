"""Every value of a result can be read by whoever receives it.

pydicom reads a value when it is first used. The check's rules use a few attributes; a value
no rule touched is first read by the hospital's gateway as it re-identifies the result, and
there a binary number of the wrong length, or a sequence that does not parse, raises. Those
are the values pydicom refuses to read (text that breaks its VR is read, with a warning), so
they are looked for here, and the vendor learns at upload, not from the operator.

Only lengths are looked at, on the raw elements: converting every value of an SR costs some
milliseconds a result, looking at its elements' lengths a small part of that.
"""

from __future__ import annotations

import warnings
from typing import Any

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.hooks import raw_element_vr
from pydicom.tag import BaseTag

from aifi.results.errors import ResultRejected
from aifi.results.reading import describe_tag

#: The binary VRs whose values pydicom unpacks, and the bytes of one value.
BYTES_PER_VALUE = {"FD": 8, "FL": 4, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}

#: Where an item sits: (sequence tag, item number) from the outermost inwards.
Trail = tuple[tuple[BaseTag, int], ...]


def check_values_readable(dataset: Dataset) -> None:
    """Refuse a result holding a value pydicom cannot read.

    Raises
    ------
    ResultRejected
        ``readable-values`` naming the attribute and its sequence path.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown tag: pydicom reads it as bytes
        _check(dataset, trail=())


def _check(dataset: Dataset, trail: Trail) -> None:
    for tag, element in dataset.items():
        vr = _vr_of(dataset, element)
        if vr == "SQ":
            try:
                items = dataset[tag].value or []
            except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, it is unreadable
                raise _refusal(
                    tag, trail, f"the sequence cannot be parsed ({type(exc).__name__})"
                ) from exc
            for number, item in enumerate(items, start=1):
                _check(item, (*trail, (tag, number)))
        elif isinstance(element, RawDataElement):
            size = _bytes_per_value(vr)
            if size and element.length % size:
                raise _refusal(
                    tag,
                    trail,
                    f"an {vr} value of {element.length} bytes: not a whole number of "
                    f"{size}-byte values",
                )


def _vr_of(dataset: Dataset, element: DataElement | RawDataElement) -> str | None:
    """The VR pydicom reads `element` with: as written; or from its dictionaries, for
    implicit VR, for an explicit 'UN' of a known attribute, and for private tags whose
    creator it knows (pydicom's own lookup, so that the two agree)."""
    if not isinstance(element, RawDataElement) or element.VR not in (None, "UN"):
        return str(element.VR)
    found: dict[str, Any] = {}
    raw_element_vr(element, found, ds=dataset)
    vr = found.get("VR")
    return str(vr) if vr else None


def _bytes_per_value(vr: str | None) -> int | None:
    """The bytes of one value of `vr`; for an ambiguous VR ('US or SS'), the size every
    alternative agrees on, else None (pydicom reads 'OB or OW' and the like as bytes)."""
    sizes = {BYTES_PER_VALUE.get(alternative) for alternative in (vr or "").split(" or ")}
    return sizes.pop() if len(sizes) == 1 else None


def _refusal(tag: BaseTag, trail: Trail, message: str) -> ResultRejected:
    place = "".join(f" in {describe_tag(outer)} item {number}" for outer, number in reversed(trail))
    return ResultRejected("readable-values", f"{describe_tag(tag)}{place}", message)
