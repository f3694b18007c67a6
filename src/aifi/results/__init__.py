"""Building and checking AI result objects (IHE AI Results): SR TID 1500, SEG, JSON summary.

Products build their results with :func:`build_measurement_report` and
:func:`build_segmentation` and describe them for dashboards with :class:`ResultSummary`; the
exchange runs :func:`check_result` on everything a vendor uploads. Web pages draw key images
with :func:`aifi.results.key_image.render_key_image` (not imported here: it loads matplotlib).
"""

from aifi.results.algorithm import NOT_FOR_CLINICAL_USE, AlgorithmInfo
from aifi.results.check import ResultCheck, check_result
from aifi.results.conformance import AlgorithmIdentity
from aifi.results.errors import ResultRejected
from aifi.results.findings import (
    CodedEvaluation,
    Finding,
    NumericMeasurement,
    ucum_unit,
)
from aifi.results.kinds import ACCEPTED_SOP_CLASSES, ResultKind
from aifi.results.seg import SegmentSpec, build_segmentation
from aifi.results.sr import build_measurement_report
from aifi.results.summary import (
    FindingSummary,
    MeasuredValue,
    Priority,
    ResultSummary,
    Triage,
    TriageFlag,
)

__all__ = [
    "ACCEPTED_SOP_CLASSES",
    "NOT_FOR_CLINICAL_USE",
    "AlgorithmIdentity",
    "AlgorithmInfo",
    "CodedEvaluation",
    "Finding",
    "FindingSummary",
    "MeasuredValue",
    "NumericMeasurement",
    "Priority",
    "ResultCheck",
    "ResultKind",
    "ResultRejected",
    "ResultSummary",
    "SegmentSpec",
    "Triage",
    "TriageFlag",
    "build_measurement_report",
    "build_segmentation",
    "check_result",
    "ucum_unit",
]
