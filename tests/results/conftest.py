"""A tiny pseudonymised CT series (a few 32x32 slices) for building and checking results.

The phantoms package is written elsewhere; this fixture is deliberately small and self-contained:
proper geometry (orientation, position, spacing, frame of reference), the Patient and Study
modules as the gateway leaves them after pseudonymisation, and a bright blob whose location the
tests know, so a key image can be checked by eye.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from aifi.dicom.pseudonym import PseudonymKey
from aifi.results import AlgorithmInfo

SLICES = 4
SIZE = 32
SPACING_MM = 0.8
SLICE_MM = 2.5
#: The blob (a "bleed" of 60 HU over brain at 35 HU) centred here, in voxel indices (z, y, x).
BLOB_CENTRE = (1.5, 12.0, 20.0)
BLOB_RADIUS = 5.0

_KEY = PseudonymKey(b"results-test-secret-0123456789")


def _blob_mask() -> np.ndarray:
    z, y, x = np.meshgrid(np.arange(SLICES), np.arange(SIZE), np.arange(SIZE), indexing="ij")
    cz, cy, cx = BLOB_CENTRE
    # Slices are 2.5 mm apart and pixels 0.8 mm: measure the distance in mm.
    distance = np.sqrt(
        ((z - cz) * SLICE_MM) ** 2 + ((y - cy) * SPACING_MM) ** 2 + ((x - cx) * SPACING_MM) ** 2
    )
    return distance <= BLOB_RADIUS * SPACING_MM


def make_ct_series(study_uid: str | None = None, *, slices: int = SLICES) -> list[Dataset]:
    """`slices` axial CT images of one pseudonymised study, as the gateway would upload them."""
    study_uid = study_uid or _KEY.uid("1.2.826.0.1.3680043.8.498.1")
    series_uid = generate_uid()
    frame_of_reference = generate_uid()
    blob = _blob_mask()
    images = []
    for index in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        # Patient module, pseudonymised (Annex E with Modified Dates).
        ds.PatientName = _KEY.text("patient-name", "Doe^Jane") + "^"
        ds.PatientID = _KEY.patient_id("123456789")
        ds.PatientBirthDate = ""
        ds.PatientSex = "F"
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "AIFI Annex E basic profile"
        # General Study module.
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20200105"
        ds.StudyTime = "101500"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "S1"
        ds.AccessionNumber = _KEY.accession("ACC42")
        # General Series, Frame of Reference, General Equipment.
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.BodyPartExamined = "HEAD"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "AIFI test scanner"
        # General Image, Image Plane, Image Pixel, CT Image.
        ds.InstanceNumber = index + 1
        ds.ContentDate = "20200105"
        ds.ContentTime = "101600"
        ds.AcquisitionNumber = 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-12.8, -12.8, index * SLICE_MM]
        ds.PixelSpacing = [SPACING_MM, SPACING_MM]
        ds.SliceThickness = SLICE_MM
        ds.SliceLocation = index * SLICE_MM
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = SIZE
        ds.Columns = SIZE
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.WindowCenter = 40
        ds.WindowWidth = 80
        hu = np.full((SIZE, SIZE), 35, dtype=np.int16)
        hu[blob[index] if index < blob.shape[0] else np.zeros_like(blob[0])] = 60
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        images.append(ds)
    return images


@pytest.fixture
def ct_series() -> list[Dataset]:
    return make_ct_series()


@pytest.fixture
def blob_mask() -> np.ndarray:
    """The ground-truth lesion of :func:`make_ct_series` as a (frames, rows, cols) bool array."""
    return _blob_mask()


@pytest.fixture
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(
        name="AIFI reference ICH detector",
        version="0.1.0",
        manufacturer="AIFI",
        parameters={"threshold_hu": 50},
    )


@pytest.fixture
def write_dataset(tmp_path: Path) -> Callable[[Dataset, str], Path]:
    """Save a dataset as a DICOM file (with File Meta) under `tmp_path` and return the path."""

    def write(dataset: Dataset, name: str) -> Path:
        path = tmp_path / name
        dataset.save_as(path, enforce_file_format=True)
        return path

    return write


# --- The kinds of result vendors send today (not AIR), made the way vendors make them. ---------

LEGACY_VENDOR = "Legacy AI Vendor"
LEGACY_VERSION = "2.3.1"

#: Patient and General Study module attributes a result copies from its source.
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _file_meta(dataset: Dataset) -> None:
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID


def _copy_patient_study(source: Dataset, dataset: Dataset) -> None:
    dataset.SpecificCharacterSet = source.SpecificCharacterSet
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(dataset, keyword, source.data_element(keyword).value)


def make_secondary_capture(source: Dataset) -> Dataset:
    """An RGB screenshot of the slice with the finding burned in, as many vendors send."""
    grey = np.clip((source.pixel_array.astype(float) - 1024 - 0) / 80 * 255, 0, 255)
    rgb = np.repeat(grey.astype(np.uint8)[:, :, np.newaxis], 3, axis=2)
    rgb[10:14, 18:22] = (255, 0, 0)
    screenshot = hd.sc.SCImage.from_ref_dataset(
        source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=9101,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=LEGACY_VENDOR,
        patient_orientation=("L", "P"),
        software_versions=LEGACY_VERSION,
    )
    screenshot.BodyPartExamined = source.BodyPartExamined  # an unpaired part: no Laterality
    return screenshot


def make_gsps(source: Dataset) -> Dataset:
    """A presentation state that circles the finding on the source slice."""
    layer = hd.pr.GraphicLayer(layer_name="FINDINGS", order=1)
    circle = hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array([[20.0, 12.0], [25.0, 12.0]]),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
    )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[source], graphic_layer=layer, graphic_objects=[circle]
    )
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=hd.UID(),
        series_number=9102,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=LEGACY_VENDOR,
        manufacturer_model_name="Legacy ICH",
        software_versions=LEGACY_VERSION,
        device_serial_number="LEG-1",
        content_label="ICH_FINDING",
        graphic_annotations=[annotation],
        graphic_layers=[layer],
    )
    state.BodyPartExamined = source.BodyPartExamined  # an unpaired part: no Laterality
    return state


_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


def make_encapsulated_pdf(source: Dataset) -> Dataset:
    """A PDF report wrapped in DICOM (Encapsulated PDF IOD)."""
    ds = Dataset()
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = generate_uid()
    _file_meta(ds)
    _copy_patient_study(source, ds)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9103
    ds.Manufacturer = LEGACY_VENDOR
    ds.SoftwareVersions = LEGACY_VERSION
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = "20200105"
    ds.ContentTime = "103000"
    ds.AcquisitionDateTime = "20200105103000"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "AI report"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = _PDF + (b"\0" if len(_PDF) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(_PDF)
    return ds


def make_basic_text_sr(source: Dataset) -> Dataset:
    """A free-text SR ("suspected hemorrhage"), without coded measurements."""
    ds = Dataset()
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid()
    _file_meta(ds)
    _copy_patient_study(source, ds)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9104
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.Manufacturer = LEGACY_VENDOR
    ds.SoftwareVersions = LEGACY_VERSION
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate = "20200105"
    ds.ContentTime = "103000"
    ds.PerformedProcedureCodeSequence = []
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    ds.ContinuityOfContent = "SEPARATE"
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    finding.TextValue = "Suspected intracranial hemorrhage, right parietal."
    ds.ContentSequence = [finding]
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code


@pytest.fixture
def patient_study_keywords() -> tuple[str, ...]:
    """The Patient and General Study attributes a result must copy from its source."""
    return PATIENT_STUDY_KEYWORDS


@pytest.fixture
def legacy_results(ct_series: list[Dataset]) -> dict[str, Dataset]:
    """One result of each legacy kind on the fixture study, keyed by the kind's name."""
    source = ct_series[1]
    return {
        "secondary-capture": make_secondary_capture(source),
        "gsps": make_gsps(source),
        "encapsulated-pdf": make_encapsulated_pdf(source),
        "basic-text-sr": make_basic_text_sr(source),
    }
