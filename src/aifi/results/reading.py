"""Reading an uploaded result safely: real DICOM with File Meta, complete, bulk data left on disk.

Results can be large (a SEG of a 600-slice CT, a PDF), so bulk values are deferred — pydicom
skips over them and records where they are — and the file is then checked to be complete:
pydicom itself reads a truncated file without complaint, silently returning short values.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from aifi.dicom.in_memory import parse_source
from aifi.results.errors import ResultRejected

#: Values longer than this stay on disk while the result is checked.
DEFER_BYTES = 256 * 1024

_UNDEFINED_LENGTH = 0xFFFFFFFF

_FILE_META_REQUIRED = (
    ("MediaStorageSOPClassUID", "(0002,0002)"),
    ("MediaStorageSOPInstanceUID", "(0002,0003)"),
    ("TransferSyntaxUID", "(0002,0010)"),
)


def describe_tag(tag: int) -> str:
    """``Keyword (gggg,eeee)`` for a tag, or just the tag when it has no keyword."""
    tag = Tag(tag)
    keyword = keyword_for_tag(tag)
    text = f"({tag.group:04X},{tag.element:04X})"
    return f"{keyword} {text}" if keyword else text


def read_result(path: Path) -> Dataset:
    """The dataset of the DICOM file at `path`, with bulk values deferred.

    Raises
    ------
    ResultRejected
        ``dicom-file`` if it is not a DICOM file (no preamble and "DICM" prefix) or cannot be
        parsed; ``file-meta`` if its File Meta Information lacks a required element;
        ``complete-file`` if the file ends inside a data element.
    """
    size = path.stat().st_size
    try:
        dataset = dcmread(parse_source(path, size), defer_size=DEFER_BYTES)
    except InvalidDicomError as exc:
        raise ResultRejected(
            "dicom-file",
            "File Preamble and DICM prefix",
            "not a DICOM file (Part 10 format with File Meta Information is required)",
        ) from exc
    except (EOFError, OSError) as exc:
        raise ResultRejected(
            "complete-file", "Data Set", f"the file ends before its data set does ({exc})"
        ) from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise ResultRejected(
            "dicom-file", "Data Set", f"the data set cannot be parsed ({type(exc).__name__})"
        ) from exc
    _check_file_meta(dataset)
    _check_complete(dataset, size)
    return dataset


def _check_file_meta(dataset: Dataset) -> None:
    meta = dataset.file_meta
    for keyword, tag in _FILE_META_REQUIRED:
        try:
            value = meta.get(keyword)
        except Exception as exc:  # a damaged element (e.g. an unknown VR) fails to convert
            raise ResultRejected(
                "file-meta", f"{keyword} {tag}", f"cannot be decoded ({type(exc).__name__})"
            ) from exc
        if not value:
            raise ResultRejected(
                "file-meta", f"{keyword} {tag}", "missing from the File Meta Information"
            )


def _check_complete(dataset: Dataset, size: int) -> None:
    """Every top-level value must lie inside the file, and the file must end where they do.

    Nested values need no check here: pydicom raises when a sequence runs past the end.
    A file that ends with its File Meta Information, or inside it, has no data set at all.
    """
    if not len(dataset):
        raise ResultRejected(
            "complete-file", "Data Set", "the file ends before its data set begins"
        )
    end = None
    for tag in list(dataset.keys()):  # tags; iterating a Dataset yields elements
        element = dataset.get_item(tag, keep_deferred=True)
        end = None
        if not isinstance(element, RawDataElement) or element.length == _UNDEFINED_LENGTH:
            continue
        end = element.value_tell + element.length
        # A deferred value was skipped with seek (no check); a read one may have come up short.
        short = len(element.value) < element.length if element.value is not None else end > size
        if short:
            raise ResultRejected(
                "complete-file",
                describe_tag(tag),
                f"the file ends inside this element (it declares {element.length} bytes)",
            )
    if end is not None and end < size:
        # pydicom stops quietly at a tag header cut short: bytes left over mean exactly that.
        last = describe_tag(max(dataset.keys()))
        raise ResultRejected(
            "complete-file",
            f"data element after {last}",
            f"the file ends inside a data element header ({size - end} bytes left over)",
        )
