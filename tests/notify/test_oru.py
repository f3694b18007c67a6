"""The ORU^R01: structure and content, read back with hl7apy as a receiver would."""

from __future__ import annotations

from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from aifi.gateway.notify import (
    Hl7Endpoint,
    OruBuildError,
    ResultNotice,
    build_oru_r01,
    encode_oru_r01,
    message_control_id,
)
from aifi.gateway.notify.oru import hl7_number
from aifi.results.summary import FindingSummary, MeasuredValue, TriageFlag

from .conftest import (
    ORIGINAL_ATTRIBUTES,
    ORIGINAL_STUDY_UID,
    REASON,
    RESULT_UIDS,
    WHY,
    make_delayed,
    make_notice,
    make_summary,
    make_unavailable,
)

ENDPOINT = Hl7Endpoint(
    host="127.0.0.1",
    port=2575,
    receiving_application="RIS",
    receiving_facility="RADIOLOGY",
    processing_id="T",
)


def encoded(notice: ResultNotice) -> str:
    return encode_oru_r01(build_oru_r01(notice, ENDPOINT))


def received(notice: ResultNotice) -> Message:
    """The message as a receiver parses it: strict, into the ORU_R01 groups."""
    return parse_message(
        encoded(notice).strip("\r"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
    )


def order(message: Message) -> Any:
    return message.oru_r01_patient_result.oru_r01_order_observation


def observations(message: Message) -> list[dict[str, str]]:
    rows = []
    for group in order(message).oru_r01_observation:
        obx = group.obx
        rows.append(
            {
                "type": obx.obx_2.to_er7(),
                "code": obx.obx_3.to_er7(),
                "sub_id": obx.obx_4.to_er7(),
                "value": obx.obx_5.to_er7(),
                "units": obx.obx_6.to_er7(),
                "flag": obx.obx_8.to_er7(),
                "status": obx.obx_11.to_er7(),
            }
        )
    return rows


def test_header_names_the_endpoints_and_version(positive: ResultNotice) -> None:
    msh = received(positive).msh
    assert msh.msh_3.to_er7() == "AIFI"
    assert msh.msh_4.to_er7() == "rivierenland"
    assert msh.msh_5.to_er7() == "RIS"
    assert msh.msh_6.to_er7() == "RADIOLOGY"
    assert msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msh.msh_10.to_er7() == message_control_id(positive)
    assert msh.msh_11.to_er7() == "T"
    assert msh.msh_12.to_er7() == "2.5"


def test_pid_carries_the_original_identity(positive: ResultNotice) -> None:
    pid = received(positive).oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == "MRN-000123^^^RIVIERENLAND"
    # DICOM PN family^given^middle^prefix -> XPN family^given^middle^suffix^prefix
    assert pid.pid_5.to_er7() == "Jansen^Anna^Maria^^Dr"
    assert pid.pid_7.to_er7() == "19620314"
    assert pid.pid_8.to_er7() == "F"


def test_the_pseudonym_never_appears(positive: ResultNotice) -> None:
    text = encoded(positive)
    assert "2.25.1234567890123456789" not in text  # the pseudonymised study UID
    assert ORIGINAL_STUDY_UID in text


def test_positive_triage_is_stat(positive: ResultNotice) -> None:
    message = received(positive)
    obr = order(message).obr
    assert obr.obr_5.to_er7() == "S"
    assert order(message).oru_r01_timing_qty.tq1.tq1_9.to_er7() == "S"
    triage = [row for row in observations(message) if row["code"].startswith("AI_TRIAGE")]
    assert triage == [
        {
            "type": "ST",
            "code": "AI_TRIAGE^AI triage^99AIFI",
            "sub_id": "",
            "value": "positive (priority high)",
            "units": "",
            "flag": "POS",
            "status": "P",
        }
    ]


@pytest.mark.parametrize("flag", [TriageFlag.NEGATIVE, TriageFlag.NONE])
def test_other_results_are_routine(flag: TriageFlag) -> None:
    message = received(make_notice(make_summary(flag)))
    assert order(message).obr.obr_5.to_er7() == "R"
    assert order(message).oru_r01_timing_qty.tq1.tq1_9.to_er7() == "R"


def test_obr_names_product_job_accession_and_times(positive: ResultNotice) -> None:
    obr = order(received(positive)).obr
    assert obr.obr_3.to_er7() == "job-0001^AIFI"
    assert obr.obr_4.to_er7() == "aifi-ich^AIFI ICH^99AIFI"
    assert obr.obr_7.to_er7() == "20250301101502"  # StudyDate + StudyTime
    assert obr.obr_18.to_er7() == ORIGINAL_ATTRIBUTES["AccessionNumber"]
    assert obr.obr_22.to_er7() == "20250301103000+0000"
    assert obr.obr_24.to_er7() == "RAD"
    assert obr.obr_25.to_er7() == "P"
    orc = order(received(positive)).orc
    assert (orc.orc_1.to_er7(), orc.orc_3.to_er7(), orc.orc_5.to_er7()) == (
        "RE",
        "job-0001^AIFI",
        "CM",
    )


def test_obx_per_finding_measurement_with_ucum_units(positive: ResultNotice) -> None:
    rows = observations(received(positive))
    numeric = [(r["sub_id"], r["code"], r["value"], r["units"]) for r in rows if r["type"] == "NM"]
    assert numeric == [
        ("1", "VOLUME^Volume^99AIFI", "12.5", "mL^mL^UCUM"),
        ("1", "MIDLINE_SHIFT^Midline shift^99AIFI", "4.25", "mm^mm^UCUM"),
        ("2", "VOLUME^Volume^99AIFI", "1180", "mL^mL^UCUM"),
    ]
    findings = [(r["sub_id"], r["value"]) for r in rows if r["code"] == "121071^Finding^DCM"]
    assert findings == [("1", "50960005^Hemorrhage^SCT"), ("2", "12738006^Brain tissue^SCT")]
    sites = [(r["sub_id"], r["value"]) for r in rows if r["code"].startswith("363698007")]
    assert sites == [("1", "^Brain")]
    severity = [r["value"] for r in rows if r["code"] == "SEVERITY^Severity^99AIFI"]
    assert severity == ["Severe"]
    assert {r["status"] for r in rows} == {"P"}


def test_study_results_algorithm_and_label(positive: ResultNotice) -> None:
    rows = observations(received(positive))
    by_code: dict[str, list[str]] = {}
    for row in rows:
        by_code.setdefault(row["code"], []).append(row["value"])
    assert by_code["110180^Study Instance UID^DCM"] == [ORIGINAL_STUDY_UID]
    assert by_code["RESULT_UID^Result SOP Instance UID^99AIFI"] == list(RESULT_UIDS)
    assert by_code["111001^Algorithm Name^DCM"] == ["AIFI ICH"]
    assert by_code["111003^Algorithm Version^DCM"] == ["1.2.0"]
    label = [row for row in rows if row["code"] == "INTENDED_USE^Intended use^99AIFI"]
    assert [(row["type"], row["value"]) for row in label] == [
        ("TX", "reference algorithm, not for clinical use")
    ]


def test_without_summary_the_label_and_results_still_go() -> None:
    rows = observations(received(make_notice(None)))
    codes = [row["code"].split("^")[0] for row in rows]
    assert codes == ["110180", "RESULT_UID", "RESULT_UID", "INTENDED_USE"]
    assert rows[-1]["value"] == "reference algorithm, not for clinical use"


def test_vendor_text_cannot_break_the_message() -> None:
    hostile = FindingSummary(
        finding="Bleed|x^y&z~w\\q",
        finding_code="SCT:50960005",
        tracking_id="t",
        tracking_uid="2.25.1",
        evaluations={"Note": "fine\rPID|||EVIL||Injected\nMSH|"},
    )
    notice = make_notice(make_summary(findings=[hostile]))
    text = encoded(notice)
    segments = [line.split("|")[0] for line in text.strip("\r").split("\r")]
    assert segments.count("PID") == 1 and segments.count("MSH") == 1
    rows = observations(received(notice))
    finding = next(r["value"] for r in rows if r["code"] == "121071^Finding^DCM")
    assert finding == "50960005^Bleed\\F\\x\\S\\y\\T\\z\\R\\w\\E\\q^SCT"
    note = next(r["value"] for r in rows if r["code"] == "NOTE^Note^99AIFI")
    assert note == "fine PID\\F\\\\F\\\\F\\EVIL\\F\\\\F\\Injected MSH\\F\\"


def test_control_id_is_stable_per_job_and_fits_st20(positive: ResultNotice) -> None:
    again = make_notice(make_summary())
    other = make_notice(make_summary(), job="job-9999")
    assert message_control_id(positive) == message_control_id(again)
    assert message_control_id(positive) != message_control_id(other)
    assert len(message_control_id(positive)) <= 20


def test_a_study_without_patient_id_is_refused() -> None:
    attributes = {k: v for k, v in ORIGINAL_ATTRIBUTES.items() if k != "PatientID"}
    with pytest.raises(OruBuildError, match="PID-3"):
        build_oru_r01(make_notice(make_summary(), attributes=attributes), ENDPOINT)


def test_an_identifier_is_never_cut() -> None:
    attributes = {**ORIGINAL_ATTRIBUTES, "AccessionNumber": "A" * 80}
    with pytest.raises(OruBuildError, match="OBR-18 Accession Number"):
        build_oru_r01(make_notice(make_summary(), attributes=attributes), ENDPOINT)


def test_unknown_sex_and_bad_birth_date_are_left_out() -> None:
    attributes = {**ORIGINAL_ATTRIBUTES, "PatientSex": "X", "PatientBirthDate": "1962-03"}
    message = received(make_notice(make_summary(), attributes=attributes))
    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_8.to_er7() == "U"
    assert pid.pid_7.to_er7() == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12.0, "12"),
        (0.1 + 0.2, "0.3"),
        (-4.25, "-4.25"),
        (1.5e-7, "0.00000015"),
        (123456789.125, "123456789.125"),
    ],
)
def test_numbers_are_plain_decimals(value: float, expected: str) -> None:
    assert hl7_number(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e20])
