"""HL7 v2.5 ORU^R01: one result as the observation message a RIS or reporting system files.

Built with hl7apy (CRS4; HL7 v2.1-2.8.2 message structures, strict validation): the message is
assembled from the ORU_R01 structure's groups and segments and validated against it before it
is sent, so a malformed message fails here with the rule it broke, not at the receiver.

Layout (one order, one observation group per OBX)::

    MSH  sending/receiving application and facility, control id, 2.5, UTF-8
    PID  PID-3 Patient ID ^^^ issuer, PID-5 name, PID-7 birth date, PID-8 sex (the originals)
    ORC  RE (observations to follow), ORC-3 the exchange job, ORC-5 CM (completed)
    OBR  OBR-4 the product, OBR-5 priority S (STAT, triage-positive) or R, OBR-18 accession
         number, OBR-24 RAD, OBR-25 P (preliminary: no radiologist has verified it yet)
    TQ1  TQ1-9 the same priority (where v2.5 receivers look for it)
    OBX  Study Instance UID; AI triage (OBX-8 POS/NEG); per finding (OBX-4 sub-id = finding):
         finding, site, measurements (NM + UCUM), evaluations; algorithm name, version and
         manufacturer (TID 4019 codes); each result SOP Instance UID; the intended-use label (TX)

When there will be no result (``notice.unavailable``) the same message, with the same PID,
OBR-3, OBR-4 and OBR-18 (and a control id of its own), says so instead: ORC-5 CA (order
canceled), OBR-25 and OBX-11 X (HL7 table 0123/0085: no results available), priority S for a
study run STAT (R otherwise), and one OBX ``NO_AI_RESULT^AI result unavailable^99AIFI``
whose value is ``No AI result: <reason>``.

When a STAT study's result is late (``notice.delayed``) the same message again, under a
control id of its own, says the order is still under way: ORC-5 IP (in process), OBR-25 and
OBX-11 I (table 0123: specimen received, procedure incomplete; table 0085: results pending),
priority S, and one OBX ``AI_RESULT_DELAYED^AI result delayed^99AIFI`` whose value is ``AI
result delayed: <why>``. The result or no-result message that follows (``after_delay``) is the
one it would have been otherwise, under its own control id and the same OBR-3, with a status
(P, X) that takes the place of I at the receiver; but priority S (the order stays STAT),
OBR-22 the time it is sent (a receiver keeping the newest status must not take it for older
than the delay), and one more OBX, the delay's, with OBX-11 D (delete the OBX record).

Every text that comes from a vendor or a DICOM header is escaped by the library (``\\F\\``,
``\\S\\`` ...) and stripped of line breaks, so it can never end a field or start a segment.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.factories import datatype_factory

from aifi.gateway.notify.codes import (
    ALGORITHM_MANUFACTURER,
    ALGORITHM_NAME,
    ALGORITHM_VERSION,
    FINDING,
    FINDING_SITE,
    LOCAL_HL7_SYSTEM,
    STUDY_INSTANCE_UID,
    Concept,
    is_oid,
    local_code,
    parse_scheme_code,
)
from aifi.gateway.notify.notice import ResultNotice
from aifi.gateway.notify.settings import Hl7Endpoint
from aifi.results.summary import FindingSummary, TriageFlag

VERSION = "2.5"
#: Longest ST value HL7 v2.5 allows (hl7apy enforces it under strict validation).
ST_MAX = 199
#: NM values: at most 16 characters, no exponent.
NM_MAX = 16
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_DELIMITERS = frozenset("|^~&\\")
_DICOM_DATE = re.compile(r"^\d{8}$")
_DICOM_TIME = re.compile(r"^(\d{2,6})")
#: DICOM Patient Sex -> HL7 table 0001 Administrative Sex.
_SEX = {"M": "M", "F": "F", "O": "O"}


class OruBuildError(ValueError):
    """The notice cannot be written as a valid ORU^R01 (names the segment and the rule)."""


@dataclass(frozen=True)
class Observation:
    """One OBX before it is written: value type, identifier, value (ER7), units, sub-id."""

    value_type: str
    identifier: Concept
    value: str
    sub_id: str = ""
    units: str = ""
    abnormal_flag: str = ""
    #: OBX-11: P (preliminary) for a result, X (results cannot be obtained) when there is none,
    #: I (results pending) when it is late.
    result_status: str = "P"


def message_control_id(notice: ResultNotice) -> str:
    """MSH-10: the same for every resend of this job's ORU, so a receiver can drop a repeat;
    another for a notice that there is no result, and another for a notice that it is late,
    so that none is dropped as the repeat of another of the job's notices the receiver took
    before.

    20 characters at most (ST 20 in v2.5): ``AIFI`` and a digest of the exchange job id.
    """
    kind = "oru" if notice.available else f"oru-{notice.kind}"
    digest = hashlib.sha256(f"{kind}:{notice.exchange_job_id}".encode()).hexdigest()
    return "AIFI" + digest[:16].upper()


def hl7_text(value: object, limit: int = ST_MAX) -> str:
    """`value` as ER7 text: line breaks and control characters become spaces, delimiters are
    escaped. Free text longer than `limit` is shortened (counted before escaping);
    identifiers go through :func:`hl7_identifier`, which never shortens."""
    text = _CONTROL.sub(" ", str(value)).strip()
    kept, length = 0, 0
    for char in text:  # hl7apy checks the length after escaping: a delimiter counts three
        length += 3 if char in _DELIMITERS else 1
        if length > limit:
            break
        kept += 1
    return _escape(text[:kept])


def hl7_identifier(value: str, where: str, limit: int = ST_MAX) -> str:
    """An identifier as ER7 text; never shortened, since a cut identifier names someone else.

    Raises
    ------
    OruBuildError
        If the value holds control characters or is longer than `limit`.
    """
    if _CONTROL.search(value) or len(value) > limit:
        raise OruBuildError(
            f"{where}: identifier must be at most {limit} printable characters "
            f"(it has {len(value)})"
        )
    return _escape(value)


def _escape(text: str) -> str:
    """Escape HL7 delimiters with hl7apy's TX encoder; backslashes first, since hl7apy leaves
    a backslash alone when it looks like part of an escape sequence (``\\H\\``)."""
    encoded = datatype_factory(
        "TX",
        text.replace("\\", "\\E\\"),
        version=VERSION,
        validation_level=VALIDATION_LEVEL.TOLERANT,
    )
    return str(encoded.to_er7())


def hl7_number(value: float) -> str:
    """An NM value: plain decimal notation (HL7 NM has no exponent), 16 characters at most."""
    if not math.isfinite(value):
        raise OruBuildError(f"OBX-5: {value!r} is not a finite number")
    for digits in range(12, 0, -1):
        text = format(Decimal(format(float(value), f".{digits}g")), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if len(text) <= NM_MAX:
            return text or "0"
    raise OruBuildError(f"OBX-5: {value!r} does not fit an HL7 NM (16 characters)")


def hl7_datetime(moment: datetime) -> str:
    """A DTM with seconds and UTC offset, e.g. ``20250301142530+0100``."""
    return moment.strftime("%Y%m%d%H%M%S%z")


def coded(concept: Concept) -> str:
    """A CE/CWE value: code^text^system (a local system when the scheme has no HL7 name)."""
    return "^".join(
        [
            hl7_text(concept.code),
            hl7_text(concept.meaning),
            hl7_text(concept.hl7_system or concept.scheme, 20),
        ]
    )


def _local(name: str, code: str | None = None) -> Concept:
    return Concept(code or local_code(name), LOCAL_HL7_SYSTEM, name)


#: OBR-25 / OBX-11 when there will be no result: table 0123 "No results available; Order
#: canceled", table 0085 "Results cannot be obtained for this observation".
NO_RESULT_STATUS = "X"
#: OBX-3 of the one observation of a notice that there will be no result.
NO_AI_RESULT = _local("AI result unavailable", "NO_AI_RESULT")
#: OBR-25 / OBX-11 when a STAT study's result is late: table 0123 "No results available;
#: specimen received, procedure incomplete", table 0085 "Specimen in lab; results pending".
DELAYED_STATUS = "I"
#: OBX-3 of the one observation of a notice that the result is late.
AI_RESULT_DELAYED = _local("AI result delayed", "AI_RESULT_DELAYED")
#: OBX-11 of that observation in what follows the delay: table 0085 "Deletes the OBX record".
DELETED_STATUS = "D"


def observations(notice: ResultNotice) -> list[Observation]:
    """The OBX content of the notice, in message order.

    A notice that there will be no result, or that it is late, has one observation, the
    reason, and nothing else: no Study Instance UID (PID, OBR-18 Accession Number and OBR-3
    the job name the study as for a result) and no intended-use label, since there is no
    result for the label to qualify, and a label next to "no result" would read as if
    something had been found. What follows a delay ends with the delay's observation,
    withdrawn.
    """
    found = _observations(notice)
    if notice.after_delay:
        # The delay's observation is withdrawn (table 0085 D: delete the OBX record), for a
        # RIS that keeps an order's observations by OBX-3 rather than replacing them all.
        found.append(Observation("ST", AI_RESULT_DELAYED, "", result_status=DELETED_STATUS))
    return found


def _observations(notice: ResultNotice) -> list[Observation]:
    statement = notice.no_result_statement
    if statement is not None:
        late = notice.delayed is not None
        return [
            Observation(
                "ST",
                AI_RESULT_DELAYED if late else NO_AI_RESULT,
                hl7_text(statement),
                result_status=DELAYED_STATUS if late else NO_RESULT_STATUS,
            )
        ]
    study_uid = hl7_identifier(notice.study.study_instance_uid, "OBX-5 Study Instance UID", 64)
    result = [Observation("ST", STUDY_INSTANCE_UID, study_uid)]
    summary = notice.summary
    if summary is not None:
        triage = summary.triage
        if triage.flag is not TriageFlag.NONE:
            text = triage.flag.value + (
                f" (priority {triage.priority.value})" if triage.priority else ""
            )
            flag = "POS" if triage.flag is TriageFlag.POSITIVE else "NEG"
            result.append(
                Observation(
                    "ST", _local("AI triage", "AI_TRIAGE"), hl7_text(text), abnormal_flag=flag
                )
            )
        for index, finding in enumerate(summary.findings, start=1):
            result.extend(_finding_observations(finding, str(index)))
        algorithm = summary.algorithm
        for concept, value in (
            (ALGORITHM_NAME, algorithm.name),
            (ALGORITHM_VERSION, algorithm.version),
            (ALGORITHM_MANUFACTURER, algorithm.manufacturer),
        ):
            result.append(Observation("ST", concept, hl7_text(value)))
    for uid in notice.result_sop_instance_uids:
        value = hl7_identifier(uid, "OBX-5 Result SOP Instance UID", 64)
        result.append(Observation("ST", _local("Result SOP Instance UID", "RESULT_UID"), value))
    result.append(
        Observation("TX", _local("Intended use", "INTENDED_USE"), hl7_text(notice.label, 65536))
    )
    return result


def _finding_observations(finding: FindingSummary, sub_id: str) -> list[Observation]:
    concept = parse_scheme_code(finding.finding_code, finding.finding) or _local(finding.finding)
    found = [Observation("CWE", FINDING, coded(concept), sub_id)]
    if finding.site:
        found.append(Observation("CWE", FINDING_SITE, "^" + hl7_text(finding.site), sub_id))
    for name, measured in finding.measurements.items():
        unit = Concept(measured.unit, "UCUM", measured.unit)
        found.append(
            Observation("NM", _local(name), hl7_number(measured.value), sub_id, coded(unit))
        )
    for name, value in finding.evaluations.items():
        found.append(Observation("ST", _local(name), hl7_text(value), sub_id))
    return found


def build_oru_r01(
    notice: ResultNotice, endpoint: Hl7Endpoint, *, sent_at: datetime | None = None
) -> Message:
    """The ORU^R01 for `notice`, validated against the HL7 v2.5 message structure.

    `sent_at` is MSH-7 (now by default); the control id depends only on the job (and on
    whether there is a result, none, or one late).

    Raises
    ------
    OruBuildError
        If a value does not fit its HL7 type or the message breaks the ORU_R01 structure
        (the message says which segment or field).
    """
    moment = sent_at or datetime.now(UTC)
    # An order told late stays STAT, whatever the result that ends it says.
    priority = "S" if notice.goes_stat else "R"
    try:
        message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
        _header(message, notice, endpoint, moment)
        result = message.add_group("ORU_R01_PATIENT_RESULT")
        _patient(result.add_group("ORU_R01_PATIENT").add_segment("PID"), notice)
        order = result.add_group("ORU_R01_ORDER_OBSERVATION")
        _order(order.add_segment("ORC"), notice)
        _request(order.add_segment("OBR"), notice, priority)
        order.add_group("ORU_R01_TIMING_QTY").add_segment("TQ1").tq1_9.cwe_1 = priority
        for set_id, item in enumerate(observations(notice), start=1):
            _observation(order.add_group("ORU_R01_OBSERVATION").add_segment("OBX"), set_id, item)
        message.validate()
    except HL7apyException as exc:
        raise OruBuildError(
            f"ORU^R01 for job {notice.exchange_job_id}: not a valid HL7 v2.5 message: {exc}"
        ) from exc
    return message


def encode_oru_r01(message: Message) -> str:
    """The ER7 text of a built message, segments ended by carriage returns."""
    return str(message.to_er7()) + "\r"


def _header(message: Message, notice: ResultNotice, endpoint: Hl7Endpoint, at: datetime) -> None:
    msh = message.msh
    msh.msh_3.hd_1 = endpoint.sending_application
    msh.msh_4.hd_1 = endpoint.sending_facility or hl7_identifier(
        notice.hospital, "MSH-4 (hospital id; set hl7.sending_facility for a shorter one)", 20
    )
    msh.msh_5.hd_1 = endpoint.receiving_application
    if endpoint.receiving_facility:
        msh.msh_6.hd_1 = endpoint.receiving_facility
    msh.msh_7.ts_1 = hl7_datetime(at)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = message_control_id(notice)
    msh.msh_11 = endpoint.processing_id
    msh.msh_12 = VERSION
    msh.msh_18 = "UNICODE UTF-8"


def _patient(pid: Any, notice: ResultNotice) -> None:
    study = notice.study
    pid.pid_1 = "1"
    if study.patient_id:
        identifier = hl7_identifier(study.patient_id, "PID-3 Patient ID", 64)
        authority = _assigning_authority(study.issuer_of_patient_id)
        if authority:
            identifier += "^^^" + authority
        pid.pid_3 = identifier
    else:
        raise OruBuildError(f"PID-3: job {notice.exchange_job_id}: the study has no Patient ID")
    if study.patient_name:
        pid.pid_5 = _person_name(study.patient_name)
    if _DICOM_DATE.match(study.patient_birth_date):
        pid.pid_7.ts_1 = study.patient_birth_date
    pid.pid_8 = _SEX.get(study.patient_sex.strip().upper(), "U")


#: Longest HD namespace id (IS) in HL7 v2.5.
_NAMESPACE_MAX = 20


def _assigning_authority(issuer: str) -> str:
    """CX-4 (HD): an OID issuer as universal id (``&<oid>&ISO``), else a namespace id.

    An issuer that is neither an OID nor fits a namespace id (many PACSes put the hospital's
    full name in Issuer of Patient ID) is left out: the receiver then takes the Patient ID in
    its own default domain, which is the hospital's, rather than the message failing.
    """
    issuer = issuer.strip()
    if not issuer:
        return ""
    if is_oid(issuer):
        return f"&{issuer}&ISO"
    if len(issuer) > _NAMESPACE_MAX:
        return ""
    return hl7_identifier(issuer, "PID-3.4 Issuer of Patient ID (namespace)", _NAMESPACE_MAX)


def _person_name(dicom_name: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix, first component group) -> HL7 XPN
    (family^given^middle^suffix^prefix)."""
    parts = (dicom_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (hl7_text(part, 50) for part in parts)
    return "^".join([family, given, middle, suffix, prefix]).rstrip("^")


def _order(orc: Any, notice: ResultNotice) -> None:
    orc.orc_1 = "RE"
    orc.orc_3 = _filler_number(notice)
    orc.orc_5 = _status(notice, "CM", "IP", "CA")
    orc.orc_9.ts_1 = hl7_datetime(notice.completed_at)


def _filler_number(notice: ResultNotice) -> str:
    return hl7_identifier(notice.exchange_job_id, "ORC-3/OBR-3 exchange job id") + "^AIFI"


def _request(obr: Any, notice: ResultNotice, priority: str) -> None:
    obr.obr_1 = "1"
    obr.obr_3 = _filler_number(notice)
    obr.obr_4 = "^".join(
        [
            hl7_identifier(notice.product_id, "OBR-4 product id"),
            hl7_text(notice.product_name),
            LOCAL_HL7_SYSTEM,
        ]
    )
    obr.obr_5 = priority
    obr.obr_7.ts_1 = _study_datetime(notice) or hl7_datetime(notice.completed_at)
    if notice.study.accession_number:
        obr.obr_18 = hl7_identifier(notice.study.accession_number, "OBR-18 Accession Number", 64)
    obr.obr_22.ts_1 = hl7_datetime(notice.completed_at)
    obr.obr_24 = "RAD"
    obr.obr_25 = _status(notice, "P", DELAYED_STATUS, NO_RESULT_STATUS)


def _status(notice: ResultNotice, result: str, delayed: str, no_result: str) -> str:
    return {"result": result, "delayed": delayed, "no-result": no_result}[notice.kind]


def _study_datetime(notice: ResultNotice) -> str | None:
    date = notice.study.study_date
    if not _DICOM_DATE.match(date):
        return None
    time = _DICOM_TIME.match(notice.study.study_time)
    return date + (time.group(1) if time and len(time.group(1)) % 2 == 0 else "")


def _observation(obx: Any, set_id: int, item: Observation) -> None:
    obx.obx_1 = str(set_id)
    obx.obx_2 = item.value_type
    obx.obx_3 = coded(item.identifier)
    if item.sub_id:
        obx.obx_4 = item.sub_id
    obx.obx_5 = item.value
    if item.units:
        obx.obx_6 = item.units
    if item.abnormal_flag:
        obx.obx_8 = item.abnormal_flag
    obx.obx_11 = item.result_status
