"""Fixtures for the de-identification engine's tests: keys and a synthetic instance factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from aifi.dicom.pseudonym import PseudonymKey

MakeInstance = Callable[..., Dataset]


@pytest.fixture(scope="session")
def key() -> PseudonymKey:
    return PseudonymKey(b"hospital-a-secret-0123456789abcdef")


@pytest.fixture(scope="session")
def other_key() -> PseudonymKey:
    return PseudonymKey(b"hospital-b-secret-0123456789abcdef")


def build_instance(
    *,
    patient_id: str = "PID-4711-0815",
    patient_name: str = "Jansen^Maria",
    birth_date: str = "19610412",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class: str = CTImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rows: int = 16,
    columns: int = 16,
    frames: int = 1,
    samples: int = 1,
    bits: int = 16,
    planar: int = 0,
    **attributes: Any,
) -> Dataset:
    """A small, valid-looking image instance with a real-looking identity."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "F"
    ds.PatientAge = "062Y"
    ds.PatientWeight = "71.5"
    ds.AccessionNumber = "ACC-20240311-77"
    ds.StudyID = "ST-991"
    ds.StudyDate = "20240311"
    ds.StudyTime = "101500"
    ds.SeriesDate = "20240311"
    ds.ContentDate = "20240311"
    ds.ContentTime = "101812"
    ds.AcquisitionDateTime = "20240311101700.000000"
    ds.ReferringPhysicianName = "Bakker^Pieter"
    ds.InstitutionName = "Ziekenhuis Rivierenland Tiel"
    ds.StationName = "CT-TIEL-01"
    ds.StudyDescription = "CT THORAX Jansen"
    ds.SeriesDescription = "AX 1.0 LUNG"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "ACME"
    ds.SliceThickness = "1.0"
    ds.ImagePositionPatient = [-100, -100, 50]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = planar
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    dtype = np.uint8 if bits == 8 else np.uint16
    count = rows * columns * samples * frames
    ds.PixelData = (np.arange(count) % 251 + 1).astype(dtype).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def make_instance() -> MakeInstance:
    return build_instance


@pytest.fixture
def write_instance(tmp_path: Path) -> Callable[..., Path]:
    """Write a built instance to a file and return its path."""
    counter = iter(range(1_000_000))

    def write(ds: Dataset | None = None, **kwargs: Any) -> Path:
        ds = ds if ds is not None else build_instance(**kwargs)
        path = tmp_path / f"src-{next(counter)}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    return write
