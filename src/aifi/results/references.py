"""Checking that a result belongs to, and points only at, the job's own (pseudonymised) study.

A vendor sees only pseudonymised studies, and a result goes back into the hospital's PACS after
re-identification: a result that named another study would attach findings to the wrong
patient, or leak that another study exists. So the Study Instance UID must be the job's, and so
must every study the dataset references anywhere — evidence sequences, Referenced Study
Sequence, SR content items of concept Study Instance UID (110180, DCM).
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.tag import BaseTag, Tag

from aifi.results.errors import ResultRejected
from aifi.results.reading import describe_tag
from aifi.results.sr_tree import STUDY_INSTANCE_UID, concept_of

_STUDY_INSTANCE_UID = Tag("StudyInstanceUID")
_REFERENCED_STUDY_SEQUENCE = Tag("ReferencedStudySequence")
_CONTENT_SEQUENCE = Tag("ContentSequence")


def check_own_study(dataset: Dataset, study_instance_uid: str) -> None:
    """The result's own Study Instance UID must be the job's.

    Raises
    ------
    ResultRejected
        ``own-study`` naming StudyInstanceUID (0020,000D) when it is missing or different.
    """
    own = str(dataset.get("StudyInstanceUID", "") or "")
    if not own:
        raise ResultRejected("own-study", "StudyInstanceUID (0020,000D)", "missing")
    if own != study_instance_uid:
        raise ResultRejected(
            "own-study",
            "StudyInstanceUID (0020,000D)",
            "the result belongs to another study than the job's",
        )


def check_study_references(dataset: Dataset, study_instance_uid: str) -> None:
    """Every study referenced inside a sequence must be the job's study.

    Raises
    ------
    ResultRejected
        ``reference-own-study`` naming the attribute and its sequence path, e.g.
        ``StudyInstanceUID (0020,000D) in CurrentRequestedProcedureEvidenceSequence
        (0040,A375) item 2``.
    """
    _check_items(dataset, study_instance_uid, trail="")


def _check_items(dataset: Dataset, study_uid: str, trail: str) -> None:
    for tag in list(dataset.keys()):
        if tag.is_private:
            continue
        if trail and tag == _STUDY_INSTANCE_UID:
            _expect(str(dataset[tag].value or ""), study_uid, f"{describe_tag(tag)}{trail}")
        if _is_sequence(dataset, tag):
            _check_sequence(dataset, tag, study_uid, trail)


def _check_sequence(dataset: Dataset, tag: BaseTag, study_uid: str, trail: str) -> None:
    for number, item in enumerate(dataset[tag].value or [], start=1):
        where = f" in {describe_tag(tag)} item {number}{trail}"
        if tag == _REFERENCED_STUDY_SEQUENCE:
            # A Referenced Study Sequence item's Referenced SOP Instance UID *is* a study UID.
            referenced = str(item.get("ReferencedSOPInstanceUID", "") or "")
            _expect(referenced, study_uid, f"ReferencedSOPInstanceUID (0008,1155){where}")
        if tag == _CONTENT_SEQUENCE and concept_of(item) == STUDY_INSTANCE_UID:
            _expect(str(item.get("UID", "") or ""), study_uid, f"UID (0040,A124){where}")
        _check_items(item, study_uid, where)


def _is_sequence(dataset: Dataset, tag: BaseTag) -> bool:
    element = dataset.get_item(tag, keep_deferred=True)
    vr = getattr(element, "VR", None)
    if vr is None:  # implicit VR little endian: look it up
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return vr == "SQ"


def _expect(value: str, study_uid: str, attribute: str) -> None:
    if value and value != study_uid:
        raise ResultRejected(
            "reference-own-study",
            attribute,
            "the result references a study other than the job's; a result may only point at "
            "its own study",
        )
