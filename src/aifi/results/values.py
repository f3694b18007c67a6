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

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
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
    _check(dataset, trail=())


def _check(dataset: Dataset, trail: Trail) -> None:
    for tag, element in dataset.items():
        vr = element.VR or _dictionary_vr(tag)
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
            size = BYTES_PER_VALUE.get(vr or "")
            if size and element.length % size:
                raise _refusal(
                    tag,
                    trail,
                    f"an {vr} value of {element.length} bytes: not a whole number of "
                    f"{size}-byte values",
                )


def _dictionary_vr(tag: BaseTag) -> str | None:
    """The VR of an implicit-VR element; one every alternative agrees on ('US or SS': both
    two bytes), or None for a private or unknown tag (pydicom reads those as bytes)."""
    try:
        alternatives = dictionary_VR(tag).split(" or ")
    except KeyError:
        return None
    sizes = {BYTES_PER_VALUE.get(vr) for vr in alternatives}
    if len(alternatives) == 1 or (len(sizes) == 1 and None not in sizes):
        return alternatives[0]
    return None


def _refusal(tag: BaseTag, trail: Trail, message: str) -> ResultRejected:
    place = "".join(f" in {describe_tag(outer)} item {number}" for outer, number in reversed(trail))
    return ResultRejected("readable-values", f"{describe_tag(tag)}{place}", message)
