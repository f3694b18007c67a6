"""Blanking configured rectangles in uncompressed pixel data (the Clean Pixel Data option).

Only native (uncompressed) pixel data is cleaned: it can be blanked frame by frame as it is
copied, without decoding a whole multi-frame instance. Compressed pixel data would need a
decode and a lossy or lossless re-encode the engine does not do, so it is refused with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from aifi.dicom.deid.errors import DeidRefused


@dataclass(frozen=True)
class Region:
    """A rectangle in pixels, (x, y) its top-left corner, applied to every frame."""

    x: int
    y: int
    width: int
    height: int


def parse_regions(regions: Iterable[tuple[int, int, int, int]] | None) -> tuple[Region, ...]:
    """Validate (x, y, w, h) rectangles; raises ValueError naming the bad rectangle."""
    parsed: list[Region] = []
    for index, region in enumerate(regions or ()):
        values = tuple(region)
        if len(values) != 4 or not all(isinstance(v, int) and v >= 0 for v in values):
            raise ValueError(
                f"clean_pixel_regions[{index}] must be four non-negative integers (x, y, w, h)"
            )
        x, y, w, h = values
        if w == 0 or h == 0:
            raise ValueError(f"clean_pixel_regions[{index}] has zero width or height")
        parsed.append(Region(x, y, w, h))
    return tuple(parsed)


@dataclass(frozen=True)
class NativeLayout:
    """How one frame of native pixel data is laid out in bytes."""

    rows: int
    columns: int
    samples: int
    bytes_per_sample: int
    planar: bool
    frames: int

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples * self.bytes_per_sample


def native_layout(ds: Dataset, transfer_syntax: UID) -> NativeLayout:
    """The frame layout of `ds`'s native pixel data; DeidRefused if it cannot be cleaned."""
    if transfer_syntax.is_compressed:
        raise DeidRefused(
            f"Clean Pixel Data: pixel data is compressed ({transfer_syntax.name}); the engine "
            "blanks regions in uncompressed pixel data only, ask the source to send it "
            "uncompressed"
        )
    try:
        bits = int(ds.BitsAllocated)
        layout = NativeLayout(
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            samples=int(ds.get("SamplesPerPixel", 1)),
            bytes_per_sample=bits // 8,
            planar=int(ds.get("PlanarConfiguration", 0) or 0) == 1,
            frames=int(ds.get("NumberOfFrames", 1) or 1),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise DeidRefused(
            "Clean Pixel Data: the Image Pixel module is incomplete (Rows, Columns, Bits "
            "Allocated), so the regions cannot be located"
        ) from exc
    if bits % 8 or bits == 0:
        raise DeidRefused(f"Clean Pixel Data: Bits Allocated {bits} is not a whole byte")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric.startswith("YBR") and photometric.endswith(("422", "420")):
        raise DeidRefused(
            f"Clean Pixel Data: subsampled Photometric Interpretation {photometric} is not "
            "supported for region blanking"
        )
    return layout


def blank_frame(frame: bytearray, layout: NativeLayout, regions: Iterable[Region]) -> None:
    """Set every sample inside the regions of one frame to zero, in place."""
    pixels = np.frombuffer(frame, dtype=np.uint8)
    if layout.planar:
        shaped = pixels.reshape(
            layout.samples, layout.rows, layout.columns * layout.bytes_per_sample
        )
        for r in regions:
            shaped[
                :,
                r.y : r.y + r.height,
                r.x * layout.bytes_per_sample : (r.x + r.width) * layout.bytes_per_sample,
            ] = 0
    else:
        step = layout.samples * layout.bytes_per_sample
        rows = pixels.reshape(layout.rows, layout.columns * step)
        for r in regions:
            rows[r.y : r.y + r.height, r.x * step : (r.x + r.width) * step] = 0


def blank_dataset_pixels(ds: Dataset, transfer_syntax: UID, regions: Iterable[Region]) -> None:
    """Blank the regions in every frame of an in-memory dataset's Pixel Data."""
    layout = native_layout(ds, transfer_syntax)
    data = bytearray(ds.PixelData)
    if len(data) < layout.frame_bytes * layout.frames:
        raise DeidRefused("Clean Pixel Data: Pixel Data is shorter than Rows x Columns x frames")
    regions = tuple(regions)
    for index in range(layout.frames):
        start = index * layout.frame_bytes
        frame = bytearray(data[start : start + layout.frame_bytes])
        blank_frame(frame, layout, regions)
        data[start : start + layout.frame_bytes] = frame
    ds.PixelData = bytes(data)
