"""Checking that a result belongs to, and points only at, the job's own (pseudonymised) study.

A vendor sees only pseudonymised studies, and a result goes back into the hospital's PACS after
re-identification: a result that named another study would attach findings to the wrong
patient, or leak that another study exists. So the Study Instance UID must be the job's, and so
must every study the dataset references anywhere — evidence sequences, Referenced Study
Sequence, SR content items of concept Study Instance UID (110180, DCM).
"""

from __future__ import annotations

from pydicom import DataElement, Dataset
from pydicom.datadict import dictionary_VR
from pydicom.tag import BaseTag, Tag

from aifi.results.errors import ResultRejected
from aifi.results.reading import describe_tag
from aifi.results.sr_tree import STUDY_INSTANCE_UID, concept_of

_STUDY_INSTANCE_UID = Tag("StudyInstanceUID")
_REFERENCED_STUDY_SEQUENCE = Tag("ReferencedStudySequence")
_CONTENT_SEQUENCE = Tag("ContentSequence")
_UID = Tag("UID")
_REFERENCED_SOP_INSTANCE_UID = Tag("ReferencedSOPInstanceUID")


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
    _check_items(dataset, study_instance_uid, trail=())


#: Where an item sits: (sequence tag, item number) from the innermost outwards. Kept as tags
#: and turned into words only for a refusal: every result is walked, few are refused.
Trail = tuple[tuple[BaseTag, int], ...]


def _check_items(dataset: Dataset, study_uid: str, trail: Trail) -> None:
    if trail and _STUDY_INSTANCE_UID in dataset:
        _expect(_uid_text(dataset[_STUDY_INSTANCE_UID]), study_uid, "StudyInstanceUID", trail)
    for tag in _sequence_tags(dataset):
        _check_sequence(dataset, tag, study_uid, trail)


def _check_sequence(dataset: Dataset, tag: BaseTag, study_uid: str, trail: Trail) -> None:
    # Asked once per sequence rather than once per item: comparing pydicom tags is not free.
    lists_studies = tag == _REFERENCED_STUDY_SEQUENCE
    holds_content = tag == _CONTENT_SEQUENCE
    for number, item in enumerate(dataset[tag].value or [], start=1):
        where: Trail = ((tag, number), *trail)
        if lists_studies:
            # A Referenced Study Sequence item's Referenced SOP Instance UID *is* a study UID.
            referenced = item.get(_REFERENCED_SOP_INSTANCE_UID)
            _expect(_uid_text(referenced), study_uid, "ReferencedSOPInstanceUID", where)
        if holds_content and _UID in item and concept_of(item) == STUDY_INSTANCE_UID:
            _expect(_uid_text(item[_UID]), study_uid, "UID", where)
        _check_items(item, study_uid, where)


def _sequence_tags(dataset: Dataset) -> list[BaseTag]:
    """The standard (non-private) sequences of `dataset`, in the order the data set holds them.

    Read from the raw elements (:meth:`Dataset.items` does not convert them): only sequences
    can hold references, so converting every value of every item just to learn its VR would
    be wasted work on the exchange's hot path.
    """
    return [
        tag
        for tag, element in dataset.items()
        if not tag.is_private and _is_sequence(tag, element.VR)
    ]


def _is_sequence(tag: BaseTag, vr: str | None) -> bool:
    if vr is None:  # implicit VR little endian: look it up
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return vr == "SQ"


def _uid_text(element: DataElement | None) -> str:
    """A UID element's value as text; '' when the element is absent or empty."""
    return str(element.value or "") if element is not None else ""


def _expect(value: str, study_uid: str, keyword: str, trail: Trail) -> None:
    if value and value != study_uid:
        place = "".join(f" in {describe_tag(tag)} item {number}" for tag, number in trail)
        raise ResultRejected(
            "reference-own-study",
            f"{describe_tag(Tag(keyword))}{place}",
            "the result references a study other than the job's; a result may only point at "
            "its own study",
        )
