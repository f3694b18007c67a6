"""Reading and replacing element values without decoding what the engine leaves alone.

pydicom keeps elements it has read as raw bytes until someone looks at them; decoding an
element and encoding it again costs far more than the de-identification itself. These helpers
read a value without storing the decoded element back (`peek`), and replace values whose
encoding is plain ASCII (UIDs, dates, codes, our pseudonyms) by new raw bytes in the dataset's
own encoding, so the writer can emit them as they are.

They work on pydicom's element store (`Dataset._dict`, a dict from tag to element, the same in
pydicom 1 to 3) rather than through `Dataset.__getitem__`, which converts the key to a Tag and
the element to a decoded one on every access: at about 80 elements per header and many headers
a second, that overhead was most of the engine's time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, MutableMapping
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

#: VRs whose values use the default repertoire only (PS3.5 6.1.2.3): raw bytes are ASCII.
ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
#: VRs whose values are strings (decoded with the dataset's character set where not ASCII).
STRING_VRS = ASCII_VRS | frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})

Element = DataElement | RawDataElement


def element_store(ds: Dataset) -> MutableMapping[BaseTag, Element]:
    """pydicom's tag -> element dict of `ds` (see the module docstring for why)."""
    store: MutableMapping[BaseTag, Element] = ds._dict
    return store


def tags_of(ds: Dataset) -> list[BaseTag]:
    """The dataset's tags, without converting any element."""
    return list(element_store(ds))


def element_vr(ds: Dataset, tag: int) -> str:
    """The element's VR as stored, or from the dictionary when the file did not say (implicit
    VR) or said UN for a known attribute."""
    elem = element_store(ds)[tag]  # type: ignore[index]
    vr = elem.VR
    if vr is None or vr == "UN" or " or " in vr:
        try:
            known = str(dictionary_VR(tag))
        except KeyError:
            return vr or "UN"
        if " or " not in known:
            return known
        return str(ds[tag].VR)  # ambiguous (US or SS …): pydicom resolves it from context
    return str(vr)


def peek(ds: Dataset, tag: int) -> Any:
    """The element's value, decoded, without replacing the raw element in `ds` (None if absent)."""
    elem = element_store(ds).get(tag)  # type: ignore[call-overload]
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        if elem.value is None and elem.length:
            return ds[tag].value  # deferred: read it now
        return convert_raw_data_element(elem, encoding=ds.original_character_set, ds=ds).value
    return elem.value


def values_of(value: Any) -> list[Any]:
    """A value as a list of its values (empty for None / empty)."""
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def peek_text(ds: Dataset, tag: int) -> list[str]:
    """The element's values as strings (see `decode_text`); empty if absent."""
    elem = element_store(ds).get(tag)  # type: ignore[call-overload]
    return [] if elem is None else decode_text(ds, elem)


def decode_text(ds: Dataset, elem: Element) -> list[str]:
    """An element's values as strings, decoding raw bytes directly where the character set
    allows (ASCII VRs always; text VRs under a single-byte or UTF-8 character set)."""
    if isinstance(elem, RawDataElement):
        if elem.value is None:
            return [str(v) for v in values_of(peek(ds, elem.tag))]
        vr = elem.VR if elem.VR not in (None, "UN") else _dictionary_vr(elem.tag)
        codec = "ascii" if vr in ASCII_VRS else _single_codec(ds) if vr in _CHARSET_VRS else None
        if codec is None:
            value = convert_raw_data_element(elem, encoding=ds.original_character_set, ds=ds)
            return [str(v) for v in values_of(value.value)]
        text = elem.value.decode(codec, "replace").rstrip("\x00 ")
        if vr in ("LT", "ST", "UT"):
            return [text] if text else []  # no multiplicity: a backslash is text
        return [v.strip("\x00 ") for v in text.split("\\")] if text else []
    if elem.VR == "SQ":
        return []
    return [str(v) for v in values_of(elem.value)]


def _single_codec(ds: Dataset) -> str | None:
    """The Python codec of a dataset read with one character set that needs no code extension
    (no ISO 2022 escapes), else None (pydicom then decodes)."""
    charset = ds.original_character_set  # Python codec names, as pydicom resolved them
    terms = [charset] if isinstance(charset, str) else list(charset or [])
    if len(terms) != 1 or terms[0].startswith("iso2022"):
        return None
    return terms[0]


def set_text(ds: Dataset, tag: int, vr: str, values: Iterable[str]) -> None:
    """Replace (or add) the element's values; raw ASCII bytes where possible."""
    items = list(values)
    store = element_store(ds)
    elem = store.get(tag)  # type: ignore[call-overload]
    if isinstance(elem, RawDataElement) and all(v.isascii() for v in items):
        data = "\\".join(items).encode("ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        store[elem.tag] = elem._replace(value=data, length=len(data))
        return
    value: Any = items[0] if len(items) == 1 else (items or "")
    if elem is None:
        ds.add_new(tag, vr, value)
    else:
        ds[tag].value = value


def set_empty(ds: Dataset, tag: int) -> None:
    """Replace the element's value by an empty one (an empty sequence for SQ)."""
    store = element_store(ds)
    elem = store[tag]  # type: ignore[index]
    if isinstance(elem, RawDataElement):
        store[elem.tag] = elem._replace(value=b"", length=0)
    elif elem.VR == "SQ":
        elem.value = []
    else:
        elem.clear()


def set_one_empty_item(ds: Dataset, tag: int) -> None:
    """Replace a sequence by one empty item (the dummy of action D for sequences)."""
    store = element_store(ds)
    elem = store[tag]  # type: ignore[index]
    if isinstance(elem, RawDataElement):
        endian = "<" if elem.is_little_endian else ">"
        item = struct.pack(endian + "HHL", 0xFFFE, 0xE000, 0)
        store[elem.tag] = elem._replace(value=item, length=len(item))
    else:
        elem.value = [Dataset()]


def remove(ds: Dataset, tag: int) -> None:
    """Delete the element (present by construction)."""
    del element_store(ds)[tag]  # type: ignore[arg-type]


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"
