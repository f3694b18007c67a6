"""The notice: built from a re-identified result or the vault, and silent about identity."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydicom.dataset import Dataset

from aifi.gateway.notify import (
    Hl7Endpoint,
    OriginalStudy,
    ResultNotice,
    build_notice,
    build_oru_r01,
    send_mllp,
)
from aifi.gateway.notify.receivers import Hl7Listener
from aifi.results.summary import TriageFlag

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


def reidentified_result() -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = ORIGINAL_STUDY_UID
    ds.PatientID = "MRN-000123"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientBirthDate = "19551231"
    ds.PatientSex = "M"
    ds.AccessionNumber = "ACC-7"
    return ds


def test_study_from_a_reidentified_result() -> None:
    study = OriginalStudy.from_dataset(reidentified_result())
    assert study == OriginalStudy(
        study_instance_uid=ORIGINAL_STUDY_UID,
        patient_id="MRN-000123",
        patient_name="Müller^Jürgen",
        patient_birth_date="19551231",
        patient_sex="M",
        accession_number="ACC-7",
    )


def test_a_result_without_study_uid_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Study Instance UID \(0020,000D\)"):
        OriginalStudy.from_dataset(Dataset())


def test_study_from_the_vault_record() -> None:
    study = OriginalStudy.from_vault(ORIGINAL_STUDY_UID, ORIGINAL_ATTRIBUTES)
    assert (study.patient_id, study.issuer_of_patient_id) == ("MRN-000123", "RIVIERENLAND")
    assert study.study_time == "101502"


def test_the_repr_leaves_the_identity_out(positive: ResultNotice) -> None:
    text = repr(positive)
    assert "job-0001" in text
    for private in ("MRN-000123", "Jansen", "19620314", "ACC-2025-0042"):
        assert private not in text


def test_stat_is_a_positive_triage_only() -> None:
    assert make_notice(make_summary(TriageFlag.POSITIVE)).stat
    assert not make_notice(make_summary(TriageFlag.NEGATIVE)).stat
    assert not make_notice(None).stat


def test_the_label_defaults_to_not_for_clinical_use() -> None:
    assert (
        make_notice(make_summary(label=None)).label == "reference algorithm, not for clinical use"
    )
    assert make_notice(make_summary(label="CE class IIa")).label == "CE class IIa"


def test_product_name_and_version_default_to_the_summary(positive: ResultNotice) -> None:
    assert (positive.product_name, positive.product_version) == ("AIFI ICH", "1.2.0")


def test_completion_time_must_carry_a_timezone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_notice(
            hospital="h",
            exchange_job_id="j",
            product_id="p",
            summary=None,
            study=OriginalStudy(study_instance_uid="1.2.3", patient_id="P"),
            completed_at=datetime(2025, 3, 1, 10, 0),
        )


def test_a_name_beyond_ascii_arrives_intact(hl7_listener: Hl7Listener) -> None:
    notice = build_notice(
        hospital="rivierenland",
        exchange_job_id="job-utf8",
        product_id="aifi-ich",
        summary=make_summary(),
        study=OriginalStudy.from_dataset(reidentified_result()),
    )
    target = Hl7Endpoint(host="127.0.0.1", port=hl7_listener.port, retries=0, timeout_seconds=30)
    assert send_mllp(build_oru_r01(notice, target), target).accepted
    pid = hl7_listener.received.get(timeout=5).message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_5.to_er7() == "Müller^Jürgen"


# a job that brings no result ------------------------------------------------------------------


def test_a_notice_without_result_carries_the_reason_and_is_never_stat(
    unavailable: ResultNotice, positive: ResultNotice
) -> None:
    assert (unavailable.unavailable, unavailable.available, unavailable.stat) == (
        REASON,
        False,
        False,
    )
    assert unavailable.no_result_statement == f"No AI result: {REASON}"
    assert unavailable.summary is None and unavailable.result_sop_instance_uids == ()
    assert (positive.unavailable, positive.available, positive.no_result_statement) == (
        None,
        True,
        None,
    )


def without_result() -> dict[str, object]:
    """A notice's fields but what it says instead of a result."""
    return {
        "hospital": "rivierenland",
        "exchange_job_id": "job-0001",
        "product_id": "aifi-ich",
        "product_name": "AIFI ICH",
        "product_version": "1.2.0",
        "study": OriginalStudy.from_vault(ORIGINAL_STUDY_UID, ORIGINAL_ATTRIBUTES),
        "summary": None,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unavailable": ""}, "must give the reason"),
        ({"unavailable": "  \t"}, "must give the reason"),
        ({"summary": make_summary()}, "no summary and no result UIDs"),
        ({"result_sop_instance_uids": RESULT_UIDS}, "no summary and no result UIDs"),
    ],
)
def test_a_notice_without_result_refuses_what_contradicts_it(
    change: dict[str, object], message: str
) -> None:
    fields = without_result() | {"unavailable": REASON}
    with pytest.raises(ValueError, match=message):
        ResultNotice(**(fields | change))  # type: ignore[arg-type]


