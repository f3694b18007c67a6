"""Ground truth of a synthetic study, in physical units, measured on the voxels actually written.

Reference AI products and the clinical evaluation compare their output with this: brain
volumetry, lung nodules, intracranial haemorrhage, fractures. Every number here is counted on
the label grid from which the pixels were rendered (a volume is a voxel count times the voxel
volume; a centre is the mean position of the voxels), never taken from the requested size, so a
coarse grid cannot make the truth disagree with the images.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from aifi.phantoms.identity import PatientIdentity

Point3D = tuple[float, float, float]


class PhantomKind(StrEnum):
    """The kinds of synthetic study; the value is the name used on the command line."""

    CT_HEAD = "ct-head"
    CT_CHEST = "ct-chest"
    MR_BRAIN = "mr-brain"
    DX_HAND = "dx-hand"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class SeriesTruth(_Frozen):
    """One written series and the SOP Instance UIDs of its instances, in instance-number order."""

    series_instance_uid: str
    series_number: int
    modality: str
    sop_class_uid: str
    sop_instance_uids: list[str]


class GridTruth(_Frozen):
    """The sampling of the written images (one slice for a radiograph)."""

    rows: int
    columns: int
    slices: int
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    voxel_volume_mm3: float


class BrainTruth(_Frozen):
    """Brain volumetry: intracranial volume and its compartments.

    Intracranial volume is everything inside the inner table of the skull: grey and white matter,
    CSF (subarachnoid and ventricular) and haemorrhage. Brain parenchyma is grey plus white
    matter (a haemorrhage displaces parenchyma and is not counted as such), and the brain
    parenchymal fraction is parenchyma divided by intracranial volume.
    """

    intracranial_volume_ml: float
    brain_parenchyma_ml: float
    brain_parenchymal_fraction: float
    grey_matter_ml: float
    white_matter_ml: float
    csf_ml: float
    ventricles_ml: float


class HaemorrhageTruth(_Frozen):
    """An intraparenchymal haemorrhage as written: volume from its voxels, centre their mean.

    `planned_centre_mm` is the centre of the ellipsoid it was drawn from; `centre_mm` falls back
    to it only when the grid is too coarse to hold a single voxel (then `voxel_count` is 0).
    """

    requested_volume_ml: float
    volume_ml: float
    voxel_count: int
    planned_centre_mm: Point3D
    centre_mm: Point3D


class NoduleTruth(_Frozen):
    """A solid lung nodule as written; `diameter_mm` is that of a sphere of the written volume.

    A nodule smaller than the grid's voxels may fall between voxel centres: then `voxel_count`,
    `volume_mm3` and `diameter_mm` are 0 and `centre_mm` is the planned centre.
    """

    index: int
    requested_diameter_mm: float
    diameter_mm: float
    volume_mm3: float
    voxel_count: int
    planned_centre_mm: Point3D
    centre_mm: Point3D


class LungTruth(_Frozen):
    """Aerated lung volume (nodules excluded) of each side."""

    right_ml: float
    left_ml: float


class FractureTruth(_Frozen):
    """A fracture line on a radiograph, in pixel (row, column) and image millimetres.

    Millimetres are measured from the centre of the top-left pixel along rows (down) and columns
    (right) at the Imager Pixel Spacing; a radiograph has no patient coordinate system.
    """

    bone: str
    line_start_px: tuple[float, float]
    line_end_px: tuple[float, float]
    line_start_mm: tuple[float, float]
    line_end_mm: tuple[float, float]
    bounding_box_px: tuple[int, int, int, int]
    """(first row, first column, last row, last column) of the pixels the fracture changed."""
    pixel_count: int


class StudyTruth(_Frozen):
    """Everything known about a synthetic study: identity, UIDs, sampling and findings."""

    kind: PhantomKind
    seed: int
    identity: PatientIdentity
    study_instance_uid: str
    frame_of_reference_uid: str | None
    series: list[SeriesTruth]
    grid: GridTruth
    brain: BrainTruth | None = None
    haemorrhage: HaemorrhageTruth | None = None
    lungs: LungTruth | None = None
    nodules: list[NoduleTruth] = []
    fracture: FractureTruth | None = None

    @property
    def instance_count(self) -> int:
        return sum(len(s.sop_instance_uids) for s in self.series)

    def write_json(self, path: Path) -> None:
        """Write the truth as indented JSON (read it back with :meth:`read_json`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read_json(cls, path: Path) -> StudyTruth:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))
