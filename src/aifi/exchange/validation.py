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

from aifi.dicom.deid import DEIDENTIFICATION_METHOD_PREFIX
from aifi.dicom.uids import uid_problem
from aifi.exchange.errors import Invalid
from aifi.product_versions import version_problem
from aifi.results.errors import ResultRejected
from aifi.results.reading import read_result

#: De-identification Method values the exchange accepts (prefixes of (0012,0063)).
RECOGNISED_METHODS = (DEIDENTIFICATION_METHOD_PREFIX,)


@dataclass(frozen=True)
class InputHeader:
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str


def read_input(path: Path, what: str) -> pydicom.Dataset:
    """The input's data set, its bulk values left on disk, once the file is known whole: a
    cut upload (a lying Content-Length, a proxy's limit) parses without complaint, its pixels
    short, and a product would be handed half a slice."""
    try:
        return read_result(path)
    except ResultRejected as exc:
        raise Invalid(f"{what}: rule {exc.rule!r}, {exc.attribute}: {exc.message}") from exc


def _text(ds: pydicom.Dataset, keyword: str, tag: str, what: str) -> str:
    """An attribute's value as text ('' when absent); one that cannot be decoded (a damaged
    byte: an unknown VR, a number of the wrong length) is refused, naming it."""
    try:
        value = ds.get(keyword, "")
        if isinstance(value, pydicom.multival.MultiValue):
            return "\\".join(str(item) for item in value)
        return str(value)
    except Exception as exc:  # pydicom raises many types for a value it cannot convert
        raise Invalid(
            f"{what}: rule 'dicom-file', {keyword} {tag}: cannot be decoded ({type(exc).__name__})"
        ) from exc


def _uid(ds: pydicom.Dataset, keyword: str, tag: str, what: str) -> str:
    """A UID attribute's value, refused unless a database column and a PACS take it (a
    component with a leading zero let through, as modalities write them)."""
    uid = _text(ds, keyword, tag, what)
    if (problem := uid_problem(uid, strict=False)) is not None:
        raise Invalid(f"{what}: rule 'uid', {keyword} {tag}: {problem}")
    return uid


def check_input(path: Path, *, job_id: str, study_uid: str, sop_instance_uid: str) -> InputHeader:
    """Refuse an input that is not a whole DICOM file, not marked de-identified, not of the
    job's study, or whose UIDs no database or PACS would take."""
    what = f"job {job_id} input {sop_instance_uid}"
    ds = read_input(path, what)
    if _text(ds, "PatientIdentityRemoved", "(0012,0062)", what).upper() != "YES":
        raise Invalid(
            f"{what}: rule 'de-identified': Patient Identity Removed (0012,0062) is not YES"
        )
    method_values = _text(ds, "DeidentificationMethod", "(0012,0063)", what).split("\\")
    if not any(value.startswith(RECOGNISED_METHODS) for value in method_values):
        raise Invalid(
            f"{what}: rule 'de-identified': De-identification Method (0012,0063) "
            f"{'/'.join(method_values)!r} is not one the exchange recognises"
        )
    instance = _uid(ds, "SOPInstanceUID", "(0008,0018)", what)
    if instance != sop_instance_uid:
        raise Invalid(
            f"{what}: rule 'instance-key': SOP Instance UID (0008,0018) "
            f"{instance} differs from the upload's key"
        )
    if _text(ds, "StudyInstanceUID", "(0020,000D)", what) != study_uid:
        raise Invalid(
            f"{what}: rule 'own-study': Study Instance UID (0020,000D) is not the job's study"
        )
    return InputHeader(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=_uid(ds, "SOPClassUID", "(0008,0016)", what),
        series_uid=_uid(ds, "SeriesInstanceUID", "(0020,000E)", what),
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
            f"job {job_id} result {name}: rule {exc.rule!r}, {exc.attribute}: {exc.message}"
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
