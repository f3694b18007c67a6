"""Who made a result, and whether it is an IHE AIR result object.

Algorithm identification is required of every result, so a hospital can always tell which
product and version produced what it sees: TID 4019 items in a structured SR, Segment Algorithm
Name and a Manufacturer in a SEG, at least Manufacturer and Software Versions in the legacy
kinds. AIR conformance is stricter and only informs: an SR with a TID 1500 root whose every
measurement group carries algorithm identification and tracking identifiers, or a SEG whose
segments were made by a named algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.multival import MultiValue

from aifi.results.errors import ResultRejected
from aifi.results.kinds import STRUCTURED_SR_KINDS, ResultKind
from aifi.results.sr_tree import (
    ALGORITHM_MANUFACTURER,
    ALGORITHM_NAME,
    ALGORITHM_VERSION,
    TRACKING_IDENTIFIER,
    TRACKING_UNIQUE_IDENTIFIER,
    ContentItem,
    find_texts,
    find_texts_of,
    measurement_groups,
    read_content_tree,
)

_CONTENT = "ContentSequence (0040,A730)"
_SEGMENTS = "SegmentSequence (0062,0002)"


@dataclass(frozen=True)
class AlgorithmIdentity:
    """The algorithm a result names: what the operator and the hospital see."""

    name: str
    version: str
    manufacturer: str


def identify_algorithm(
    dataset: Dataset, kind: ResultKind, content: ContentItem | None = None
) -> AlgorithmIdentity:
    """The algorithm identification of a result of `kind`.

    `content` is the SR's content tree when the caller has read it already (the upload check
    reads it once for this and :func:`air_conformance`); it is read here otherwise.

    Raises
    ------
    ResultRejected
        ``algorithm-identification`` naming the missing attribute or content item.
    """
    if kind in STRUCTURED_SR_KINDS:
        return _from_sr_content(dataset, content or read_content_tree(dataset))
    if kind == ResultKind.SEG:
        return _from_segments(dataset)
    if kind == ResultKind.BASIC_TEXT_SR:
        content = content or read_content_tree(dataset)
        if find_texts(content, ALGORITHM_NAME):
            return _from_sr_content(dataset, content)
    return _from_equipment(dataset)


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value if str(v).strip())
    return str(value).strip()


def _from_sr_content(dataset: Dataset, content: ContentItem) -> AlgorithmIdentity:
    found = find_texts_of(content, [ALGORITHM_NAME, ALGORITHM_VERSION, ALGORITHM_MANUFACTURER])
    names = found[ALGORITHM_NAME]
    if not names:
        raise ResultRejected(
            "algorithm-identification",
            f"Algorithm Name (111001, DCM) in {_CONTENT}",
            "the SR does not name the algorithm (TID 4019 Algorithm Identification)",
        )
    versions = found[ALGORITHM_VERSION]
    if not versions:
        raise ResultRejected(
            "algorithm-identification",
            f"Algorithm Version (111003, DCM) in {_CONTENT}",
            "the SR does not give the algorithm's version (TID 4019 Algorithm Identification)",
        )
    manufacturers = found[ALGORITHM_MANUFACTURER]
    manufacturer = manufacturers[0] if manufacturers else _text(dataset, "Manufacturer")
    return AlgorithmIdentity(name=names[0], version=versions[0], manufacturer=manufacturer)


def _from_segments(dataset: Dataset) -> AlgorithmIdentity:
    segments = dataset.get("SegmentSequence") or []
    if not segments:
        raise ResultRejected("algorithm-identification", _SEGMENTS, "the SEG has no segments")
    for number, segment in enumerate(segments, start=1):
        if not _text(segment, "SegmentAlgorithmName"):
            raise ResultRejected(
                "algorithm-identification",
                f"SegmentAlgorithmName (0062,0009) in {_SEGMENTS} item {number}",
                "every segment must name the algorithm that made it",
            )
    maker = _text(dataset, "Manufacturer") or _text(dataset, "ContentCreatorName")
    if not maker:
        raise ResultRejected(
            "algorithm-identification",
            "Manufacturer (0008,0070)",
            "the SEG names neither a Manufacturer nor a Content Creator (0070,0084)",
        )
    first = segments[0]
    version = _text(dataset, "SoftwareVersions")
    identification = first.get("SegmentationAlgorithmIdentificationSequence") or []
    if identification and identification[0].get("AlgorithmVersion"):
        version = str(identification[0].AlgorithmVersion)
    return AlgorithmIdentity(
        name=_text(first, "SegmentAlgorithmName"), version=version, manufacturer=maker
    )


def _from_equipment(dataset: Dataset) -> AlgorithmIdentity:
    for keyword, tag in (("Manufacturer", "(0008,0070)"), ("SoftwareVersions", "(0018,1020)")):
        if not _text(dataset, keyword):
            raise ResultRejected(
                "algorithm-identification",
                f"{keyword} {tag}",
                "a result must identify the software that made it (at least Manufacturer and "
                "Software Versions)",
            )
    return AlgorithmIdentity(
        name=_text(dataset, "ManufacturerModelName") or _text(dataset, "Manufacturer"),
        version=_text(dataset, "SoftwareVersions"),
        manufacturer=_text(dataset, "Manufacturer"),
    )


#: Why each kind that is never AIR-conformant is not, for the hospital and the operator.
_NOT_AIR = {
    ResultKind.BASIC_TEXT_SR: "Basic Text SR: free text without coded measurements (no TID 1500)",
    ResultKind.SECONDARY_CAPTURE: "Secondary Capture: findings burned into pixels; not "
    "machine-readable (AIR uses SEG and SR)",
    ResultKind.GSPS: "Grayscale Softcopy Presentation State: annotations for display only; "
    "not an AIR result object",
    ResultKind.ENCAPSULATED_PDF: "Encapsulated PDF: a document for people, not an AIR result "
    "object",
    ResultKind.PARAMETRIC_MAP: "Parametric Map: accepted, but this check assesses AIR "
    "conformance only for SR TID 1500 and SEG",
    ResultKind.KOS: "Key Object Selection: accepted, but this check assesses AIR conformance "
    "only for SR TID 1500 and SEG",
}


def air_conformance(
    dataset: Dataset, kind: ResultKind, content: ContentItem | None = None
) -> list[str]:
    """Reasons why a result is not an IHE AIR result object; empty when it is one.

    `content` is the SR's content tree when the caller has read it already; see
    :func:`identify_algorithm`.
    """
    if kind == ResultKind.SEG:
        return _seg_gaps(dataset)
    if kind == ResultKind.SR_TID1500:
        return _measurement_report_gaps(content or read_content_tree(dataset))
    if kind in STRUCTURED_SR_KINDS:
        return ["structured SR without a TID 1500 Imaging Measurement Report (126000, DCM) root"]
    return [_NOT_AIR[kind]]


def _seg_gaps(dataset: Dataset) -> list[str]:
    gaps = []
    for number, segment in enumerate(dataset.get("SegmentSequence") or [], start=1):
        if _text(segment, "SegmentAlgorithmType") not in {"AUTOMATIC", "SEMIAUTOMATIC"}:
            gaps.append(f"segment {number}: Segment Algorithm Type is not AUTOMATIC")
    return gaps


def _measurement_report_gaps(content: ContentItem) -> list[str]:
    groups = measurement_groups(content)
    if not groups:
        return ["TID 1500 report without measurement groups (125007, DCM)"]
    gaps = []
    for number, group in enumerate(groups, start=1):
        direct = {child.concept for child in group.children}
        for concept, name in (
            (TRACKING_IDENTIFIER, "Tracking Identifier (112039, DCM)"),
            (TRACKING_UNIQUE_IDENTIFIER, "Tracking Unique Identifier (112040, DCM)"),
        ):
            if concept not in direct:
                gaps.append(f"measurement group {number} lacks {name}")
        if not find_texts(group, ALGORITHM_NAME):
            gaps.append(f"measurement group {number} lacks Algorithm Name (111001, DCM)")
    return gaps
