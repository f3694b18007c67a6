"""What the exchange checks in every file it accepts, before the file is committed.

Inputs must be pseudonymised by a method the exchange recognises and belong to the job's study;
results must be valid result objects for the job's study. Each refusal names the rule, the
attribute and the instance — never a patient's identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from aifi.dicom.deid import DEIDENTIFICATION_METHOD_PREFIX
from aifi.dicom.in_memory import parse_source
from aifi.exchange.errors import Invalid
from aifi.product_versions import version_problem

#: De-identification Method values the exchange accepts (prefixes of (0012,0063)).
RECOGNISED_METHODS = (DEIDENTIFICATION_METHOD_PREFIX,)


@dataclass(frozen=True)
class InputHeader:
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str


def read_header(path: Path, what: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(parse_source(path), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
        raise Invalid(
            f"{what}: not a readable DICOM file ({exc.__class__.__name__}: {exc})"
        ) from exc


def check_input(path: Path, *, job_id: str, study_uid: str, sop_instance_uid: str) -> InputHeader:
    """Refuse an input that is not marked de-identified or not of the job's study."""
    what = f"job {job_id} input {sop_instance_uid}"
    ds = read_header(path, what)
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        raise Invalid(
            f"{what}: rule 'de-identified': Patient Identity Removed (0012,0062) is not YES"
        )
    methods = ds.get("DeidentificationMethod", "")
    method_values = (
        [str(m) for m in methods]
        if isinstance(methods, pydicom.multival.MultiValue)
        else [str(methods)]
    )
    if not any(value.startswith(RECOGNISED_METHODS) for value in method_values):
        raise Invalid(
            f"{what}: rule 'de-identified': De-identification Method (0012,0063) "
            f"{'/'.join(method_values)!r} is not one the exchange recognises"
        )
    if str(ds.get("SOPInstanceUID", "")) != sop_instance_uid:
        raise Invalid(
            f"{what}: rule 'instance-key': SOP Instance UID (0008,0018) "
            f"{ds.get('SOPInstanceUID', '')!s} differs from the upload's key"
        )
    if str(ds.get("StudyInstanceUID", "")) != study_uid:
        raise Invalid(
            f"{what}: rule 'own-study': Study Instance UID (0020,000D) is not the job's study"
        )
    return InputHeader(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
    )


@dataclass(frozen=True)
class ResultHeader:
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    air_conformant: bool
    notes: list[str]


def check_result_file(path: Path, *, job_id: str, name: str, study_uid: str) -> ResultHeader:
    """Refuse a result that is not a valid result object of the job's own study."""
    from aifi.results.check import ResultRejected, check_result

    try:
        check = check_result(path, study_instance_uid=study_uid)
    except ResultRejected as exc:
        raise Invalid(
            f"job {job_id} result {name}: rule {exc.rule!r}, {exc.attribute}: {exc}"
        ) from exc
    return ResultHeader(
        kind=check.kind,
        sop_class_uid=check.sop_class_uid,
        sop_instance_uid=check.sop_instance_uid,
        series_instance_uid=check.series_instance_uid,
        air_conformant=check.air_conformant,
        notes=list(check.notes),
    )


def check_summary(
    body: bytes | dict[str, Any],
    *,
    job_id: str,
    name: str,
    published: Callable[[str], bool] | None = None,
) -> None:
    """Refuse a summary that is not the ResultSummary the dashboards, notices and evaluation
    read, whether uploaded as a result (`body`: its bytes, `name`: the result's) or sent with
    the job's completion (`body`: the parsed document); the message names the first field
    that does not fit. `published(version)`: whether the catalogue published the job's
    product's version so named (asked only of one with a space at an end)."""
    from pydantic import ValidationError

    from aifi.results.summary import ResultSummary

    try:
        if isinstance(body, bytes):
            summary = ResultSummary.model_validate_json(body)
        else:
            summary = ResultSummary.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        raise Invalid(
            f"job {job_id} {name}: rule 'summary-json': {where}: {first['msg']} "
            f"({exc.error_count()} problem(s); see aifi.results.ResultSummary)"
        ) from exc
    if problem := version_problem(summary.product_version, "produced the result", published):
        raise Invalid(f"job {job_id} {name}: rule 'summary-json': {problem}")
