"""The JSON summary that travels beside the DICOM results, for dashboards and notifications.

Worklists and dashboards should not have to parse an SR to show "positive, high priority,
hemorrhage 12 mL". The summary carries the same findings as the SR (same codes, numbers and
tracking UIDs, since both are made from the same :class:`~aifi.results.findings.Finding`
values), the triage flag and priority, the algorithm, and its intended-use label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from aifi.results.algorithm import AlgorithmInfo
from aifi.results.findings import Finding

_V = TypeVar("_V")


class TriageFlag(StrEnum):
    """Whether the product says the study needs attention: POSITIVE moves it up the worklist."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    NONE = "none"


class Priority(StrEnum):
    """AIW-I / UPS priority a positive triage asks the worklist for."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class _Frozen(BaseModel):
    # A NaN or infinite measurement is no measurement, and PostgreSQL's JSON refuses it.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class MeasuredValue(_Frozen):
    value: float
    unit: str = Field(description="UCUM code, e.g. 'mL'")


class FindingSummary(_Frozen):
    finding: str = Field(description="code meaning of the finding, e.g. 'Hemorrhage'")
    finding_code: str = Field(description="scheme:code, e.g. 'SCT:50960005'")
    site: str | None = Field(default=None, description="code meaning of the finding site")
    tracking_id: str
    tracking_uid: str
    measurements: dict[str, MeasuredValue] = Field(default_factory=dict)
    evaluations: dict[str, str] = Field(default_factory=dict)


class Triage(_Frozen):
    flag: TriageFlag = TriageFlag.NONE
    priority: Priority | None = None


class AlgorithmSummary(_Frozen):
    name: str
    version: str
    manufacturer: str
    parameters: dict[str, str] = Field(default_factory=dict)


class ResultSummary(_Frozen):
    """One job's result in brief: findings, triage, algorithm and intended-use label."""

    schema_version: int = 1
    product_id: str
    product_version: str = Field(
        description="the version that produced the result, as the catalogue names versions "
        "(1 to 64 printable characters with no space at either end, unless the catalogue "
        "published the version so: the exchange refuses others, and its evaluation counts "
        "each version apart); left lenient here, so that summaries stored before can still "
        "be read"
    )
    study_instance_uid: str | None = Field(
        default=None, description="the pseudonymised study the result belongs to"
    )
    algorithm: AlgorithmSummary
    findings: list[FindingSummary] = Field(default_factory=list)
    triage: Triage = Field(default_factory=Triage)
    label: str | None = Field(
        default=None, description="intended-use label, e.g. 'not for clinical use'"
    )

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ResultSummary:
        """Parse a summary; raises :class:`pydantic.ValidationError` when it does not fit."""
        return cls.model_validate_json(text)

    @classmethod
    def from_findings(
        cls,
        *,
        product_id: str,
        product_version: str,
        algorithm: AlgorithmInfo,
        findings: Sequence[Finding],
        triage: Triage,
        study_instance_uid: str | None = None,
    ) -> ResultSummary:
        """The summary of the same findings that went into the SR.

        Raises
        ------
        ValueError
            If a finding has two measurements or two evaluations with the same name (the
            summary keys them by name).
        """
        return cls(
            product_id=product_id,
            product_version=product_version,
            study_instance_uid=study_instance_uid,
            algorithm=AlgorithmSummary(
                name=algorithm.name,
                version=algorithm.version,
                manufacturer=algorithm.manufacturer,
                parameters={k: str(v) for k, v in (algorithm.parameters or {}).items()},
            ),
            findings=[_summarise(finding) for finding in findings],
            triage=triage,
            label=algorithm.clinical_use_label,
        )


def _summarise(finding: Finding) -> FindingSummary:
    measurements = _unique(
        finding.tracking_id,
        [
            (m.name.meaning, MeasuredValue(value=m.value, unit=m.unit.value))
            for m in finding.measurements
        ],
    )
    evaluations = _unique(
        finding.tracking_id, [(e.name.meaning, e.value.meaning) for e in finding.evaluations]
    )
    return FindingSummary(
        finding=finding.finding.meaning,
        finding_code=f"{finding.finding.scheme_designator}:{finding.finding.value}",
        site=finding.finding_site.meaning if finding.finding_site else None,
        tracking_id=finding.tracking_id,
        tracking_uid=finding.tracking_uid,
        measurements=dict(measurements),
        evaluations=dict(evaluations),
    )


def _unique(tracking_id: str, pairs: list[tuple[str, _V]]) -> Mapping[str, _V]:
    result: dict[str, _V] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"finding {tracking_id!r} has two values named {name!r}")
        result[name] = value
    return result
