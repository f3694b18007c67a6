"""Each rule of the upload check refuses with its own name and the offending attribute."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from highdicom.sr import CodedConcept
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset as write_bare_dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from aifi.results import (
    AlgorithmInfo,
    Finding,
    ResultRejected,
    SegmentSpec,
    build_measurement_report,
    build_segmentation,
    check_result,
)

HEMORRHAGE = CodedConcept("50960005", "SCT", "Hemorrhage")
ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
OTHER_STUDY = "2.25.123456789012345678901234567890"


@pytest.fixture
def study_uid(ct_series: list[Dataset]) -> str:
    return str(ct_series[0].StudyInstanceUID)


@pytest.fixture
def segmentation(
    ct_series: list[Dataset], blob_mask: np.ndarray, algorithm: AlgorithmInfo
) -> hd.seg.Segmentation:
    return build_segmentation(
        ct_series, blob_mask, [SegmentSpec("Hemorrhage", ABNORMAL, HEMORRHAGE)], algorithm
    )


@pytest.fixture
def report(
    ct_series: list[Dataset], algorithm: AlgorithmInfo, segmentation: hd.seg.Segmentation
) -> hd.sr.Comprehensive3DSR:
    return build_measurement_report(
        ct_series,
        algorithm,
        [Finding(HEMORRHAGE, "ICH 1", segment_number=1)],
        segmentation=segmentation,
    )


def _refusal(path: Path, study_uid: str) -> ResultRejected:
    with pytest.raises(ResultRejected) as caught:
        check_result(path, study_instance_uid=study_uid)
    return caught.value


def test_a_file_that_is_not_dicom_is_refused(tmp_path: Path, study_uid: str):
    path = tmp_path / "result.json"
    path.write_text('{"finding": "hemorrhage"}' * 20)
    refusal = _refusal(path, study_uid)
    assert refusal.rule == "dicom-file"
    assert "DICM" in refusal.attribute


def test_a_data_set_without_file_meta_is_refused(
    report: hd.sr.Comprehensive3DSR, tmp_path: Path, study_uid: str
):
    """A bare data set (no preamble, no "DICM", no File Meta) as some toolkits write it."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_bare_dataset(buffer, report)
    path = tmp_path / "bare.dcm"
    path.write_bytes(buffer.getvalue())
    assert _refusal(path, study_uid).rule == "dicom-file"


def test_a_file_meta_element_with_a_damaged_vr_is_refused(
    report: hd.sr.Comprehensive3DSR, write_dataset, study_uid: str
):
    """A VR pydicom does not know, in File Meta, is a refusal and not a crash of the check."""
    path = write_dataset(report, "sr.dcm")
    data = path.read_bytes()
    element = data.index(b"\x02\x00\x03\x00UI")  # (0002,0003), explicit VR "UI"
    path.write_bytes(data[: element + 4] + b"ZZ" + data[element + 6 :])
    refusal = _refusal(path, study_uid)
    assert refusal.rule == "file-meta"
    assert refusal.attribute == "MediaStorageSOPInstanceUID (0002,0003)"


