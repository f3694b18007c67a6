"""Plan, stream and write synthetic studies, and measure their truth on the voxels written.

A :class:`PhantomStudy` fixes everything that the seed decides (identity, UIDs, anatomy,
lesion placement) without making a pixel. Its images are then made one slice at a time, either
as pydicom datasets for a sender that streams (:meth:`PhantomStudy.datasets`) or straight to
files (:meth:`PhantomStudy.write`), so even a 300-slice 512 x 512 CT never sits in memory whole.
The truth is tallied from the same label slices the pixels are rendered from.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from aifi.phantoms.chest import CHEST_HU, CHEST_HU_NOISE, ChestModel, Nodule, place_nodules
from aifi.phantoms.encode import (
    SeriesContext,
    base_dataset,
    set_axial_plane,
    set_ct_image,
    set_dx_image,
    set_mr_image,
)
from aifi.phantoms.geometry import GridSize, VolumeGrid
from aifi.phantoms.hand import HandRadiograph
from aifi.phantoms.head import (
    HEAD_HU,
    HEAD_HU_NOISE,
    HEAD_T1,
    Haemorrhage,
    HeadModel,
    haemorrhage_site,
)
from aifi.phantoms.identity import PatientIdentity, identity_from_seed
from aifi.phantoms.kinds import PROFILES, SizeName, resolve_size
from aifi.phantoms.measure import (
    VoxelTally,
    brain_truth,
    haemorrhage_truth,
    lung_truth,
    nodule_truths,
)
from aifi.phantoms.render import render_ct, render_t1
from aifi.phantoms.truth import FractureTruth, GridTruth, PhantomKind, SeriesTruth, StudyTruth


class PhantomStudy:
    """A synthetic study planned from a seed; make it with :meth:`datasets` or :meth:`write`."""

    def __init__(
        self,
        kind: PhantomKind | str,
        *,
        seed: int = 0,
        identity: PatientIdentity | Mapping[str, object] | None = None,
        size: SizeName | str | GridSize = "default",
        haemorrhage_ml: float | None = None,
        haemorrhage_centre_mm: tuple[float, float, float] | None = None,
        nodules: Sequence[Nodule | float] | None = None,
        fracture: bool = False,
    ):
        self.kind = PhantomKind(kind)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = seed
        self.profile = PROFILES[self.kind]
        self.size = resolve_size(self.kind, size)
        self._check_findings_apply(haemorrhage_ml, haemorrhage_centre_mm, nodules, fracture)
        if isinstance(identity, PatientIdentity):
            self.identity = identity
        else:
            self.identity = identity_from_seed(
                seed, self.profile.study_description, **dict(identity or {})
            )
        anatomy_rng = np.random.default_rng([seed, 1])
        lesion_rng = np.random.default_rng([seed, 2])
        scale = float(anatomy_rng.uniform(0.92, 1.06))
        atrophy = float(anatomy_rng.uniform(0.96, 1.0))
        self.haemorrhage: Haemorrhage | None = None
        self.nodules: list[Nodule] = []
        self.head: HeadModel | None = None
        self.chest: ChestModel | None = None
        self.hand: HandRadiograph | None = None
        if self.kind in (PhantomKind.CT_HEAD, PhantomKind.MR_BRAIN):
            if haemorrhage_ml is not None:
                x, y, z = haemorrhage_centre_mm or haemorrhage_site(
                    haemorrhage_ml, scale, atrophy, lesion_rng
                )
                self.haemorrhage = Haemorrhage(
                    float(haemorrhage_ml), (float(x), float(y), float(z))
                )
            self.head = HeadModel(scale, atrophy, self.haemorrhage)
        elif self.kind is PhantomKind.CT_CHEST:
            wanted = [n if isinstance(n, Nodule) else Nodule(float(n)) for n in nodules or []]
            self.nodules = place_nodules(wanted, scale, lesion_rng)
            self.chest = ChestModel(scale, self.nodules)
        else:
            self.hand = HandRadiograph(self.size, fracture)
        self.grid = VolumeGrid(self.size)
        self._digest = self._fingerprint()
        self.study_instance_uid = self._uid("study")
        self.series_instance_uid = self._uid("series", 1)
        self.frame_of_reference_uid = (
            None if self.hand is not None else self._uid("frame-of-reference")
        )

    @property
    def instance_count(self) -> int:
        return 1 if self.hand is not None else self.size.slices

    def sop_instance_uid(self, instance_number: int) -> str:
        return self._uid("instance", 1, instance_number)

    def filename(self, instance_number: int) -> str:
        """File name of an instance inside the study folder, e.g. ``CT_1_0001.dcm``."""
        return f"{self.profile.modality}_1_{instance_number:04d}.dcm"

    def datasets(self) -> Iterator[Dataset]:
        """The study's instances in instance-number order, made one at a time."""
        for dataset, _labels in self._instances():
            yield dataset

    def write(self, out_dir: Path) -> StudyTruth:
        """Write each instance as a DICOM file in `out_dir`; return the truth of what it wrote."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tally = VoxelTally()
        fracture: FractureTruth | None = None
        for dataset, measured in self._instances(tally):
            dataset.save_as(
                out_dir / self.filename(int(dataset.InstanceNumber)), enforce_file_format=True
            )
            fracture = measured or fracture
        return self._truth(tally, fracture)

    def truth(self) -> StudyTruth:
        """The truth without writing files (renders the labels again, skips DICOM encoding)."""
        tally = VoxelTally()
        fracture = None
        if self.hand is not None:
            _pixels, fracture = self.hand.render(self._noise_rng(0))
        else:
            for index in range(self.size.slices):
                self._labels(index, tally)
        return self._truth(tally, fracture)

    # -- making instances -------------------------------------------------------------------

    def _context(self) -> SeriesContext:
        return SeriesContext(
            identity=self.identity,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            frame_of_reference_uid=self.frame_of_reference_uid,
            series_number=1,
            modality=self.profile.modality,
            series_description=self._series_description(),
            body_part=self.profile.body_part,
        )

    def _series_description(self) -> str:
        if self.hand is not None:
            return self.profile.series_description
        return f"{self.profile.series_description} {self.size.slice_thickness_mm:g}mm"

    def _instances(
        self, tally: VoxelTally | None = None
    ) -> Iterator[tuple[Dataset, FractureTruth | None]]:
        ctx = self._context()
        if self.hand is not None:
            pixels, fracture = self.hand.render(self._noise_rng(0))
            ds = base_dataset(ctx, 1, self.sop_instance_uid(1))
            set_dx_image(
                ds, pixels, self.size.pixel_spacing_mm, self.profile.windows[0], laterality="L"
            )
            yield ds, fracture
            return
        for index in range(self.size.slices):
            labels = self._labels(index, tally)
            rng = self._noise_rng(index)
            ds = base_dataset(ctx, index + 1, self.sop_instance_uid(index + 1))
            set_axial_plane(ds, self.grid, index)
            if self.profile.modality == "MR":
                set_mr_image(ds, render_t1(labels, HEAD_T1, rng), self.profile.windows)
            else:
                set_ct_image(
                    ds, self._render_hu(labels, rng), self.profile.windows, self.profile.kernel
                )
            yield ds, None

    def _labels(self, index: int, tally: VoxelTally | None) -> np.ndarray:
        model = self.head if self.head is not None else self.chest
        assert model is not None
        x, y, z = self.grid.x_mm(), self.grid.y_mm(), self.grid.z_mm(index)
        labels = model.labels(x[None, :], y[:, None], z)
        if tally is not None:
            xs = np.broadcast_to(x[None, :], labels.shape).ravel()
            ys = np.broadcast_to(y[:, None], labels.shape).ravel()
            tally.add(labels, xs, ys, z)
        return labels

    def _render_hu(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.head is not None:
            return render_ct(labels, HEAD_HU, HEAD_HU_NOISE, rng)
        return render_ct(labels, CHEST_HU, CHEST_HU_NOISE, rng)

    def _noise_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 3, index])

    # -- identity and truth -----------------------------------------------------------------

    def _fingerprint(self) -> str:
        """A digest of everything that shapes the study, so UIDs differ whenever content does."""
        spec = {
            "kind": self.kind.value,
            "seed": self.seed,
            "identity": self.identity.model_dump(mode="json"),
            "size": asdict(self.size),
            "haemorrhage": asdict(self.haemorrhage) if self.haemorrhage else None,
            "nodules": [asdict(n) for n in self.nodules],
            "fracture": self.hand is not None and self.hand.fracture is not None,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def _uid(self, *parts: object) -> str:
        """A deterministic ``2.25`` UID: a name-based UUID of the study's digest and `parts`.

        (pydicom's generate_uid ignores its entropy sources when the prefix is None, so it
        cannot give a reproducible 2.25 UID.)
        """
        name = "/".join(["aifi-phantom", self._digest, *map(str, parts)])
        digest = hashlib.sha256(name.encode()).digest()
        return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"

    def _check_findings_apply(
        self,
        haemorrhage_ml: float | None,
        haemorrhage_centre_mm: object,
        nodules: object,
        fracture: bool,
    ) -> None:
        head = (PhantomKind.CT_HEAD, PhantomKind.MR_BRAIN)
        if (
            haemorrhage_ml is not None or haemorrhage_centre_mm is not None
        ) and self.kind not in head:
            raise ValueError(f"haemorrhage applies to ct-head and mr-brain, not {self.kind.value}")
        if haemorrhage_centre_mm is not None and haemorrhage_ml is None:
            raise ValueError("haemorrhage_centre_mm needs haemorrhage_ml")
        if nodules and self.kind is not PhantomKind.CT_CHEST:
            raise ValueError(f"nodules apply to ct-chest, not {self.kind.value}")
        if fracture and self.kind is not PhantomKind.DX_HAND:
            raise ValueError(f"fracture applies to dx-hand, not {self.kind.value}")

    def _truth(self, tally: VoxelTally, fracture: FractureTruth | None) -> StudyTruth:
        voxel = self.grid.voxel_volume_mm3 if self.hand is None else self.size.pixel_spacing_mm**2
        truth = StudyTruth(
            kind=self.kind,
            seed=self.seed,
            identity=self.identity,
            study_instance_uid=self.study_instance_uid,
            frame_of_reference_uid=self.frame_of_reference_uid,
            series=[
                SeriesTruth(
                    series_instance_uid=self.series_instance_uid,
                    series_number=1,
                    modality=self.profile.modality,
                    sop_class_uid=self._context().sop_class_uid,
                    sop_instance_uids=[
                        self.sop_instance_uid(i) for i in range(1, self.instance_count + 1)
                    ],
                )
            ],
            grid=GridTruth(
                rows=self.size.rows,
                columns=self.size.columns,
                slices=self.instance_count,
                pixel_spacing_mm=(self.size.pixel_spacing_mm, self.size.pixel_spacing_mm),
                slice_thickness_mm=self.size.slice_thickness_mm if self.hand is None else 0.0,
                voxel_volume_mm3=round(voxel, 6),
            ),
            fracture=fracture,
        )
        if self.head is not None:
            return truth.model_copy(
                update={
                    "brain": brain_truth(tally, voxel),
                    "haemorrhage": haemorrhage_truth(tally, voxel, self.haemorrhage),
                }
            )
        if self.chest is not None:
            return truth.model_copy(
                update={
                    "lungs": lung_truth(tally, voxel),
                    "nodules": nodule_truths(tally, voxel, self.nodules),
                }
            )
        return truth


def write_study(
    kind: PhantomKind | str,
    out_dir: Path,
    *,
    seed: int = 0,
    identity: PatientIdentity | Mapping[str, object] | None = None,
    size: SizeName | str | GridSize = "default",
    haemorrhage_ml: float | None = None,
    haemorrhage_centre_mm: tuple[float, float, float] | None = None,
    nodules: Sequence[Nodule | float] | None = None,
    fracture: bool = False,
) -> StudyTruth:
    """Write one synthetic study as DICOM files in `out_dir` and return its truth.

    `identity` is a full :class:`PatientIdentity` or a mapping of fields that replace those the
    seed chose (e.g. ``{"institution_name": "..."}``). `nodules` are :class:`Nodule` objects or
    bare diameters in mm (placed by the seed). Raises ValueError naming the rule when a finding
    does not apply to `kind` or does not fit the anatomy.
    """
    study = PhantomStudy(
        kind,
        seed=seed,
        identity=identity,
        size=size,
        haemorrhage_ml=haemorrhage_ml,
        haemorrhage_centre_mm=haemorrhage_centre_mm,
        nodules=nodules,
        fracture=fracture,
    )
    return study.write(Path(out_dir))
