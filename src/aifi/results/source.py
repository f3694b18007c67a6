"""The source images a result is built from: one study, and no strings attached afterwards.

A result joins the study it was computed from by copying that study's Patient and Study modules;
if the sources mixed two studies the result would silently join one of them, so the builders
refuse that up front, and they cut the result loose from the sources' elements once it is built.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from pydicom import DataElement, Dataset

_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def study_of(source_images: Sequence[Dataset]) -> str:
    """The Study Instance UID shared by all `source_images`.

    Raises
    ------
    ValueError
        If there are no source images, one lacks a SOP Class / SOP Instance / Study Instance /
        Series Instance UID, or they belong to more than one study.
    """
    if not source_images:
        raise ValueError("a result needs at least one source image")
    for position, image in enumerate(source_images, start=1):
        missing = [keyword for keyword in _REQUIRED if not image.get(keyword)]
        if missing:
            raise ValueError(f"source image {position} lacks {', '.join(missing)}")
    studies = {str(image.StudyInstanceUID) for image in source_images}
    if len(studies) != 1:
        raise ValueError(
            f"source images must all belong to one study (StudyInstanceUID (0020,000D)); "
            f"got {len(studies)} studies"
        )
    return studies.pop()


def detach_from_sources(result: Dataset, source_images: Sequence[Dataset]) -> None:
    """Give `result` its own copies of the elements it shares with `source_images`.

    highdicom copies the Patient and Study modules by reference, so without this, changing the
    result (as the gateway does when it re-identifies it) would silently change the source
    datasets still held in memory too.
    """
    shared = {
        id(element)
        for source in source_images
        for tag in list(source.keys())
        if isinstance(element := source.get_item(tag, keep_deferred=True), DataElement)
    }
    for tag in list(result.keys()):
        element = result.get_item(tag, keep_deferred=True)
        if isinstance(element, DataElement) and id(element) in shared:
            result[tag] = copy.deepcopy(element)