def test_a_positive_summary_with_a_reason_is_refused_not_made_stat() -> None:
    with pytest.raises(ValueError, match="no summary"):
        build_notice(
            hospital="h",
            exchange_job_id="j",
            product_id="p",
            summary=make_summary(TriageFlag.POSITIVE),
            study=OriginalStudy(study_instance_uid="1.2.3", patient_id="P"),
            unavailable=REASON,
        )


def test_the_repr_of_a_notice_without_result_leaves_the_identity_out() -> None:
    text = repr(make_unavailable())
    assert REASON in text
    for private in ("MRN-000123", "Jansen", "19620314", "ACC-2025-0042"):
        assert private not in text


def test_a_result_is_stat_by_its_triage_not_by_its_route() -> None:
    with pytest.raises(ValueError, match="STAT by its triage"):
        build_notice(
            hospital="rivierenland",
            exchange_job_id="job-0001",
            product_id="aifi-ich",
            summary=make_summary(TriageFlag.NEGATIVE),
            study=OriginalStudy.from_vault(ORIGINAL_STUDY_UID, ORIGINAL_ATTRIBUTES),
            stat_study=True,
        )


# a STAT study's result late ------------------------------------------------------------------


def test_a_delay_notice_says_why_and_is_stat(delayed: ResultNotice) -> None:
    assert (delayed.delayed, delayed.available, delayed.stat) == (WHY, False, True)
    assert delayed.no_result_statement == f"AI result delayed: {WHY}"
    assert delayed.unavailable is None and not delayed.after_delay
    assert delayed.summary is None and delayed.result_sop_instance_uids == ()
    assert make_delayed(f"  {WHY}\n").no_result_statement == f"AI result delayed: {WHY}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"delayed": ""}, "must say why"),
        ({"delayed": " \t"}, "must say why"),
        ({"summary": make_summary()}, "result is late carries no summary and no result UIDs"),
        ({"result_sop_instance_uids": RESULT_UIDS}, "result is late carries no summary"),
        ({"unavailable": REASON}, "neither the news that no result will come"),
        ({"after_delay": True}, "nor what follows a delay"),
        ({"stat_study": False}, "only a study run STAT"),
    ],
)
def test_a_delay_notice_refuses_what_contradicts_it(
    change: dict[str, object], message: str
) -> None:
    fields = without_result() | {"stat_study": True, "delayed": WHY}
    ResultNotice(**fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        ResultNotice(**(fields | change))  # type: ignore[arg-type]


def test_what_follows_a_delay_is_a_result_or_no_result_as_ever() -> None:
    result = make_notice(make_summary(TriageFlag.NEGATIVE), after_delay=True)
    assert (result.after_delay, result.available, result.stat) == (True, True, False)
    # The result is no alert, but its order stays STAT: its channels, priority and count.
    assert result.goes_stat and not make_notice(make_summary(TriageFlag.NEGATIVE)).goes_stat
    assert result.no_result_statement is None
    none = make_unavailable(stat_study=True, after_delay=True)
    assert (none.after_delay, none.available, none.stat) == (True, False, True)
    assert none.no_result_statement == f"No AI result: {REASON}"


def test_the_repr_of_a_delay_notice_leaves_the_identity_out(delayed: ResultNotice) -> None:
    text = repr(delayed)
    assert WHY in text
    for private in ("MRN-000123", "Jansen", "19620314", "ACC-2025-0042"):
        assert private not in text
