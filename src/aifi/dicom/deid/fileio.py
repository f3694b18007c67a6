"""File in, file out: header through the engine, pixel data streamed, output atomic.

Only the header changes under de-identification, so the header is read without the pixel data
(`stop_before_pixels`) and the pixel data element's bytes are copied from the source to the
output in chunks. Memory stays flat as instances grow (a 1 GB multi-frame needs a few MB).
The output is written to a temporary file beside the target and renamed into place, so a
reader never sees half a file and a failure leaves no file at all.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from aifi.dicom.deid.errors import DeidError, DeidRefused
from aifi.dicom.deid.pixels import NativeLayout, Region, blank_frame, native_layout
from aifi.dicom.deid.writer import write_part10_header
from aifi.durable import write_atomically

if TYPE_CHECKING:
    from aifi.dicom.deid.engine import Deidentifier, DeidResult

CHUNK = 1 << 20
#: Header values larger than this are read only if the engine keeps them.
DEFER_SIZE = 1 << 18
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC"})
_ITEM = 0xFFFEE000
_SEQUENCE_END = 0xFFFEE0DD


def deidentify_file(engine: Deidentifier, src: Path, dst: Path, *, fsync: bool) -> DeidResult:
    """See :meth:`Deidentifier.deidentify_file`."""
    with open(src, "rb") as source:
        ds = _read_header(source)
        pixel_offset = source.tell()
        transfer_syntax = _effective_transfer_syntax(ds)
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            # The whole dataset is one deflate stream: no element can be copied raw.
            full = _read_full(src)
            result = engine.deidentify_dataset(full)
            write_atomically(
                dst, lambda out: full.save_as(out, enforce_file_format=True), fsync=fsync
            )
            return result
        blank = engine.pixel_cleaning_needed(ds, transfer_syntax)
        layout = native_layout(ds, transfer_syntax) if blank else None
        result = engine.deidentify_header(ds, pixels_cleaned=blank, file_meta=False)

        implicit = transfer_syntax == ImplicitVRLittleEndian
        little = transfer_syntax != ExplicitVRBigEndian

        def write(out: BinaryIO) -> None:
            write_part10_header(
                out, ds, transfer_syntax=transfer_syntax, implicit=implicit, little=little
            )
            source.seek(pixel_offset)
            _copy_pixel_elements(
                source, out, implicit, little, (layout, engine.regions) if layout else None
            )

        write_atomically(dst, write, fsync=fsync)
    return result


def _read_header(source: BinaryIO) -> Dataset:
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, defer_size=DEFER_SIZE, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, struct.error) as exc:
        raise DeidError(f"unreadable DICOM header ({type(exc).__name__})") from exc
    except Exception as exc:  # pydicom raises many kinds on garbage; never crash the caller
        raise DeidError(f"unreadable DICOM header ({type(exc).__name__})") from exc
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise DeidError(
            "not a composite DICOM instance: SOP Class UID (0008,0016) or SOP Instance UID "
            "(0008,0018) missing (truncated or non-DICOM file?)"
        )
    return ds


def _read_full(src: Path) -> Dataset:
    try:
        return pydicom.dcmread(src, force=True)
    except Exception as exc:
        raise DeidError(f"unreadable DICOM ({type(exc).__name__})") from exc


def _effective_transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax the output is written in: the source's, corrected to how the dataset
    was really encoded when a file's meta header disagrees with its body (pydicom reads such
    files by guessing; the raw pixel element must be copied in the same encoding)."""
    implicit, little = ds.original_encoding
    actual = (
        ImplicitVRLittleEndian
        if implicit
        else ExplicitVRLittleEndian
        if little
        else ExplicitVRBigEndian
    )
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    declared = meta.get("TransferSyntaxUID")
    if declared is None:
        meta.TransferSyntaxUID = actual
        return actual
    declared = UID(str(declared))
    if declared == DeflatedExplicitVRLittleEndian:
        return declared
    if declared.is_transfer_syntax and (
        declared.is_implicit_VR == bool(implicit) and declared.is_little_endian == bool(little)
    ):
        return declared
    if declared.is_compressed:
        raise DeidError(
            f"Transfer Syntax UID (0002,0010) says {declared.name} but the dataset is encoded "
            f"as {actual.name}: inconsistent file"
        )
    meta.TransferSyntaxUID = actual
    return actual