def test_numbers_that_do_not_fit_nm_are_refused(value: float) -> None:
    with pytest.raises(OruBuildError, match="OBX-5"):
        hl7_number(value)


def test_a_measurement_that_does_not_fit_refuses_the_message() -> None:
    finding = FindingSummary(
        finding="Volume",
        finding_code="SCT:1",
        tracking_id="t",
        tracking_uid="2.25.1",
        # A summary refuses a number that is not finite; one too long for NM it holds.
        measurements={"Volume": MeasuredValue(value=1e20, unit="mL")},
    )
    with pytest.raises(OruBuildError, match="does not fit an HL7 NM"):
        build_oru_r01(make_notice(make_summary(findings=[finding])), ENDPOINT)


def test_long_vendor_text_is_shortened_to_fit_after_escaping() -> None:
    long = FindingSummary(
        finding="|" * 300,
        finding_code="SCT:50960005",
        tracking_id="t",
        tracking_uid="2.25.1",
        evaluations={"Comment": "y^" * 300},
    )
    rows = observations(received(make_notice(make_summary(findings=[long]))))
    finding = next(r["value"] for r in rows if r["code"] == "121071^Finding^DCM")
    assert finding == "50960005^" + "\\F\\" * 66 + "^SCT"  # 66 × 3 = 198 <= 199
    comment = next(r["value"] for r in rows if r["code"] == "COMMENT^Comment^99AIFI")
    assert comment.startswith("y\\S\\y") and len(comment) <= 199


