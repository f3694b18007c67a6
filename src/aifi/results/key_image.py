"""A key image for the web pages: one slice, windowed, with the segmentation drawn over it.

The exchange's and the gateway's pages show what a product found without a DICOM viewer. The
picture is made with matplotlib's Agg canvas directly (no pyplot, so no global state and no
display), at a fixed size whatever the matrix, with the intended-use label burned in so a
screenshot cannot be mistaken for a clinical result.

matplotlib is imported only when a picture is drawn: the gateway imports this module, and every
`aifi gateway` command (`--check` too) would otherwise load matplotlib, which for a service
account without a home it can write makes a temporary folder and warns of it each time.
:func:`use_matplotlib_folder` gives it a folder of its own for the drawing gateway.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from aifi.results.algorithm import NOT_FOR_CLINICAL_USE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: Edge of the PNG in pixels.
KEY_IMAGE_PIXELS = 512
_DPI = 128
_FILL_ALPHA = 0.35
#: matplotlib's folder (its font cache) in a workdir, for a service account without a home.
MATPLOTLIB_FOLDER = "matplotlib"


def use_matplotlib_folder(workdir: Path) -> None:
    """Have matplotlib keep its configuration and font cache in `workdir`'s own folder when
    MPLCONFIGDIR is unset and the home is no folder this user can write (the guide's service
    account has none): matplotlib would otherwise build its font cache in a temporary folder at
    every start of the service, and warn of it in the journal. Call it before the first key
    image is drawn; a home that can be written to is left to matplotlib as it is."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    try:
        home: Path | None = Path.home()
    except RuntimeError:  # no HOME, and no home in the password database
        home = None
    if home is not None and home.is_dir() and os.access(home, os.W_OK | os.X_OK):
        return
    os.environ["MPLCONFIGDIR"] = str(workdir / MATPLOTLIB_FOLDER)


def render_key_image(
    image: Dataset,
    mask: np.ndarray | None,
    path: Path,
    *,
    window: tuple[float, float] | None = None,
    label: str | None = NOT_FOR_CLINICAL_USE,
) -> Path:
    """Write `image` as a PNG at `path` with `mask` overlaid, and return `path`.

    Parameters
    ----------
    image:
        A single-frame greyscale image with pixel data (e.g. one CT slice).
    mask:
        A (rows, cols) array of segment labels (0 = background), or None for the image alone.
        Each label gets its own colour: a translucent fill and a solid outline.
    window:
        (centre, width) in modality units (HU for CT); by default the image's first Window
        Center / Width, else its 1st to 99th percentile.
    label:
        Text burned into the lower left corner; None for none.

    Raises
    ------
    ValueError
        If the image is multi-frame or colour, or the mask's shape differs from the image's.
    """
    if int(image.get("NumberOfFrames", 1) or 1) > 1 or int(image.get("SamplesPerPixel", 1)) != 1:
        raise ValueError("a key image is made from a single-frame greyscale image")
    values = np.asarray(apply_modality_lut(image.pixel_array, image), dtype=float)
    if mask is not None and np.shape(mask) != values.shape:
        raise ValueError(
            f"mask shape {np.shape(mask)} differs from the image's {values.shape} "
            "(Rows (0028,0010), Columns (0028,0011))"
        )
    shown = _windowed(values, window or _window_of(image, values))
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # only when drawing: see above
    from matplotlib.figure import Figure

    figure = Figure(figsize=(KEY_IMAGE_PIXELS / _DPI,) * 2, dpi=_DPI, facecolor="black")
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_axis_off()
    aspect = _aspect(image)
    axes.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect=aspect)
    if mask is not None:
        _overlay(axes, np.asarray(mask), aspect)
    if label:
        axes.text(
            0.02,
            0.02,
            label,
            transform=axes.transAxes,
            color="yellow",
            fontsize=8,
            bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"},
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI, facecolor="black")
    return path


def _window_of(image: Dataset, values: np.ndarray) -> tuple[float, float]:
    centre, width = image.get("WindowCenter"), image.get("WindowWidth")
    if centre is not None and width is not None:
        return _first(centre), _first(width)
    low, high = np.percentile(values, [1, 99])
    return (low + high) / 2, max(high - low, 1.0)


def _first(value: object) -> float:
    """The first of a possibly multi-valued DS (Window Center may hold several windows)."""
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _windowed(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    centre, width = window
    return np.clip((values - (centre - width / 2)) / max(width, 1e-6), 0.0, 1.0)


def _aspect(image: Dataset) -> float:
    """Row spacing over column spacing, so anisotropic pixels are drawn the right shape."""
    spacing = image.get("PixelSpacing")
    if not spacing or float(spacing[1]) == 0:
        return 1.0
    return float(spacing[0]) / float(spacing[1])


def _overlay(axes: Axes, mask: np.ndarray, aspect: float) -> None:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    labels = [int(v) for v in np.unique(mask) if v != 0]
    fill = np.zeros((*mask.shape, 4))
    for index, value in enumerate(labels):
        colour = palette(index % 10)
        fill[mask == value] = (*colour[:3], _FILL_ALPHA)
        axes.contour((mask == value).astype(float), levels=[0.5], colors=[colour], linewidths=1.5)
    axes.imshow(fill, interpolation="nearest", aspect=aspect)


# -- a key image from a result's SEG ----------------------------------------------------------

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
    """Render the largest segmented slice of the first SEG in `results` to `target` (PNG).

    `source_path` finds the file of a source image by its SOP Instance UID: the gateway looks
    in its spool (original UIDs), the exchange among a job's inputs (pseudonymised UIDs).
    A result without a segmentation gets no key image (None).
    """
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