def _copy_pixel_elements(
    source: BinaryIO,
    out: BinaryIO,
    implicit: bool,
    little: bool,
    blank: tuple[NativeLayout, tuple[Region, ...]] | None,
) -> None:
    """Copy the pixel data element(s) that follow the header, raw; stop at anything else.

    Only padding, digital signatures and private groups can follow the pixel data, and the
    profile removes all of them, so nothing after the pixel data elements is copied.
    """
    endian = "<" if little else ">"
    while True:
        head = source.read(8)
        if len(head) < 8:
            return
        group, element = struct.unpack(endian + "HH", head[:4])
        tag = group << 16 | element
        if tag not in _PIXEL_TAGS:
            return
        if implicit:
            header = head
            (length,) = struct.unpack(endian + "L", head[4:8])
        elif head[4:6] in _LONG_VRS:
            extra = source.read(4)
            if len(extra) < 4:
                raise DeidError("Pixel Data (7FE0,0010) header is truncated")
            header = head + extra
            (length,) = struct.unpack(endian + "L", extra)
        else:
            header = head
            (length,) = struct.unpack(endian + "H", head[6:8])
        out.write(header)
        if length == 0xFFFFFFFF:
            _copy_fragments(source, out, endian)
        elif blank is not None and tag == 0x7FE00010:
            _copy_blanked(source, out, length, *blank)
        else:
            _copy_bytes(source, out, length)


def _copy_bytes(source: BinaryIO, out: BinaryIO, length: int) -> None:
    """Copy `length` bytes; in the kernel (sendfile) where both ends are files."""
    if length >= CHUNK // 4 and _sendfile(source, out, length):
        return
    remaining = length
    while remaining:
        chunk = source.read(min(CHUNK, remaining))
        if not chunk:
            raise DeidError(
                f"Pixel Data (7FE0,0010) is truncated: {remaining} of {length} bytes missing"
            )
        out.write(chunk)
        remaining -= len(chunk)


def _sendfile(source: BinaryIO, out: BinaryIO, length: int) -> bool:
    """Copy with os.sendfile (no trip through Python buffers); False if not possible here."""
    sendfile = getattr(os, "sendfile", None)
    if sendfile is None:
        return False
    try:
        in_fd, out_fd = source.fileno(), out.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # in-memory streams
    out.flush()
    offset = source.tell()
    end = offset + length
    while offset < end:
        try:
            sent = sendfile(out_fd, in_fd, offset, min(end - offset, 1 << 30))
        except OSError:
            if offset == end - length:
                return False  # nothing sent yet: the caller copies the ordinary way
            raise
        if sent == 0:
            raise DeidError(
                f"Pixel Data (7FE0,0010) is truncated: {end - offset} of {length} bytes missing"
            )
        offset += sent
    source.seek(end)
    return True


def _copy_fragments(source: BinaryIO, out: BinaryIO, endian: str) -> None:
    """Copy encapsulated pixel data item by item up to the sequence delimiter."""
    while True:
        head = source.read(8)
        if len(head) < 8:
            raise DeidError("encapsulated Pixel Data (7FE0,0010) ends without its delimiter")
        group, element, length = struct.unpack(endian + "HHL", head)
        tag = group << 16 | element
        out.write(head)
        if tag == _SEQUENCE_END:
            return
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise DeidError(
                f"encapsulated Pixel Data (7FE0,0010) holds ({group:04X},{element:04X}) "
                "where a fragment item is required"
            )
        _copy_bytes(source, out, length)


def _copy_blanked(
    source: BinaryIO,
    out: BinaryIO,
    length: int,
    layout: NativeLayout,
    regions: tuple[Region, ...],
) -> None:
    """Copy native pixel data frame by frame, blanking the regions in each frame."""
    if length < layout.frame_bytes * layout.frames:
        raise DeidRefused(
            "Clean Pixel Data: Pixel Data is shorter than Rows x Columns x frames, so the "
            "regions cannot be located"
        )
    for _ in range(layout.frames):
        frame = bytearray(source.read(layout.frame_bytes))
        if len(frame) < layout.frame_bytes:
            raise DeidError("Pixel Data (7FE0,0010) is truncated")
        blank_frame(frame, layout, regions)
        out.write(frame)
    _copy_bytes(source, out, length - layout.frame_bytes * layout.frames)
