"""Bad input gives a clear per-instance error or a correct result: never a crash, never an
output that still holds an identity."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from aifi.dicom.deid import Deidentifier, DeidError
from aifi.dicom.pseudonym import PseudonymKey


def _deid_bytes(key: PseudonymKey, src: Path, tmp_path: Path) -> bytes:
    dst = tmp_path / "out.dcm"
    Deidentifier(key).deidentify_file(src, dst)
    pydicom.dcmread(dst)  # the output is readable DICOM
    return dst.read_bytes()


@pytest.mark.parametrize("keep", [0, 100, 131, 400, 700])
def test_truncated_files_give_a_clear_error_or_a_clean_result(
    keep: int, key: PseudonymKey, write_instance, tmp_path: Path
) -> None:
    src = write_instance(rows=32, columns=32)
    src.write_bytes(src.read_bytes()[:keep])
    try:
        output = _deid_bytes(key, src, tmp_path)
    except DeidError as error:
        assert "Jansen" not in error.message
        assert not (tmp_path / "out.dcm").exists()
    else:
        assert b"Jansen" not in output and b"PID-4711" not in output


def test_not_dicom_at_all(key: PseudonymKey, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("Patient Jansen, see attached\n" * 20)
    with pytest.raises(DeidError, match="not a composite DICOM instance|unreadable"):
        Deidentifier(key).deidentify_file(src, tmp_path / "out.dcm")


def test_wrong_vrs_and_invalid_values(key, make_instance, tmp_path: Path) -> None:
    ds = make_instance()
    ds.add_new(0x00100030, "DA", "12-04-1961")  # Patient's Birth Date, invalid DA
    ds.add_new(0x00080020, "DA", "not a date")
    ds.add_new(0x00100010, "LO", "Jansen^Maria")  # Patient's Name written with the wrong VR
    ds.add_new(0x00081030, "LO", "x" * 200)  # Study Description longer than LO allows
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    output = _deid_bytes(key, src, tmp_path)
    # The exact values, not fragments: pseudonymised UIDs are long random decimals that hold
    # any four digits now and then.
    assert b"Jansen" not in output and b"12-04-1961" not in output
    out = pydicom.dcmread(io.BytesIO(output))
    assert out.get("PatientBirthDate", "") == "" and out.get("PatientName", "") != "Jansen^Maria"


def test_modified_dates_with_unparseable_dates_never_leak(key, make_instance) -> None:
    ds = make_instance(StudyDate="2024031", AcquisitionDateTime="2024")
    Deidentifier(key, {"retain-long-modified-dates"}).deidentify_dataset(ds)
    assert ds.StudyDate == "" and ds.get("AcquisitionDateTime", "") == ""


def _implicit_undefined_length_file(path: Path) -> None:
    """An implicit VR file whose sequences and items all have undefined length, nested."""
    inner = Dataset()
    inner.PatientID = "INNER-4711"
    inner.PersonName = "Jansen^Maria"
    outer = Dataset()
    outer.ReferencedSOPInstanceUID = "1.2.840.99.77"
    outer.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    outer.OtherPatientIDsSequence = Sequence([inner])
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.840.99.78"
    ds.PatientName = "Jansen^Maria"
    ds.PatientID = "PID-4711-0815"
    ds.SourceImageSequence = Sequence([outer])
    ds.ReferencedSeriesSequence = Sequence([outer])
    for sequence in (ds["SourceImageSequence"], ds["ReferencedSeriesSequence"]):
        sequence.is_undefined_length = True
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    assert b"\xff\xff\xff\xff" in data and b"\xfe\xff\xdd\xe0" in data  # undefined lengths
    path.write_bytes(data)  # no preamble, no meta: old style


def test_undefined_length_sequences_and_items(key: PseudonymKey, tmp_path: Path) -> None:
    src = tmp_path / "in.dcm"
    _implicit_undefined_length_file(src)
    output = _deid_bytes(key, src, tmp_path)
    assert b"Jansen" not in output and b"PID-4711" not in output and b"INNER-4711" not in output
    assert b"1.2.840.99.77" not in output
    out = pydicom.dcmread(io.BytesIO(output))
    assert out.ReferencedSeriesSequence[0].ReferencedSOPInstanceUID == key.uid("1.2.840.99.77")


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO_IR 192", "Ærøskøbing^Zoë"),
        ("ISO 2022 IR 13\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
        ("ISO 2022 IR 6\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ],
    ids=["latin1", "utf8", "iso2022-jis", "iso2022-ascii-jis"],
)
def test_character_sets(
    charset: str, name: str, key: PseudonymKey, make_instance, tmp_path: Path
) -> None:
    ds = make_instance(patient_name=name, StudyDescription=f"CT {name}")
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    encoded = pydicom.dcmread(src)["PatientName"]
    raw = src.read_bytes()
    from pydicom.charset import encode_string

    needles = [
        encode_string(part, pydicom.charset.convert_encodings(ds.SpecificCharacterSet))
        for part in name.replace("=", "^").split("^")
    ]
    assert all(n in raw for n in needles)
    assert str(encoded.value) == name
    for options in (frozenset(), frozenset({"clean-descriptors"})):
        Deidentifier(key, options).deidentify_file(src, tmp_path / "out.dcm")
        output = (tmp_path / "out.dcm").read_bytes()
        assert [n for n in needles if n in output] == []
        out = pydicom.dcmread(tmp_path / "out.dcm")
        assert out.SpecificCharacterSet == ds.SpecificCharacterSet
        assert str(out.PatientName) == key.patient_id("PID-4711-0815") + "^"


def test_odd_length_and_garbage_after_pixel_data(key, write_instance, tmp_path) -> None:
    src = write_instance()
    with src.open("ab") as f:  # trailing padding holding text, then garbage
        f.write(struct.pack("<HH2sHL", 0xFFFC, 0xFFFC, b"OB", 0, 8) + b"Jansen!!" + b"\x01")
    output = _deid_bytes(key, src, tmp_path)
    assert b"Jansen" not in output
