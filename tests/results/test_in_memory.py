"""Small files are parsed from memory, large ones from disk: the exchange's checks read a small
upload in one call, while a large result's bulk data stays on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement

from aifi.dicom import in_memory
from aifi.dicom.in_memory import parse_source
from aifi.results.reading import read_result


def test_a_small_file_is_parsed_from_what_one_read_took(
    ct_series: list[Dataset], write_dataset: Callable[[Dataset, str], Path]
) -> None:
    path = write_dataset(ct_series[0], "slice.dcm")
    source = parse_source(path)
    path.unlink()  # whatever is parsed now was read before
    dataset = dcmread(source, stop_before_pixels=True)
    assert dataset.SOPInstanceUID == ct_series[0].SOPInstanceUID
    assert dataset.StudyInstanceUID == ct_series[0].StudyInstanceUID


def test_a_large_result_keeps_its_bulk_data_on_disk(
    ct_series: list[Dataset],
    write_dataset: Callable[[Dataset, str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_dataset(ct_series[0], "slice.dcm")
    size = path.stat().st_size
    monkeypatch.setattr(in_memory, "IN_MEMORY_BYTES", size - 1)  # just too large
    assert parse_source(path) == path
    monkeypatch.setattr("aifi.results.reading.DEFER_BYTES", 64)
    pixels = read_result(path).get_item("PixelData", keep_deferred=True)
    assert isinstance(pixels, RawDataElement) and pixels.value is None  # deferred, not read
    monkeypatch.setattr(in_memory, "IN_MEMORY_BYTES", size)  # small enough: read whole
    assert parse_source(path) != path