def test_a_truncated_report_is_refused(
    report: hd.sr.Comprehensive3DSR, write_dataset, study_uid: str
):
    path = write_dataset(report, "sr.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    refusal = _refusal(path, study_uid)
    assert refusal.rule == "complete-file"


def test_a_segmentation_cut_inside_its_pixel_data_is_refused(
    segmentation: hd.seg.Segmentation, write_dataset, study_uid: str
):
    path = write_dataset(segmentation, "seg.dcm")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    refusal = _refusal(path, study_uid)
    assert refusal.rule == "complete-file"
    assert refusal.attribute == "PixelData (7FE0,0010)"


@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")
@pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")
@pytest.mark.parametrize("name", ["sr", "seg", "encapsulated-pdf", "basic-text-sr"])
def test_a_result_cut_anywhere_is_refused(
    name: str,
    report: hd.sr.Comprehensive3DSR,
    segmentation: hd.seg.Segmentation,
    legacy_results: dict[str, Dataset],
    write_dataset,
    study_uid: str,
):
    results = {"sr": report, "seg": segmentation, **legacy_results}
    path = write_dataset(results[name], f"{name}.dcm")
    data = path.read_bytes()
    for cut in range(64, len(data) - 1, max(1, len(data) // 97)):
        path.write_bytes(data[:cut])
        with pytest.raises(ResultRejected):
            check_result(path, study_instance_uid=study_uid)
    path.write_bytes(data)
    assert check_result(path, study_instance_uid=study_uid).sop_instance_uid


def test_a_segmentation_without_pixel_data_is_refused(
    segmentation: hd.seg.Segmentation, write_dataset, study_uid: str
):
    del segmentation.PixelData
    refusal = _refusal(write_dataset(segmentation, "seg.dcm"), study_uid)
    assert (refusal.rule, refusal.attribute) == ("result-content", "PixelData (7FE0,0010)")


def test_a_pdf_cut_between_elements_is_refused_for_its_missing_document(
    legacy_results: dict[str, Dataset], write_dataset, study_uid: str
):
    pdf = legacy_results["encapsulated-pdf"]
    for keyword in (
        "EncapsulatedDocument",
        "MIMETypeOfEncapsulatedDocument",
        "EncapsulatedDocumentLength",
    ):
        delattr(pdf, keyword)
    refusal = _refusal(write_dataset(pdf, "pdf.dcm"), study_uid)
    assert (refusal.rule, refusal.attribute) == (
        "result-content",
        "EncapsulatedDocument (0042,0011)",
    )


def test_a_result_of_another_study_is_refused(report: hd.sr.Comprehensive3DSR, write_dataset):
    refusal = _refusal(write_dataset(report, "sr.dcm"), OTHER_STUDY)
    assert (refusal.rule, refusal.attribute) == ("own-study", "StudyInstanceUID (0020,000D)")


def test_a_reference_to_another_study_in_the_evidence_is_refused(
    report: hd.sr.Comprehensive3DSR, write_dataset, study_uid: str
):
    report.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID = OTHER_STUDY
    refusal = _refusal(write_dataset(report, "sr.dcm"), study_uid)
    assert refusal.rule == "reference-own-study"
    assert refusal.attribute == (
        "StudyInstanceUID (0020,000D) in CurrentRequestedProcedureEvidenceSequence (0040,A375) "
        "item 1"
    )
    assert OTHER_STUDY not in str(refusal) and study_uid not in str(refusal)


def test_another_study_in_a_referenced_study_sequence_is_refused(
    legacy_results: dict[str, Dataset], write_dataset, study_uid: str
):
    screenshot = legacy_results["secondary-capture"]
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item.ReferencedSOPInstanceUID = OTHER_STUDY
    screenshot.ReferencedStudySequence = [item]
    refusal = _refusal(write_dataset(screenshot, "sc.dcm"), study_uid)
    assert refusal.rule == "reference-own-study"
    assert refusal.attribute == (
        "ReferencedSOPInstanceUID (0008,1155) in ReferencedStudySequence (0008,1110) item 1"
    )


def test_another_study_deep_in_a_sequence_is_refused(
    segmentation: hd.seg.Segmentation, write_dataset, study_uid: str
):
    other = Dataset()
    other.StudyInstanceUID = OTHER_STUDY
    other.ReferencedSeriesSequence = []
    segmentation.StudiesContainingOtherReferencedInstancesSequence = [other]
    refusal = _refusal(write_dataset(segmentation, "seg.dcm"), study_uid)
    assert refusal.rule == "reference-own-study"
    assert "StudiesContainingOtherReferencedInstancesSequence (0008,1200) item 1" in (
        refusal.attribute
    )


def test_an_sr_content_item_naming_another_study_is_refused(
    report: hd.sr.Comprehensive3DSR, write_dataset, study_uid: str
):
    item = hd.sr.UIDRefContentItem(
        name=CodedConcept("110180", "DCM", "Study Instance UID"),
        value=OTHER_STUDY,
        relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT,
    )
    report.ContentSequence = [*report.ContentSequence, item]
    refusal = _refusal(write_dataset(report, "sr.dcm"), study_uid)
    assert refusal.rule == "reference-own-study"
    assert refusal.attribute.startswith("UID (0040,A124) in ContentSequence (0040,A730) item")


def test_an_sr_content_item_deep_in_the_tree_naming_another_study_is_refused(
    report: hd.sr.Comprehensive3DSR, write_dataset, study_uid: str
):
    """A Study Instance UID item inside a measurement group is found, and its place named."""
    measurements = report.ContentSequence[-1]
    group = measurements.ContentSequence[0]
    item = hd.sr.UIDRefContentItem(
        name=CodedConcept("110180", "DCM", "Study Instance UID"),
        value=OTHER_STUDY,
        relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT,
    )
    group.ContentSequence = [*group.ContentSequence, item]
    refusal = _refusal(write_dataset(report, "sr.dcm"), study_uid)
    content = "ContentSequence (0040,A730)"
    assert (refusal.rule, refusal.attribute) == (
        "reference-own-study",
        f"UID (0040,A124) in {content} item {len(group.ContentSequence)} in {content} item 1 "
        f"in {content} item {len(report.ContentSequence)}",
    )


def test_a_reference_to_another_study_in_an_implicit_vr_file_is_refused(
    report: hd.sr.Comprehensive3DSR, tmp_path: Path, study_uid: str
):
    """Implicit VR Little Endian names no VRs: the check finds the sequences all the same."""
    report.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID = OTHER_STUDY
    report.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    report.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    refusal = _refusal(path, study_uid)
    assert (refusal.rule, refusal.attribute) == (
        "reference-own-study",
        "StudyInstanceUID (0020,000D) in CurrentRequestedProcedureEvidenceSequence (0040,A375) "
        "item 1",
    )


#: Diffusion Gradient Orientation (0018,9089), three FD values, in Explicit and in Implicit VR
#: Little Endian: the element as written (8 bytes of header, 24 of values), and its header as
#: spoiled to 12 bytes, one and a half values. The 12 bytes left over become a private
#: creator element, so that every length around it still holds.
_FD = {
    False: (
        b"\x18\x00\x89\x90FD\x18\x00",
        b"\x18\x00\x89\x90FD\x0c\x00",
        b"\x19\x00\x10\x00LO\x04\x00",
    ),
    True: (
        b"\x18\x00\x89\x90\x18\x00\x00\x00",
        b"\x18\x00\x89\x90\x0c\x00\x00\x00",
        b"\x19\x00\x10\x00\x04\x00\x00\x00",
    ),
}


@pytest.mark.parametrize("implicit_vr", [False, True], ids=["explicit-vr", "implicit-vr"])
def test_a_number_cut_short_deep_in_a_sequence_is_refused(
    report: hd.sr.Comprehensive3DSR, tmp_path: Path, study_uid: str, implicit_vr: bool
):
    """A binary value no rule reads is still read by the hospital's gateway as it
    re-identifies the result; pydicom cannot read half a value, so the vendor learns at upload
    which attribute is broken, not from the operator once the hospital refused the result."""
    item = report.CurrentRequestedProcedureEvidenceSequence[0]
    item.add_new(0x00189089, "FD", [0.0, 0.0, 1.0])
    if implicit_vr:
        report.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "sr.dcm"
    report.save_as(path, implicit_vr=implicit_vr, little_endian=True, enforce_file_format=True)
    assert check_result(path, study_instance_uid=study_uid).sop_instance_uid  # whole: accepted
    data = path.read_bytes()
    written, spoiled, creator = _FD[implicit_vr]
    at = data.index(written) + len(written)
    path.write_bytes(data[: at - len(written)] + spoiled + data[at : at + 12] + creator + b"AIFI"
                     + data[at + 24 :])  # fmt: skip
    refusal = _refusal(path, study_uid)
    assert (refusal.rule, refusal.attribute) == (
        "readable-values",
        "DiffusionGradientOrientation (0018,9089) in CurrentRequestedProcedureEvidenceSequence "
        "(0040,A375) item 1",
    )
    assert "FD value of 12 bytes" in refusal.message


def test_a_number_cut_short_under_an_unknown_vr_is_refused_as_pydicom_reads_it(
    report: hd.sr.Comprehensive3DSR, write_dataset, study_uid: str
):
    """Written as UN ("unknown"), a standard attribute is read with its dictionary VR all the
    same; four bytes of an FD are half a value there too."""
    report.DiffusionBValue = 1000.0
    path = write_dataset(report, "sr.dcm")
    data = path.read_bytes()
    written = b"\x18\x00\x87\x90FD\x08\x00"
    at = data.index(written) + len(written)
    unknown = b"\x18\x00\x87\x90UN\x00\x00\x04\x00\x00\x00"  # UN: 4-byte length
    path.write_bytes(data[: at - len(written)] + unknown + data[at : at + 4] + data[at + 8 :])
    refusal = _refusal(path, study_uid)
    assert (refusal.rule, refusal.attribute) == ("readable-values", "DiffusionBValue (0018,9087)")


def test_a_private_number_cut_short_in_implicit_vr_is_refused(
    report: hd.sr.Comprehensive3DSR, tmp_path: Path, study_uid: str
):
    """Implicit VR names no VRs; pydicom knows some private attributes' by their creator (here
    an SS of GE's), and reads one byte of it as it reads half a value."""
    report.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x01, "SS", 5)
    report.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    report.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    assert check_result(path, study_instance_uid=study_uid).sop_instance_uid  # whole: accepted
    data = path.read_bytes()
    written = b"\x43\x00\x01\x10\x02\x00\x00\x00\x05\x00"
    assert data.count(written) == 1
    path.write_bytes(data.replace(written, b"\x43\x00\x01\x10\x01\x00\x00\x00\x05"))
    refusal = _refusal(path, study_uid)
    assert (refusal.rule, refusal.attribute) == ("readable-values", "(0043,1001)")


def _strip(item: Dataset, code_value: str) -> None:
    if "ContentSequence" not in item:
        return
    item.ContentSequence = [
        child
        for child in item.ContentSequence
        if child.ConceptNameCodeSequence[0].CodeValue != code_value
    ]
    for child in item.ContentSequence:
        _strip(child, code_value)


@pytest.mark.parametrize(
    ("code", "attribute"),
    [("111001", "Algorithm Name (111001, DCM)"), ("111003", "Algorithm Version (111003, DCM)")],
)
def test_a_report_without_algorithm_identification_is_refused(
    code: str, attribute: str, report: hd.sr.Comprehensive3DSR, write_dataset, study_uid: str
):
    _strip(report, code)
    refusal = _refusal(write_dataset(report, "sr.dcm"), study_uid)
    assert refusal.rule == "algorithm-identification"
    assert refusal.attribute == f"{attribute} in ContentSequence (0040,A730)"


def test_a_segmentation_without_segment_algorithm_name_is_refused(
    segmentation: hd.seg.Segmentation, write_dataset, study_uid: str
):
    del segmentation.SegmentSequence[0].SegmentAlgorithmName
    refusal = _refusal(write_dataset(segmentation, "seg.dcm"), study_uid)
    assert refusal.rule == "algorithm-identification"
    assert refusal.attribute == (
        "SegmentAlgorithmName (0062,0009) in SegmentSequence (0062,0002) item 1"
    )


@pytest.mark.parametrize(
    ("kind", "keyword", "tag"),
    [
        ("secondary-capture", "SoftwareVersions", "(0018,1020)"),
        ("gsps", "Manufacturer", "(0008,0070)"),
        ("encapsulated-pdf", "SoftwareVersions", "(0018,1020)"),
        ("basic-text-sr", "Manufacturer", "(0008,0070)"),
    ],
)
def test_a_legacy_result_without_software_identity_is_refused(
    kind: str,
    keyword: str,
    tag: str,
    legacy_results: dict[str, Dataset],
    write_dataset,
    study_uid: str,
):
    dataset = legacy_results[kind]
    delattr(dataset, keyword)
    refusal = _refusal(write_dataset(dataset, f"{kind}.dcm"), study_uid)
    assert (refusal.rule, refusal.attribute) == ("algorithm-identification", f"{keyword} {tag}")


def test_an_image_instead_of_a_result_is_refused(
    ct_series: list[Dataset], write_dataset, study_uid: str
):
    refusal = _refusal(write_dataset(ct_series[0], "ct.dcm"), study_uid)
    assert (refusal.rule, refusal.attribute) == ("accepted-sop-class", "SOPClassUID (0008,0016)")


def test_an_unknown_sop_class_is_refused(
    legacy_results: dict[str, Dataset], write_dataset, study_uid: str
):
    dataset = legacy_results["basic-text-sr"]
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = generate_uid()
    refusal = _refusal(write_dataset(dataset, "unknown.dcm"), study_uid)
    assert (refusal.rule, refusal.attribute) == ("accepted-sop-class", "SOPClassUID (0008,0016)")


def test_file_meta_that_contradicts_the_data_set_is_refused(
    report: hd.sr.Comprehensive3DSR, write_dataset, study_uid: str
):
    path = write_dataset(report, "sr.dcm")
    saved = dcmread(path)
    saved.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    saved.save_as(path)
    refusal = _refusal(path, study_uid)
    assert (refusal.rule, refusal.attribute) == (
        "file-meta",
        "MediaStorageSOPInstanceUID (0002,0003)",
    )