def test_an_oid_issuer_is_a_universal_id() -> None:
    attributes = {**ORIGINAL_ATTRIBUTES, "IssuerOfPatientID": "2.16.840.1.113883.2.4.6.3"}
    pid = received(make_notice(make_summary(), attributes=attributes))
    cx = pid.oru_r01_patient_result.oru_r01_patient.pid.pid_3
    assert cx.to_er7() == "MRN-000123^^^&2.16.840.1.113883.2.4.6.3&ISO"


def test_a_long_issuer_that_is_no_oid_is_left_out_and_the_id_kept() -> None:
    attributes = {**ORIGINAL_ATTRIBUTES, "IssuerOfPatientID": "Ziekenhuis Rivierenland Tiel"}
    text = encode_oru_r01(
        build_oru_r01(make_notice(make_summary(), attributes=attributes), ENDPOINT)
    )
    pid = next(seg for seg in text.split("\r") if seg.startswith("PID"))
    assert ORIGINAL_ATTRIBUTES["PatientID"] in pid
    assert "Rivierenland" not in pid


# a job that brings no result ------------------------------------------------------------------


def test_no_result_is_a_cancelled_order_with_one_observation(unavailable: ResultNotice) -> None:
    message = received(unavailable)
    orc, obr = order(message).orc, order(message).obr
    assert (orc.orc_1.to_er7(), orc.orc_5.to_er7()) == ("RE", "CA")
    assert obr.obr_25.to_er7() == "X"  # table 0123: no results available; order canceled
    assert obr.obr_5.to_er7() == "R"
    assert order(message).oru_r01_timing_qty.tq1.tq1_9.to_er7() == "R"
    assert observations(message) == [
        {
            "type": "ST",
            "code": "NO_AI_RESULT^AI result unavailable^99AIFI",
            "sub_id": "",
            "value": f"No AI result: {REASON}",
            "units": "",
            "flag": "",
            "status": "X",
        }
    ]


