"""What an algorithm found: coded findings with their sites, measurements and where they are.

These are plain values that a product fills in; :mod:`aifi.results.sr` turns them into TID 1500
measurement groups and :mod:`aifi.results.summary` into the JSON summary, so the SR and the
dashboard always tell the same story (same codes, same numbers, same tracking UID).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from highdicom import UID
from highdicom.sr import CodedConcept

#: Coding scheme designator of the Unified Code for Units of Measure, which TID 300 requires.
UCUM = "UCUM"


def ucum_unit(code: str, meaning: str | None = None) -> CodedConcept:
    """A UCUM unit as a coded concept, e.g. ``ucum_unit("mL", "milliliter")``."""
    return CodedConcept(value=code, scheme_designator=UCUM, meaning=meaning or code)


@dataclass(frozen=True)
class NumericMeasurement:
    """One number with a coded name and a UCUM unit (a TID 300 Measurement).

    Raises
    ------
    ValueError
        If the unit is not coded in UCUM, or the value is not a finite number.
    """

    name: CodedConcept
    value: float
    unit: CodedConcept

    def __post_init__(self) -> None:
        if self.unit.scheme_designator != UCUM:
            raise ValueError(
                f"measurement {self.name.meaning!r}: unit must be coded in UCUM, "
                f"not {self.unit.scheme_designator!r}"
            )
        if not float("-inf") < float(self.value) < float("inf"):
            raise ValueError(f"measurement {self.name.meaning!r}: value must be finite")


@dataclass(frozen=True)
class CodedEvaluation:
    """A coded question and answer about a finding (a TID 1501 Qualitative Evaluation).

    For example name SCT 246112005 "Severity", value SCT 24484000 "Severe"; a product that
    looked for a finding and found none can say name "Presence", value DCM 121054 "Absent".
    """

    name: CodedConcept
    value: CodedConcept


@dataclass(frozen=True)
class Finding:
    """One finding of an algorithm, tracked by a human-readable id and a UID.

    Parameters
    ----------
    finding:
        What was found (TID 1501 Finding, 121071), e.g. SCT 50960005 "Hemorrhage".
    tracking_id:
        A short human-readable label (Tracking Identifier, 112039), e.g. ``"ICH 1"``.
    finding_site:
        Where it was found (Finding Site, SCT 363698007), e.g. SCT 12738006 "Brain".
    measurements:
        Numbers measured on the finding.
    evaluations:
        Coded statements about the finding (presence, severity, ...).
    tracking_uid:
        Tracking Unique Identifier (112040); a new UID unless the product keeps one across
        studies to follow the same finding over time.
    segment_number:
        The segment of the accompanying SEG that outlines the finding, if any.
    point:
        A point (x, y, z) in the patient coordinate system, in mm, that marks the finding when
        there is no segment.

    Raises
    ------
    ValueError
        If both a segment and a point are given, or the tracking id is empty.
    """

    finding: CodedConcept
    tracking_id: str
    finding_site: CodedConcept | None = None
    measurements: Sequence[NumericMeasurement] = ()
    evaluations: Sequence[CodedEvaluation] = ()
    tracking_uid: str = field(default_factory=lambda: str(UID()))
    segment_number: int | None = None
    point: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not self.tracking_id.strip():
            raise ValueError("a finding needs a non-empty tracking id")
        if self.segment_number is not None and self.point is not None:
            raise ValueError(
                f"finding {self.tracking_id!r}: give a segment number or a point, not both"
            )
        if self.segment_number is not None and self.segment_number < 1:
            raise ValueError(f"finding {self.tracking_id!r}: segment numbers start at 1")
