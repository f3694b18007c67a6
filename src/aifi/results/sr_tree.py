"""Reading an SR content tree: coded concept names, children, and a depth-first walk.

The checks only need to find content items by concept (TID 1500's 126000, TID 4019's 111001,
tracking identifiers), so this stays a small tree of concepts over pydicom datasets
(:class:`ContentItem`) rather than a full SR parser.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.tag import BaseTag, Tag

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


_CONCEPT_NAME_CODE_SEQUENCE = Tag("ConceptNameCodeSequence")
_CODE_VALUE = Tag("CodeValue")
_LONG_CODE_VALUE = Tag("LongCodeValue")
_URN_CODE_VALUE = Tag("URNCodeValue")
_CODING_SCHEME_DESIGNATOR = Tag("CodingSchemeDesignator")
_CONTENT_SEQUENCE = Tag("ContentSequence")
_VALUE_TYPE = Tag("ValueType")
_TEXT_VALUE = Tag("TextValue")
_UID = Tag("UID")
_CONCEPT_CODE_SEQUENCE = Tag("ConceptCodeSequence")
_CODE_MEANING = Tag("CodeMeaning")


def _value_of(item: Dataset, tag: BaseTag, default: Any = None) -> Any:
    """The value of element `tag` in `item`, or `default` when it is absent.

    ``item.get(keyword)`` would do, but it goes through attribute lookup and builds a new tag on
    every call; looking up by a tag made once is measurably cheaper over a whole SR.
    """
    return item[tag].value if tag in item else default


def concept_of(item: Dataset) -> Concept | None:
    """The Concept Name of a content item (or document root), if it has one."""
    names = _value_of(item, _CONCEPT_NAME_CODE_SEQUENCE)
    if not names:
        return None
    code = names[0]
    value = (
        _value_of(code, _CODE_VALUE)
        or _value_of(code, _LONG_CODE_VALUE)
        or _value_of(code, _URN_CODE_VALUE)
    )
    return (str(value or ""), str(_value_of(code, _CODING_SCHEME_DESIGNATOR, "")))


def text_of(item: Dataset) -> str:
    """The value of a TEXT, UIDREF or CODE content item as text ('' when empty)."""
    value_type = _value_of(item, _VALUE_TYPE, "")
    if value_type == "TEXT":
        return str(_value_of(item, _TEXT_VALUE, "") or "")
    if value_type == "UIDREF":
        return str(_value_of(item, _UID, "") or "")
    if value_type == "CODE":
        codes = _value_of(item, _CONCEPT_CODE_SEQUENCE) or []
        return str(_value_of(codes[0], _CODE_MEANING, "")) if codes else ""
    return ""


@dataclass(frozen=True, slots=True)
class ContentItem:
    """A content item (or the document root), its concept name read once, and its children.

    The upload check asks one SR several questions (TID 4019 items anywhere, measurement groups
    and what each holds); reading every item's Concept Name Code Sequence once, here, rather
    than once per question keeps that check cheap on the exchange's hot path.
    """

    dataset: Dataset
    concept: Concept | None
    children: tuple[ContentItem, ...]

    def walk(self) -> Iterator[ContentItem]:
        """Every content item below this one, depth first (this one excluded)."""
        for child in self.children:
            yield child
            yield from child.walk()

    def text(self) -> str:
        """The item's value as text: see :func:`text_of`."""
        return text_of(self.dataset)


def read_content_tree(item: Dataset) -> ContentItem:
    """The content tree below `item` (usually the SR document itself), read once."""
    return ContentItem(
        dataset=item,
        concept=concept_of(item),
        children=tuple(
            read_content_tree(child) for child in _value_of(item, _CONTENT_SEQUENCE) or []
        ),
    )


def find_texts(item: ContentItem, concept: Concept) -> list[str]:
    """Non-empty values of every content item below `item` named `concept`."""
    return find_texts_of(item, [concept])[concept]


def find_texts_of(item: ContentItem, concepts: list[Concept]) -> dict[Concept, list[str]]:
    """:func:`find_texts` for several concepts in one walk of the tree."""
    found: dict[Concept, list[str]] = {concept: [] for concept in concepts}
    for child in item.walk():
        texts = found.get(child.concept)  # type: ignore[arg-type]
        if texts is not None and (text := child.text()):
            texts.append(text)
    return found


def measurement_groups(root: ContentItem) -> list[ContentItem]:
    """TID 1500's measurement groups: the containers 125007 inside Imaging Measurements 126010."""
    return [
        group
        for container in root.children
        if container.concept == IMAGING_MEASUREMENTS
        for group in container.children
        if group.concept == MEASUREMENT_GROUP
    ]