def test_no_result_names_the_same_patient_order_and_study_as_a_result(
    unavailable: ResultNotice, positive: ResultNotice
) -> None:
    """Same job, same order: a receiver files it where the result would have gone, under a
    control id of its own, so that it is not taken for a repeat of the job's result notice."""
    none, result = received(unavailable), received(positive)
    assert none.msh.msh_10.to_er7() == message_control_id(unavailable)
    assert none.msh.msh_10.to_er7() != result.msh.msh_10.to_er7()
    pid = none.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.to_er7() == result.oru_r01_patient_result.oru_r01_patient.pid.to_er7()
    for field in ("obr_3", "obr_4", "obr_18"):
        said, would_have = (getattr(order(m).obr, field).to_er7() for m in (none, result))
        assert said == would_have, field
    assert order(none).obr.obr_18.to_er7() == ORIGINAL_ATTRIBUTES["AccessionNumber"]


def test_no_result_carries_no_finding_label_or_result_uid(unavailable: ResultNotice) -> None:
    text = encoded(unavailable)
    segments = [line.split("|")[0] for line in text.strip("\r").split("\r")]
    assert segments == ["MSH", "PID", "ORC", "OBR", "TQ1", "OBX"]
    for absent in ("121071^Finding", "AI_TRIAGE", "RESULT_UID", "INTENDED_USE", "not for clinical"):
        assert absent not in text


def test_a_hostile_or_long_reason_cannot_break_the_message() -> None:
    reason = "failed|x^y\rPID|||EVIL " + "z" * 400
    text = encoded(make_unavailable(reason))
    segments = [line.split("|")[0] for line in text.strip("\r").split("\r")]
    assert segments.count("PID") == 1 and segments.count("OBX") == 1
    (row,) = observations(received(make_unavailable(reason)))
    assert row["value"].startswith("No AI result: failed\\F\\x\\S\\y PID\\F\\")
    assert len(row["value"]) <= 199


def test_the_control_ids_receivers_already_hold_are_kept(
    positive: ResultNotice, unavailable: ResultNotice
) -> None:
    """Receivers deduplicate on MSH-10: a new kind of notice must not move the old ids."""
    assert message_control_id(positive) == "AIFI9535F81790DFC399"
    assert message_control_id(unavailable) == "AIFIFABCF0AF11E967FA"


# a STAT study's result late ------------------------------------------------------------------


def test_a_delay_is_an_order_in_process_with_one_observation(delayed: ResultNotice) -> None:
    message = received(delayed)
    orc, obr = order(message).orc, order(message).obr
    assert (orc.orc_1.to_er7(), orc.orc_3.to_er7(), orc.orc_5.to_er7()) == (
        "RE",
        "job-0001^AIFI",
        "IP",
    )
    assert obr.obr_25.to_er7() == "I"  # table 0123: specimen received, procedure incomplete
    assert obr.obr_5.to_er7() == "S"
    assert order(message).oru_r01_timing_qty.tq1.tq1_9.to_er7() == "S"
    assert observations(message) == [
        {
            "type": "ST",
            "code": "AI_RESULT_DELAYED^AI result delayed^99AIFI",
            "sub_id": "",
            "value": f"AI result delayed: {WHY}",
            "units": "",
            "flag": "",
            "status": "I",
        }
    ]


