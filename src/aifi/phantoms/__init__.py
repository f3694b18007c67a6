"""Synthetic studies with known ground truth, written as valid DICOM.

CT head (optionally with an intracranial haemorrhage), CT chest (optionally with solid lung
nodules), MR brain T1 and a DX radiograph of a hand (optionally with a distal radius fracture).
The demo, the end-to-end tests and the benchmark make studies with :func:`write_study` or stream
them with :meth:`PhantomStudy.datasets`; reference AI products and the clinical evaluation compare
their findings with the :class:`StudyTruth` returned.
"""

from aifi.phantoms.chest import Nodule
from aifi.phantoms.geometry import GridSize
from aifi.phantoms.identity import PatientIdentity, identity_from_seed
from aifi.phantoms.kinds import SIZE_PRESETS
from aifi.phantoms.study import PhantomStudy, write_study
from aifi.phantoms.truth import (
    BrainTruth,
    FractureTruth,
    HaemorrhageTruth,
    LungTruth,
    NoduleTruth,
    PhantomKind,
    StudyTruth,
)

__all__ = [
    "SIZE_PRESETS",
    "BrainTruth",
    "FractureTruth",
    "GridSize",
    "HaemorrhageTruth",
    "LungTruth",
    "Nodule",
    "NoduleTruth",
    "PatientIdentity",
    "PhantomKind",
    "PhantomStudy",
    "StudyTruth",
    "identity_from_seed",
    "write_study",
]
