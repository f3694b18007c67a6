"""A key image per result for the web pages: the slice where the product found the most.

The gateway renders it from the re-identified SEG and its own copy of the source image, so the
picture never leaves the hospital and needs no viewer. A result without a segmentation gets
no key image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from aifi.results.key_image import render_key_image

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _group(seg: pydicom.Dataset, frame: pydicom.Dataset, keyword: str) -> pydicom.Dataset:
    """A functional group item for one frame: its own, else the one shared by all frames."""
    if keyword in frame:
        return frame[keyword].value[0]
    return seg.SharedFunctionalGroupsSequence[0][keyword].value[0]


def _frame_sources(seg: pydicom.Dataset) -> list[tuple[str, int]]:
    """(source SOP Instance UID, segment number) for every frame of a SEG."""
    sources = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        derivation = _group(seg, frame, "DerivationImageSequence").SourceImageSequence[0]
        segment = _group(seg, frame, "SegmentIdentificationSequence").ReferencedSegmentNumber
        sources.append((str(derivation.ReferencedSOPInstanceUID), int(segment)))
    return sources


def render_result_key_image(
    results: list[Path], source_path: Callable[[str], Path | None], target: Path
) -> Path | None:
    """Render the largest segmented slice of the first SEG in `results` to `target` (PNG)."""
    for path in results:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        if str(header.SOPClassUID) != SEGMENTATION_STORAGE:
            continue
        seg = pydicom.dcmread(path)
        frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
        masks: dict[str, np.ndarray] = {}
        for index, (source, segment) in enumerate(_frame_sources(seg)):
            mask = masks.setdefault(source, np.zeros(frames.shape[1:], np.uint8))
            mask[frames[index] > 0] = segment
        if not masks:
            continue
        best = max(masks, key=lambda uid: int(np.count_nonzero(masks[uid])))
        image_path = source_path(best)
        if image_path is None:
            continue
        image = pydicom.dcmread(image_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return render_key_image(image, masks[best], target)
    return None
