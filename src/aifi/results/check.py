"""The exchange's check of an uploaded result: accept (saying whether it is AIR) or refuse.

Rules, in the order they are applied; each refusal names its rule and the offending attribute:

``dicom-file``
    A DICOM Part 10 file (preamble, "DICM", File Meta Information) that pydicom can parse.
``file-meta``
    File Meta Information with Media Storage SOP Class / Instance UID and Transfer Syntax UID
    that agree with the data set's SOP Class / Instance UID.
``complete-file``
    The file does not end inside a data element.
``accepted-sop-class``
    The SOP Class is one of :data:`aifi.results.kinds.ACCEPTED_SOP_CLASSES`.
``valid-uids``
    SOP Instance UID and Series Instance UID are UIDs (:func:`aifi.dicom.uids.uid_problem`):
    a PACS files the result by them.
``result-content``
    The result carries its content: pixel data, the encapsulated document, the SR content tree
    (see :data:`aifi.results.kinds.CONTENT_KEYWORDS`).
``own-study``
    Study Instance UID (0020,000D) is the job's (pseudonymised) study.
``reference-own-study``
    Every study referenced anywhere in the data set is the job's study.
``algorithm-identification``
    The result names the algorithm that made it (see :mod:`aifi.results.conformance`).
``readable-values``
    Every value can be read: no binary number of the wrong length, no sequence that does not
    parse, anywhere in the data set (see :mod:`aifi.results.values`).

A result that passes is accepted; :attr:`ResultCheck.air_conformant` and
:attr:`ResultCheck.notes` tell whether it is an IHE AIR result object and, if not, why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset
from pydicom.tag import Tag

from aifi.dicom.uids import uid_problem
from aifi.results.conformance import AlgorithmIdentity, air_conformance, identify_algorithm
from aifi.results.errors import ResultRejected
from aifi.results.kinds import (
    ACCEPTED_SOP_CLASSES,
    CONTENT_KEYWORDS,
    STRUCTURED_SR_KINDS,
    ResultKind,
)
from aifi.results.reading import describe_tag, read_result
from aifi.results.references import check_own_study, check_study_references
from aifi.results.sr_tree import (
    IMAGING_MEASUREMENT_REPORT,
    ContentItem,
    concept_of,
    read_content_tree,
)
from aifi.results.values import check_values_readable


@dataclass(frozen=True)
class ResultCheck:
    """What the exchange learned about an accepted result."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    modality: str
    kind: ResultKind
    air_conformant: bool
    algorithm: AlgorithmIdentity
    notes: list[str] = field(default_factory=list)


def check_result(path: Path, *, study_instance_uid: str) -> ResultCheck:
    """Check the result file at `path` that a vendor uploaded for a job on `study_instance_uid`.

    Raises
    ------
    ResultRejected
        When the result breaks one of the rules in this module's docstring.
    """
    dataset = read_result(path)
    try:
        return _check_dataset(dataset, study_instance_uid)
    except ResultRejected:
        raise
    except Exception as exc:  # malformed values inside an otherwise parseable file
        raise ResultRejected(
            "dicom-file", "Data Set", f"a value cannot be decoded ({type(exc).__name__})"
        ) from exc


def _check_dataset(dataset: Dataset, study_instance_uid: str) -> ResultCheck:
    sop_class_uid = _check_identifiers(dataset)
    kind = _kind_of(dataset, sop_class_uid)
    _check_content(dataset, kind)
    check_own_study(dataset, study_instance_uid)
    check_study_references(dataset, study_instance_uid)
    content = _content_tree(dataset, kind)
    algorithm = identify_algorithm(dataset, kind, content)
    check_values_readable(dataset)
    gaps = air_conformance(dataset, kind, content)
    return ResultCheck(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=str(dataset.SOPInstanceUID),
        series_instance_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
        modality=str(dataset.get("Modality", "") or ""),
        kind=kind,
        air_conformant=not gaps,
        algorithm=algorithm,
        notes=gaps,
    )


def _check_identifiers(dataset: Dataset) -> str:
    """The SOP Class UID, after checking it and the instance UID against the File Meta."""
    sop_class_uid = str(dataset.get("SOPClassUID", "") or "")
    if sop_class_uid not in ACCEPTED_SOP_CLASSES:
        # Quoted only when it is a UID: the refusal goes to the access log and the vendor.
        problem = uid_problem(sop_class_uid, strict=False)
        shown = sop_class_uid if problem is None else problem
        raise ResultRejected(
            "accepted-sop-class",
            "SOPClassUID (0008,0016)",
            f"{shown} is not an accepted result class (SR, SEG, "
            "Parametric Map, KOS, GSPS, Secondary Capture, Encapsulated PDF)",
        )
    sop_instance_uid = str(dataset.get("SOPInstanceUID", "") or "")
    if not sop_instance_uid:
        raise ResultRejected("file-meta", "SOPInstanceUID (0008,0018)", "missing")
    series_instance_uid = str(dataset.get("SeriesInstanceUID", "") or "")
    for keyword, uid in (
        ("SOPInstanceUID (0008,0018)", sop_instance_uid),
        ("SeriesInstanceUID (0020,000E)", series_instance_uid),
    ):
        if (problem := uid_problem(uid)) is not None:
            raise ResultRejected("valid-uids", keyword, problem)
    meta = dataset.file_meta
    if str(meta.MediaStorageSOPClassUID) != sop_class_uid:
        raise ResultRejected(
            "file-meta",
            "MediaStorageSOPClassUID (0002,0002)",
            "differs from SOPClassUID (0008,0016)",
        )
    if str(meta.MediaStorageSOPInstanceUID) != sop_instance_uid:
        raise ResultRejected(
            "file-meta",
            "MediaStorageSOPInstanceUID (0002,0003)",
            "differs from SOPInstanceUID (0008,0018)",
        )
    return sop_class_uid


def _check_content(dataset: Dataset, kind: ResultKind) -> None:
    keywords = CONTENT_KEYWORDS[kind]
    if not any(keyword in dataset for keyword in keywords):
        raise ResultRejected(
            "result-content",
            describe_tag(Tag(keywords[0])),
            f"a {kind} result must carry it (was the file cut short?)",
        )


def _content_tree(dataset: Dataset, kind: ResultKind) -> ContentItem | None:
    """The SR content tree, read once for both algorithm identification and AIR conformance.

    Only the SR kinds whose content the later rules look into get one; it is read after the
    reference check so that a refusal names the same rule as it always did.
    """
    if kind in STRUCTURED_SR_KINDS or kind == ResultKind.BASIC_TEXT_SR:
        return read_content_tree(dataset)
    return None


def _kind_of(dataset: Dataset, sop_class_uid: str) -> ResultKind:
    kind = ACCEPTED_SOP_CLASSES[sop_class_uid]
    if kind in STRUCTURED_SR_KINDS and concept_of(dataset) == IMAGING_MEASUREMENT_REPORT:
        return ResultKind.SR_TID1500
    return kind
