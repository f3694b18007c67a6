"""Reading an SR content tree: coded concept names, children, and a depth-first walk.

The checks only need to find content items by concept (TID 1500's 126000, TID 4019's 111001,
tracking identifiers), so this stays a handful of small functions over pydicom datasets rather
than a full SR parser.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom import Dataset

#: Coded concepts as (Code Value, Coding Scheme Designator).
Concept = tuple[str, str]

IMAGING_MEASUREMENT_REPORT: Concept = ("126000", "DCM")
IMAGING_MEASUREMENTS: Concept = ("126010", "DCM")
MEASUREMENT_GROUP: Concept = ("125007", "DCM")
ALGORITHM_NAME: Concept = ("111001", "DCM")
ALGORITHM_VERSION: Concept = ("111003", "DCM")
ALGORITHM_MANUFACTURER: Concept = ("122405", "DCM")
TRACKING_IDENTIFIER: Concept = ("112039", "DCM")
TRACKING_UNIQUE_IDENTIFIER: Concept = ("112040", "DCM")
STUDY_INSTANCE_UID: Concept = ("110180", "DCM")


def concept_of(item: Dataset) -> Concept | None:
    """The Concept Name of a content item (or document root), if it has one."""
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    code = names[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
    return (str(value or ""), str(code.get("CodingSchemeDesignator", "")))


def children(item: Dataset) -> list[Dataset]:
    """The content items directly below `item`."""
    return list(item.get("ContentSequence") or [])


def walk(item: Dataset) -> Iterator[Dataset]:
    """Every content item below `item`, depth first (the item itself excluded)."""
    for child in children(item):
        yield child
        yield from walk(child)


def text_of(item: Dataset) -> str:
    """The value of a TEXT, UIDREF or CODE content item as text ('' when empty)."""
    value_type = item.get("ValueType", "")
    if value_type == "TEXT":
        return str(item.get("TextValue", "") or "")
    if value_type == "UIDREF":
        return str(item.get("UID", "") or "")
    if value_type == "CODE":
        codes = item.get("ConceptCodeSequence") or []
        return str(codes[0].get("CodeMeaning", "")) if codes else ""
    return ""


def find_texts(item: Dataset, concept: Concept) -> list[str]:
    """Non-empty values of every content item below `item` named `concept`."""
    return find_texts_of(item, [concept])[concept]


def find_texts_of(item: Dataset, concepts: list[Concept]) -> dict[Concept, list[str]]:
    """:func:`find_texts` for several concepts in one walk of the tree."""
    found: dict[Concept, list[str]] = {concept: [] for concept in concepts}
    for child in walk(item):
        texts = found.get(concept_of(child))  # type: ignore[arg-type]
        if texts is not None and (text := text_of(child)):
            texts.append(text)
    return found


def measurement_groups(root: Dataset) -> list[Dataset]:
    """TID 1500's measurement groups: the containers 125007 inside Imaging Measurements 126010."""
    groups: list[Dataset] = []
    for container in children(root):
        if concept_of(container) == IMAGING_MEASUREMENTS:
            groups.extend(
                child for child in children(container) if concept_of(child) == MEASUREMENT_GROUP
            )
    return groups
