"""The JSON summary: the same findings as the SR, a triage flag, and a faithful round trip."""

from __future__ import annotations

import json

import highdicom as hd
import pytest
from highdicom.sr import CodedConcept
from pydantic import ValidationError
from pydicom import Dataset

from aifi.results import (
    NOT_FOR_CLINICAL_USE,
    AlgorithmInfo,
    CodedEvaluation,
    Finding,
    NumericMeasurement,
    Priority,
    ResultSummary,
    Triage,
    TriageFlag,
    build_measurement_report,
    ucum_unit,
)

HEMORRHAGE = CodedConcept("50960005", "SCT", "Hemorrhage")
BRAIN = CodedConcept("12738006", "SCT", "Brain")
VOLUME = CodedConcept("118565006", "SCT", "Volume")
DENSITY = CodedConcept("112031", "DCM", "Attenuation Coefficient")
SEVERITY = CodedConcept("246112005", "SCT", "Severity")
SEVERE = CodedConcept("24484000", "SCT", "Severe")


@pytest.fixture
def findings() -> list[Finding]:
    return [
        Finding(
            HEMORRHAGE,
            "ICH 1",
            BRAIN,
            [
                NumericMeasurement(VOLUME, 12.5, ucum_unit("mL", "milliliter")),
                NumericMeasurement(DENSITY, 62.0, ucum_unit("[hnsf'U]", "Hounsfield unit")),
            ],
            evaluations=[CodedEvaluation(SEVERITY, SEVERE)],
            point=(1.0, 2.0, 3.0),
        )
    ]


@pytest.fixture
def summary(findings: list[Finding], algorithm: AlgorithmInfo) -> ResultSummary:
    return ResultSummary.from_findings(
        product_id="aifi-ich",
        product_version="0.1.0",
        algorithm=algorithm,
        findings=findings,
        triage=Triage(flag=TriageFlag.POSITIVE, priority=Priority.HIGH),
        study_instance_uid="2.25.42",
    )


def test_summary_states_findings_measurements_and_triage(
    summary: ResultSummary, findings: list[Finding]
):
    data = json.loads(summary.to_json())
    (finding,) = data["findings"]
    assert finding["finding"] == "Hemorrhage"
    assert finding["finding_code"] == "SCT:50960005"
    assert finding["site"] == "Brain"
    assert finding["tracking_uid"] == findings[0].tracking_uid
    assert finding["measurements"] == {
        "Volume": {"value": 12.5, "unit": "mL"},
        "Attenuation Coefficient": {"value": 62.0, "unit": "[hnsf'U]"},
    }
    assert finding["evaluations"] == {"Severity": "Severe"}
    assert data["triage"] == {"flag": "positive", "priority": "high"}
    assert data["algorithm"]["name"] == "AIFI reference ICH detector"
    assert data["algorithm"]["parameters"] == {"threshold_hu": "50"}
    assert data["label"] == NOT_FOR_CLINICAL_USE
    assert data["product_id"] == "aifi-ich"


def test_summary_round_trips_through_json(summary: ResultSummary):
    assert ResultSummary.from_json(summary.to_json()) == summary
    assert ResultSummary.from_json(summary.to_json().encode()) == summary


def test_summary_and_report_share_tracking_uids(
    summary: ResultSummary,
    findings: list[Finding],
    ct_series: list[Dataset],
    algorithm: AlgorithmInfo,
):
    report = hd.sr.Comprehensive3DSR.from_dataset(
        build_measurement_report(ct_series, algorithm, findings)
    )
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_uid for g in groups] == [f.tracking_uid for f in summary.findings]


def test_a_negative_result_has_no_priority(algorithm: AlgorithmInfo):
    negative = ResultSummary.from_findings(
        product_id="aifi-ich",
        product_version="0.1.0",
        algorithm=algorithm,
        findings=[],
        triage=Triage(flag=TriageFlag.NEGATIVE),
    )
    data = json.loads(negative.to_json())
    assert data["triage"] == {"flag": "negative", "priority": None}
    assert data["findings"] == []


def test_a_vendor_product_without_a_label_says_none():
    vendor = AlgorithmInfo("Vendor ICH", "4.2", "Vendor", clinical_use_label=None)
    summary = ResultSummary.from_findings(
        product_id="vendor-ich",
        product_version="4.2",
        algorithm=vendor,
        findings=[],
        triage=Triage(),
    )
    assert summary.label is None
    assert summary.triage.flag == TriageFlag.NONE


@pytest.mark.parametrize(
    "change",
    [
        {"triage": {"flag": "maybe"}},
        {"triage": {"flag": "positive", "priority": "urgent"}},
        {"unexpected": 1},
        {"findings": [{"finding": "Hemorrhage"}]},
    ],
)
def test_a_malformed_summary_is_refused(summary: ResultSummary, change: dict):
    data = json.loads(summary.to_json())
    data.update(change)
    with pytest.raises(ValidationError):
        ResultSummary.from_json(json.dumps(data))


def test_two_measurements_with_one_name_are_refused(algorithm: AlgorithmInfo):
    volume = NumericMeasurement(VOLUME, 1.0, ucum_unit("mL"))
    finding = Finding(HEMORRHAGE, "ICH 1", measurements=[volume, volume])
    with pytest.raises(ValueError, match="two values named 'Volume'"):
        ResultSummary.from_findings(
            product_id="aifi-ich",
            product_version="0.1.0",
            algorithm=algorithm,
            findings=[finding],
            triage=Triage(),
        )
