"""Writing a de-identified header fast: untouched elements go out as the bytes they came in as.

Most of a header survives de-identification unchanged (geometry, acquisition parameters, the
image pixel module). pydicom keeps such elements raw (undecoded) after reading; this writer
emits a raw element as its tag, VR, length and original value bytes, writes sequences and plain
ASCII values itself, and hands anything else to pydicom's own element writer. The output
encoding is always the input's (the engine never changes the transfer syntax), so raw bytes are
valid as they are. pydicom's `dcmwrite` costs about three times as much per header.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

from aifi.dicom.deid.elements import ASCII_VRS, element_store, peek_text

_LONG = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_STANDARD = frozenset(str(vr) for vr in STANDARD_VR)
_TEXT = ASCII_VRS | frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000


class Encoding:
    """The output encoding and the dataset's character sets (for pydicom's fallback)."""

    def __init__(self, implicit: bool, little: bool, charset: Any) -> None:
        self.implicit = implicit
        self.little = little
        self.endian = "<" if little else ">"
        self.encodings = convert_encodings(charset or default_encoding)


IMPLEMENTATION_VERSION_NAME = "AIFI_DEID_1"


def write_part10_header(
    out: BinaryIO, ds: Dataset, *, transfer_syntax: str, implicit: bool, little: bool
) -> None:
    """Write preamble, a new file meta and every element of `ds` (which has no pixel data).

    The file meta holds only what PS3.10 requires, built from the de-identified dataset: the
    source's meta (sending AE titles, private information) is not carried over.
    """
    sop_class = "".join(peek_text(ds, 0x00080016))
    sop_instance = "".join(peek_text(ds, 0x00080018))
    out.write(b"\x00" * 128 + b"DICM" + file_meta_bytes(sop_class, sop_instance, transfer_syntax))
    encoding = Encoding(implicit, little, ds.get("SpecificCharacterSet"))
    out.write(encode_dataset(ds, encoding))


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Group 0002 in explicit VR little endian, with its group length."""
    meta = Encoding(False, True, None)
    body = b"".join(
        _header(tag, vr, len(value), meta) + value
        for tag, vr, value in (
            (0x00020001, "OB", b"\x00\x01"),
            (0x00020002, "UI", _ascii_value(sop_class, "UI") or b""),
            (0x00020003, "UI", _ascii_value(sop_instance, "UI") or b""),
            (0x00020010, "UI", _ascii_value(str(transfer_syntax), "UI") or b""),
            (0x00020012, "UI", _ascii_value(PYDICOM_IMPLEMENTATION_UID, "UI") or b""),
            (0x00020013, "SH", _ascii_value(IMPLEMENTATION_VERSION_NAME, "SH") or b""),
        )
    )
    return _header(0x00020000, "UL", 4, meta) + struct.pack("<L", len(body)) + body


def encode_dataset(ds: Dataset, encoding: Encoding) -> bytes:
    """The encoded elements of `ds`, in tag order."""
    store = element_store(ds)
    parts: list[bytes] = []
    for tag in sorted(store):
        if tag & 0xFFFF == 0:
            continue  # group lengths: retired, and wrong after changes
        elem = store[tag]
        if isinstance(elem, RawDataElement):
            header = _raw_header(elem, encoding)
            if header is not None:
                parts.append(header)
                parts.append(elem.value or b"")
                continue
            elem = ds[tag]  # deferred or undefined length: let pydicom decode it
        parts.append(_encode_element(elem, encoding))
    return b"".join(parts)


def _encode_element(elem: DataElement, encoding: Encoding) -> bytes:
    vr = elem.VR
    if vr == "SQ":
        value = encode_value(elem, encoding)
        return _header(elem.tag, "SQ", len(value), encoding) + value
    ascii_value = _ascii_value(elem.value, vr)
    if ascii_value is not None:
        return _header(elem.tag, vr, len(ascii_value), encoding) + ascii_value
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = encoding.little, encoding.implicit
    write_data_element(buffer, elem, encoding.encodings)
    return buffer.getvalue()


def encode_value(elem: DataElement, encoding: Encoding) -> bytes:
    """The encoded value of a sequence (items of defined length) or a plain ASCII element."""
    if elem.VR == "SQ":
        items = []
        for item in elem.value or ():
            body = encode_dataset(item, encoding)
            items.append(struct.pack(encoding.endian + "HHL", 0xFFFE, 0xE000, len(body)))
            items.append(body)
        return b"".join(items)
    value = _ascii_value(elem.value, elem.VR)
    if value is None:
        raise ValueError(f"{elem.tag} is neither a sequence nor a plain ASCII value")
    return value


def _ascii_value(value: Any, vr: str) -> bytes | None:
    """The padded bytes of a plain ASCII string value, or None if pydicom must encode it."""
    if vr not in _TEXT:
        return None
    if value is None or value == "":
        return b""
    if isinstance(value, MultiValue | list | tuple):
        if not all(isinstance(v, str) for v in value):
            return None
        text = "\\".join(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    if not text.isascii():
        return None
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _header(tag: int, vr: str, length: int, encoding: Encoding) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if encoding.implicit:
        return struct.pack(encoding.endian + "HHL", group, element, length)
    if vr in _LONG:
        return struct.pack(encoding.endian + "HH2sHL", group, element, vr.encode(), 0, length)
    return struct.pack(encoding.endian + "HH2sH", group, element, vr.encode(), length)


def _raw_header(elem: RawDataElement, encoding: Encoding) -> bytes | None:
    """The tag and length (and VR) of a raw element, or None if pydicom must write it."""
    value = elem.value
    if elem.length == _UNDEFINED or (value is None and elem.length):
        return None  # undefined-length sequences and deferred values
    if elem.is_little_endian != encoding.little or elem.is_implicit_VR != encoding.implicit:
        return None  # read in another encoding (e.g. a marking element built for another file)
    length = len(value or b"")
    vr = elem.VR
    if encoding.implicit:
        return _header(elem.tag, vr or "UN", length, encoding)
    if vr is None or vr not in _STANDARD or (vr not in _LONG and length > 0xFFFF):
        return None
    return _header(elem.tag, vr, length, encoding)