def test_a_delay_names_the_same_patient_order_and_study_as_a_result(
    delayed: ResultNotice, positive: ResultNotice
) -> None:
    late, result = received(delayed), received(positive)
    pid = late.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.to_er7() == result.oru_r01_patient_result.oru_r01_patient.pid.to_er7()
    for field in ("obr_3", "obr_4", "obr_18"):
        said, will = (getattr(order(m).obr, field).to_er7() for m in (late, result))
        assert said == will, field
    assert order(late).obr.obr_18.to_er7() == ORIGINAL_ATTRIBUTES["AccessionNumber"]


def test_a_delay_carries_no_finding_label_or_result_uid(delayed: ResultNotice) -> None:
    text = encoded(delayed)
    segments = [line.split("|")[0] for line in text.strip("\r").split("\r")]
    assert segments == ["MSH", "PID", "ORC", "OBR", "TQ1", "OBX"]
    for absent in (
        "121071^Finding",
        "AI_TRIAGE",
        "RESULT_UID",
        "INTENDED_USE",
        "not for clinical",
        "NO_AI_RESULT",
    ):
        assert absent not in text


def test_a_delay_has_a_control_id_of_its_own_stable_per_job(
    delayed: ResultNotice, positive: ResultNotice, unavailable: ResultNotice
) -> None:
    """Neither the delay nor what follows it is dropped as the repeat of the other."""
    late = message_control_id(delayed)
    assert received(delayed).msh.msh_10.to_er7() == late
    assert late == message_control_id(make_delayed("another wording"))
    assert late != message_control_id(make_delayed(job="job-9999"))
    assert late not in {message_control_id(positive), message_control_id(unavailable)}
    assert late.startswith("AIFI") and len(late) <= 20


@pytest.mark.parametrize(
    ("follows", "status", "orc_5"),
    [
        (make_notice(make_summary(), after_delay=True), "P", "CM"),
        (make_unavailable(stat_study=True, after_delay=True), "X", "CA"),
    ],
    ids=["result", "no-result"],
)
def test_what_follows_a_delay_is_filed_on_the_same_order(
    follows: ResultNotice, status: str, orc_5: str, delayed: ResultNotice
) -> None:
    """The message it would have been anyway (the job's own control id, not the delay's, on
    the same order, OBR-3, whose status I it replaces), but that the order stays STAT and
    the delay's observation is withdrawn (OBX-11 D), for a RIS that keeps observations by
    their code rather than replacing the order's."""
    message, late = received(follows), received(delayed)
    plain = make_notice(make_summary()) if follows.available else make_unavailable(stat_study=True)
    assert message.msh.msh_10.to_er7() == received(plain).msh.msh_10.to_er7()
    assert message.msh.msh_10.to_er7() != late.msh.msh_10.to_er7()
    assert order(message).obr.obr_3.to_er7() == order(late).obr.obr_3.to_er7()
    assert (order(message).obr.obr_25.to_er7(), order(message).orc.orc_5.to_er7()) == (
        status,
        orc_5,
    )
    assert order(message).obr.obr_5.to_er7() == "S"
    *kept, withdrawn = observations(message)
    assert kept == observations(received(plain))
    assert withdrawn["code"].startswith("AI_RESULT_DELAYED^") and withdrawn["status"] == "D"
    assert withdrawn["value"] == ""


def test_a_negative_result_after_a_delay_keeps_the_order_stat() -> None:
    negative = make_summary(TriageFlag.NEGATIVE)
    assert order(received(make_notice(negative))).obr.obr_5.to_er7() == "R"
    assert order(received(make_notice(negative, after_delay=True))).obr.obr_5.to_er7() == "S"


def test_a_hostile_or_long_delay_reason_cannot_break_the_message() -> None:
    why = "late|x^y\rPID|||EVIL " + "z" * 400
    text = encoded(make_delayed(why))
    segments = [line.split("|")[0] for line in text.strip("\r").split("\r")]
    assert segments.count("PID") == 1 and segments.count("OBX") == 1
    (row,) = observations(received(make_delayed(why)))
    assert row["value"].startswith("AI result delayed: late\\F\\x\\S\\y PID\\F\\")
    assert len(row["value"]) <= 199
