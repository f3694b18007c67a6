"""File in, file out: atomic, streamed pixel data, every transfer syntax encoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from aifi.dicom.deid import Deidentifier, DeidError, DeidRefused, fileio
from aifi.dicom.pseudonym import PseudonymKey


def _pixel_element_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[data.rindex(b"\xe0\x7f\x10\x00") :]


@pytest.mark.parametrize(
    "transfer_syntax",
    [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
    ids=["implicit", "big-endian", "deflated"],
)
def test_each_encoding_round_trips(
    transfer_syntax: str, key: PseudonymKey, write_instance, tmp_path: Path
) -> None:
    src = write_instance(transfer_syntax=transfer_syntax)
    Deidentifier(key).deidentify_file(src, tmp_path / "out.dcm")
    before, after = pydicom.dcmread(src), pydicom.dcmread(tmp_path / "out.dcm")
    assert after.file_meta.TransferSyntaxUID == transfer_syntax
    assert np.array_equal(after.pixel_array, before.pixel_array)
    assert after.PatientID != before.PatientID
    assert b"Jansen" not in (tmp_path / "out.dcm").read_bytes()


def test_pixel_data_bytes_are_copied_unchanged(key, write_instance, tmp_path: Path) -> None:
    src = write_instance(frames=4, rows=64, columns=64)
    Deidentifier(key).deidentify_file(src, tmp_path / "out.dcm")
    assert _pixel_element_bytes(tmp_path / "out.dcm") == _pixel_element_bytes(src)


def test_encapsulated_pixel_data_is_copied_fragment_by_fragment(
    key: PseudonymKey, make_instance, tmp_path: Path
) -> None:
    ds = make_instance()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x01\x02" * 10, b"\x03\x04" * 7])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    Deidentifier(key).deidentify_file(tmp_path / "in.dcm", tmp_path / "out.dcm")
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.PixelData == ds.PixelData
    assert out.file_meta.TransferSyntaxUID == RLELossless


def test_existing_output_is_replaced_atomically(key, write_instance, tmp_path: Path) -> None:
    dst = tmp_path / "out" / "x.dcm"
    Deidentifier(key).deidentify_file(write_instance(), dst)
    first = dst.read_bytes()
    Deidentifier(key).deidentify_file(write_instance(patient_id="OTHER-1"), dst)
    assert dst.read_bytes() != first
    assert sorted(p.name for p in dst.parent.iterdir()) == ["x.dcm"]


@pytest.mark.parametrize("failure", [DeidRefused, DeidError])
def test_failure_leaves_no_output_and_no_temporary_file(
    failure, key: PseudonymKey, write_instance, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if failure is DeidRefused:
        src = write_instance(sop_class="1.2.840.10008.5.1.4.1.1.7")
    else:
        src = write_instance(rows=64, columns=64)
        src.write_bytes(src.read_bytes()[:-100])  # pixel data cut short
    with pytest.raises(failure):
        Deidentifier(key).deidentify_file(src, out_dir / "x.dcm")
    assert list(out_dir.iterdir()) == []


def test_interrupted_write_leaves_nothing(key, write_instance, tmp_path, monkeypatch) -> None:
    def broken_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fileio, "_copy_pixel_elements", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        Deidentifier(key).deidentify_file(write_instance(), tmp_path / "out" / "x.dcm")
    assert list((tmp_path / "out").iterdir()) == []


#: De-identifies a file in a process of its own and prints its peak of traced memory:
#: tracemalloc counts every thread's allocations, and threads other tests of this worker left
#: running would be counted with the de-identifier's.
_PEAK_OF_DEIDENTIFYING = """
import sys, tracemalloc
from pathlib import Path
from aifi.dicom.deid import Deidentifier
from aifi.dicom.pseudonym import PseudonymKey
source, folder = sys.argv[1:]
deidentifier = Deidentifier(PseudonymKey(b"a-secret-for-measuring-memory"))
tracemalloc.start()
deidentifier.deidentify_file(Path(source), Path(folder) / "out.dcm")
print(tracemalloc.get_traced_memory()[1])
"""


def test_memory_stays_flat_for_a_large_multiframe(make_instance, tmp_path: Path) -> None:
    """48 MB of pixel data pass through with a few MB of Python memory."""
    ds = make_instance(rows=512, columns=512, frames=1)
    ds.NumberOfFrames = 96
    frame = ds.PixelData
    del ds.PixelData
    src = tmp_path / "big.dcm"
    ds.save_as(src, enforce_file_format=True)
    with src.open("ab") as f:  # append the pixel data element without building it in memory
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (len(frame) * 96).to_bytes(4, "little"))
        for _ in range(96):
            f.write(frame)
    measured = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_DEIDENTIFYING, str(src), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert measured.returncode == 0, measured.stderr
    peak = int(measured.stdout.strip())
    assert (tmp_path / "out.dcm").stat().st_size > 48 * 2**20
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for 48 MiB of pixel data"
    assert _pixel_element_bytes(tmp_path / "out.dcm")[12:64] == frame[:52]


def test_dataset_read_from_a_file_can_be_saved_in_another_encoding(
    key: PseudonymKey, write_instance, tmp_path: Path
) -> None:
    """In place on a read dataset (raw elements), then saved by pydicom as implicit VR."""
    ds = pydicom.dcmread(write_instance())
    result = Deidentifier(key, {"retain-long-modified-dates"}).deidentify_dataset(ds)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    raw = (tmp_path / "implicit.dcm").read_bytes()
    assert b"Jansen" not in raw and b"PID-4711" not in raw
    out = pydicom.dcmread(tmp_path / "implicit.dcm")
    assert out.PatientID == result.patient_pseudonym
    assert out.DeidentificationMethodCodeSequence[1].CodeValue == "113107"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_large_kept_header_values_are_read_when_written(
    key: PseudonymKey, make_instance, tmp_path: Path
) -> None:
    """Values above the defer size are read lazily, only if kept (an ICC profile is)."""
    ds = make_instance()
    profile = bytes(range(256)) * (fileio.DEFER_SIZE // 256 + 16)
    ds.ICCProfile = profile
    ds.add_new(0x00091010, "OB", b"\x01" * (fileio.DEFER_SIZE + 2))  # private: dropped unread
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    Deidentifier(key).deidentify_file(tmp_path / "in.dcm", tmp_path / "out.dcm")
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.ICCProfile == profile
    assert not [e for e in out if e.tag.group == 0x0009]


def test_a_durable_write_flushes_the_file_and_then_its_name(
    key: PseudonymKey, write_instance, tmp_path: Path, fsynced: list[str]
) -> None:
    """`fsync=True`: the written bytes, and the folder that holds the new name."""
    src = write_instance()
    out = tmp_path / "durable" / "out.dcm"
    Deidentifier(key).deidentify_file(src, out, fsync=True)
    written, folder = fsynced
    assert Path(written).parent == out.parent and written.endswith(".part")
    assert folder == str(out.parent)
    assert pydicom.dcmread(out).SOPInstanceUID != pydicom.dcmread(src).SOPInstanceUID
