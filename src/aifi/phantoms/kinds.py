"""What each kind of phantom is: its modality, descriptions, display windows and grid presets.

Presets: "small" for tests and the demo (well under a second to write), "default" for realistic
studies, "bench" for throughput benchmarks (a 300-slice 512 x 512 CT head, about 0.5 MB per
slice). Each preset covers the whole organ, so volumes in the truth are complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aifi.phantoms.encode import Window
from aifi.phantoms.geometry import GridSize
from aifi.phantoms.truth import PhantomKind

SizeName = Literal["small", "default", "bench"]

SIZE_PRESETS: dict[PhantomKind, dict[str, GridSize]] = {
    PhantomKind.CT_HEAD: {
        "small": GridSize(64, 64, 3.6, slices=16, slice_thickness_mm=10.0),
        "default": GridSize(256, 256, 0.9, slices=50, slice_thickness_mm=3.0),
        "bench": GridSize(512, 512, 0.45, slices=300, slice_thickness_mm=0.5),
    },
    PhantomKind.MR_BRAIN: {
        "small": GridSize(64, 64, 3.6, slices=16, slice_thickness_mm=10.0),
        "default": GridSize(256, 256, 0.9, slices=50, slice_thickness_mm=3.0),
        "bench": GridSize(512, 512, 0.45, slices=300, slice_thickness_mm=0.5),
    },
    PhantomKind.CT_CHEST: {
        "small": GridSize(64, 64, 6.0, slices=24, slice_thickness_mm=9.0),
        "default": GridSize(256, 256, 1.5, slices=70, slice_thickness_mm=3.0),
        "bench": GridSize(512, 512, 0.75, slices=300, slice_thickness_mm=0.7),
    },
    PhantomKind.DX_HAND: {
        "small": GridSize(128, 104, 2.0),
        "default": GridSize(1024, 832, 0.25),
        "bench": GridSize(2048, 1664, 0.125),
    },
}


@dataclass(frozen=True)
class KindProfile:
    """How a kind of study is labelled and shown: DICOM modality, body part, text, windows."""

    modality: str
    body_part: str
    study_description: str
    series_description: str
    windows: tuple[Window, ...]
    kernel: str = ""


PROFILES: dict[PhantomKind, KindProfile] = {
    PhantomKind.CT_HEAD: KindProfile(
        "CT",
        "HEAD",
        "CT HEAD WITHOUT CONTRAST",
        "SYNTHETIC PHANTOM Head axial",
        (Window(40, 80, "BRAIN"), Window(600, 2800, "BONE")),
        kernel="H30s",
    ),
    PhantomKind.CT_CHEST: KindProfile(
        "CT",
        "CHEST",
        "CT CHEST WITHOUT CONTRAST",
        "SYNTHETIC PHANTOM Chest axial",
        (Window(-600, 1500, "LUNG"), Window(40, 400, "MEDIASTINUM")),
        kernel="B50f",
    ),
    PhantomKind.MR_BRAIN: KindProfile(
        "MR",
        "HEAD",
        "MR BRAIN T1 3D",
        "SYNTHETIC PHANTOM T1 MPRAGE axial",
        (Window(500, 1000, "T1"),),
    ),
    PhantomKind.DX_HAND: KindProfile(
        "DX",
        "HAND",
        "XR HAND LEFT 1 VIEW",
        "SYNTHETIC PHANTOM Hand PA",
        (Window(1500, 2800, "DEFAULT"),),
    ),
}


def resolve_size(kind: PhantomKind, size: SizeName | str | GridSize) -> GridSize:
    """A preset name (small, default, bench) or an explicit :class:`GridSize`."""
    if isinstance(size, GridSize):
        return size
    try:
        return SIZE_PRESETS[kind][size]
    except KeyError:
        raise ValueError(
            f"size must be one of {sorted(SIZE_PRESETS[kind])} or a GridSize, got {size!r}"
        ) from None
