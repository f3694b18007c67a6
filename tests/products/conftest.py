"""Each reference product run once per session over phantoms with known truth, and helpers.

The accuracy runs go through :func:`aifi.products.accuracy.measure_accuracy`, which runs a
product exactly as a worker would (its ``run`` on a folder of DICOM files) and keeps every
output under the session's folder, so the tests of figures, DICOM validity and result content
all look at the same results without running the algorithms twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from aifi.phantoms import GridSize, StudyTruth, write_study
from aifi.products import brain_volumetry, ich_triage, lung_nodules
from aifi.products.accuracy import measure_accuracy
from aifi.vendor import Handler, JobContext, ProductResult

#: Studies per product: enough seeds for positives and negatives, few enough to stay fast.
BRAIN_STUDIES = 4  # CT head and MR brain alternate, default grids (MR needs 3 mm slices)
LUNG_STUDIES = 6  # one without nodules, the others one to five of 4–25 mm, default grid
ICH_STUDIES = 10  # every other one positive, 1 to 45 mL, on a medium grid
ICH_GRID = GridSize(128, 128, 1.8, slices=25, slice_thickness_mm=6.0)


@dataclass(frozen=True)
class Evaluated:
    """A product's accuracy report and the folder holding every study it ran on."""

    report: dict[str, Any]
    workdir: Path

    def outputs(self, seed: int) -> Path:
        return self.workdir / self.report["product_id"] / f"seed-{seed}" / "outputs"

    def inputs(self, seed: int) -> Path:
        return self.workdir / self.report["product_id"] / f"seed-{seed}" / "inputs"

    def result_files(self) -> list[Path]:
        return sorted(
            path
            for seed in range(self.report["studies"])
            for path in self.outputs(seed).glob("*.dcm")
        )


@pytest.fixture(scope="session")
def brain_run(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    workdir = tmp_path_factory.mktemp("brain-accuracy")
    return Evaluated(measure_accuracy(brain_volumetry.PRODUCT_ID, BRAIN_STUDIES, workdir), workdir)


@pytest.fixture(scope="session")
def lung_run(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    workdir = tmp_path_factory.mktemp("lung-accuracy")
    return Evaluated(measure_accuracy(lung_nodules.PRODUCT_ID, LUNG_STUDIES, workdir), workdir)


@pytest.fixture(scope="session")
def ich_run(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    workdir = tmp_path_factory.mktemp("ich-accuracy")
    report = measure_accuracy(ich_triage.PRODUCT_ID, ICH_STUDIES, workdir, size=ICH_GRID)
    return Evaluated(report, workdir)


@dataclass(frozen=True)
class Ran:
    truth: StudyTruth
    result: ProductResult
    output_dir: Path
    inputs: list[Path]


@pytest.fixture
def run_on_phantom(tmp_path: Path) -> Callable[..., Ran]:
    """Write a phantom and run `handler` on it; keyword arguments go to write_study."""
    counter = iter(range(1000))

    def run(handler: Handler, kind: str, **study: Any) -> Ran:
        folder = tmp_path / f"study{next(counter)}"
        truth = write_study(kind, folder / "inputs", **study)
        output_dir = folder / "outputs"
        output_dir.mkdir()
        inputs = sorted((folder / "inputs").glob("*.dcm"))
        result = handler(JobContext(job={"id": folder.name}, inputs=inputs, output_dir=output_dir))
        return Ran(truth, result, output_dir, inputs)

    return run


def _referenced_segments(sr: Dataset) -> list[tuple[str, int]]:
    found = []
    for child in sr.get("ContentSequence") or []:
        for ref in child.get("ReferencedSOPSequence") or []:
            if "ReferencedSegmentNumber" in ref:
                found.append((str(ref.ReferencedSOPInstanceUID), int(ref.ReferencedSegmentNumber)))
        found.extend(_referenced_segments(child))
    return found


@pytest.fixture
def referenced_segments() -> Callable[[Dataset], list[tuple[str, int]]]:
    """(SEG SOP Instance UID, segment number) of every segment an SR's content points at."""
    return _referenced_segments


@pytest.fixture
def segment_tracking() -> Callable[[Dataset], dict[int, tuple[str, str]]]:
    """Segment number → (tracking id, tracking UID) of a SEG."""

    def tracking(seg: Dataset) -> dict[int, tuple[str, str]]:
        return {
            int(item.SegmentNumber): (str(item.TrackingID), str(item.TrackingUID))
            for item in seg.SegmentSequence
        }

    return tracking
