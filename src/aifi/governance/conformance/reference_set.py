"""The kit's reference studies: synthetic phantoms the product accepts, pseudonymised as a
hospital gateway would, plus one corrupt study the product must refuse with a reason.

Each phantom kind the manifest accepts (modality, body part, SOP class) contributes studies
alternating between a normal one and one with the kind's finding (haemorrhage, nodule,
fracture), so a product sees both. Pseudonymisation uses the manifest's own Annex E options
(the minimum-necessary contract), with a key only the kit holds.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from aifi.dicom.deid import Deidentifier, DeidError, DeidRefused, PseudonymKey, validate_options
from aifi.exchange.schemas import ProductManifest
from aifi.phantoms import PhantomKind, write_study
from aifi.phantoms.encode import SOP_CLASS_BY_MODALITY
from aifi.phantoms.kinds import PROFILES

#: The finding each kind can carry, as keyword arguments to :func:`aifi.phantoms.write_study`.
FINDINGS: dict[PhantomKind, tuple[str, dict[str, Any]]] = {
    PhantomKind.CT_HEAD: ("intracranial haemorrhage 12 mL", {"haemorrhage_ml": 12.0}),
    PhantomKind.CT_CHEST: ("lung nodule 8 mm", {"nodules": [8.0]}),
    PhantomKind.MR_BRAIN: ("normal (second subject)", {}),
    PhantomKind.DX_HAND: ("distal radius fracture", {"fracture": True}),
}


@dataclass(frozen=True)
class ReferenceStudy:
    """One pseudonymised study ready to upload as a job."""

    label: str
    kind: PhantomKind
    role: str  # reference | corrupt | sentinel | other (another vendor's job)
    files: list[Path]
    study_uid: str
    patient_pseudonym: str


class NoReferenceStudies(ValueError):
    """No phantom kind matches what the manifest accepts: the kit cannot test the product."""


def accepted_kinds(manifest: ProductManifest) -> list[PhantomKind]:
    """The phantom kinds whose modality, body part and SOP class the manifest accepts."""
    accepts = manifest.accepts
    kinds = []
    for kind in PhantomKind:
        profile = PROFILES[kind]
        sop_class = SOP_CLASS_BY_MODALITY[profile.modality]
        if accepts.modalities and profile.modality not in accepts.modalities:
            continue
        if accepts.body_parts and profile.body_part not in accepts.body_parts:
            continue
        if accepts.sop_classes and sop_class not in accepts.sop_classes:
            continue
        kinds.append(kind)
    return kinds


class StudyMaker:
    """Writes phantoms and pseudonymises them with the product's options and the kit's key."""

    def __init__(self, manifest: ProductManifest, folder: Path, size: str = "default") -> None:
        self.folder = folder
        self.size = size
        self.kinds = accepted_kinds(manifest)
        if not self.kinds:
            accepts = manifest.accepts.model_dump()
            raise NoReferenceStudies(
                f"product {manifest.id!r}: no synthetic study matches what it accepts "
                f"({accepts}); the kit has CT head, CT chest, MR brain and DX hand"
            )
        self._engine = Deidentifier(
            PseudonymKey(secrets.token_bytes(32)),
            options=validate_options(manifest.data_needed),
        )
        self._count = 0

    def reference(self, per_kind: int) -> list[ReferenceStudy]:
        """`per_kind` studies of each accepted kind, alternating normal and with a finding."""
        studies = []
        for kind in self.kinds:
            for index in range(per_kind):
                studies.append(self.study(kind, "reference", with_finding=index % 2 == 1))
        return studies

    def study(self, kind: PhantomKind, role: str, *, with_finding: bool = False) -> ReferenceStudy:
        self._count += 1
        seed = 100 + self._count
        label, extra = FINDINGS[kind] if with_finding else ("normal", {})
        raw = self.folder / "phantoms" / f"{self._count:02d}-{kind.value}"
        write_study(kind, raw, seed=seed, size=self.size, **extra)
        out = self.folder / "pseudonymised" / f"{self._count:02d}-{kind.value}"
        return self._pseudonymise(
            sorted(raw.rglob("*.dcm")), out, f"{kind.value}: {label}", kind, role
        )

    def corrupt(self) -> ReferenceStudy:
        """A study whose headers are sound but whose pixel data is cut short in every image."""
        study = self.study(self.kinds[0], "corrupt")
        for path in study.files:
            truncate_pixel_data(path)
        return ReferenceStudy(
            label=f"{study.kind.value}: pixel data cut short (corrupt)",
            kind=study.kind,
            role="corrupt",
            files=study.files,
            study_uid=study.study_uid,
            patient_pseudonym=study.patient_pseudonym,
        )

    def _pseudonymise(
        self, files: list[Path], out: Path, label: str, kind: PhantomKind, role: str
    ) -> ReferenceStudy:
        out.mkdir(parents=True, exist_ok=True)
        sent: list[Path] = []
        pseudonym = ""
        for index, path in enumerate(files):
            target = out / f"{index:04d}.dcm"
            try:
                result = self._engine.deidentify_file(path, target)
            except (DeidRefused, DeidError):
                continue  # as the gateway does: an instance it cannot clean is not sent
            pseudonym = result.patient_pseudonym
            sent.append(target)
        if not sent:
            raise NoReferenceStudies(f"{label}: the pseudonymiser refused every instance")
        study_uid = str(pydicom.dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
        return ReferenceStudy(label, kind, role, sent, study_uid, pseudonym)


def truncate_pixel_data(path: Path, keep: Callable[[int], int] = lambda n: n // 3) -> None:
    """Keep only part of the Pixel Data (an even number of bytes); the header stays valid."""
    dataset = pydicom.dcmread(path)
    data = bytes(dataset.PixelData)
    length = keep(len(data)) & ~1
    dataset.PixelData = data[:length]
    dataset.save_as(path)
