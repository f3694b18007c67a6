"""What the gateway knows about one re-identified result: the input of every notification.

A notice joins three things the gateway holds after re-identification: the product's JSON
summary (findings, measurements, triage), the original identity of the study from the vault,
and the UIDs of the result objects now in the PACS. It lives only inside the hospital; its
`repr` leaves the identity out so that a log line can never leak it.

A notice may instead say that there will be no result (`unavailable`, the reason): a
radiologist who relies on the product must not wait for it, nor read its silence as a
negative finding. Or, for a study run STAT, that its result is late (`delayed`, why): acute
triage cannot wait on a product that has not answered in its time, whatever the cause (the
exchange out of reach, the study sent again, a product behind), and the result or the news
that none will come follows as usual, under the same identifiers (`after_delay`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydicom.dataset import Dataset

from aifi.results.algorithm import NOT_FOR_CLINICAL_USE
from aifi.results.summary import ResultSummary, TriageFlag


@dataclass(frozen=True)
class OriginalStudy:
    """The hospital's own identifiers of the study a result belongs to (from the vault).

    Values are the DICOM strings as received (PN with ``^`` between components, DA as
    YYYYMMDD), so that each channel can map them to its own types.
    """

    study_instance_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""

    @classmethod
    def from_vault(cls, original_study_uid: str, attributes: Mapping[str, str]) -> OriginalStudy:
        """From what :meth:`aifi.gateway.vault.Vault.study` returns for a pseudonymised study."""
        return cls(
            study_instance_uid=original_study_uid,
            **{name: attributes.get(keyword, "") for name, keyword in _KEYWORDS.items()},
        )

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> OriginalStudy:
        """From a re-identified result (its header carries the restored identity).

        Raises
        ------
        ValueError
            If the dataset has no Study Instance UID.
        """
        study_uid = str(dataset.get("StudyInstanceUID", "") or "").strip()
        if not study_uid:
            raise ValueError("Study Instance UID (0020,000D) is missing from the result")
        return cls(
            study_instance_uid=study_uid,
            **{
                name: str(dataset.get(keyword, "") or "").strip()
                for name, keyword in _KEYWORDS.items()
            },
        )


#: OriginalStudy field -> DICOM keyword.
_KEYWORDS = {
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "accession_number": "AccessionNumber",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
}
#: What a notice names of the patient and study (`OriginalStudy`), by DICOM keyword.
IDENTITY_KEYWORDS = tuple(_KEYWORDS.values())


@dataclass(frozen=True)
class ResultNotice:
    """One job's result, or the news that it will not come, ready to be announced to the
    hospital's systems.

    Parameters
    ----------
    hospital:
        The gateway's hospital id (MSH sending facility unless configured otherwise).
    exchange_job_id:
        The job at the exchange: the key that makes every message about this result unique
        (HL7 control id, FHIR identifiers, webhook delivery id), so a resend can be recognised.
    product_id, product_name, product_version:
        The AI product as the catalogue names it.
    study:
        The original identity of the study, restored from the vault.
    summary:
        The product's JSON summary; None when the product uploaded none (the notice then only
        says that results are in the PACS).
    result_sop_instance_uids:
        The re-identified result objects (SR, SEG, ...) now stored in the PACS.
    completed_at:
        When the result reached the gateway (timezone-aware); for a notice that there is no
        result, when the job ended at the exchange.
    unavailable:
        None for a result. Otherwise the reason there will be no result, one sentence the
        gateway words itself (``"the product could not analyse the study"``), never the
        vendor's text, which may name the study's pseudonyms; such a notice has no summary
        and no result UIDs.
    stat_study:
        For a notice that there is no result: the job ran STAT (acute triage: its route or
        its product said so). The notice is then STAT itself: whoever waits for the
        product's alert must hear at once that none will come.
    delayed:
        None, unless the notice says that the result of a study run STAT is late: why, one
        sentence the gateway words itself (``"no result after 12 minutes: no answer from
        AIFI ICH yet; …"``, `aifi.gateway.delays.why_late`). Such a notice has no summary,
        no result UIDs and no `unavailable`, and is STAT (`stat_study` must be set): the job
        is still under way.
    after_delay:
        A result, or the notice that none will come, of a job whose delay was announced
        before: each channel makes it replace what the delay notice made (the FHIR report is
        updated, not created), as it goes under the same `exchange_job_id`.

    Raises
    ------
    ValueError
        If `completed_at` has no timezone, the job id or product id is empty, `unavailable`
        is blank or comes with a summary or result UIDs (a job has a result or none, not
        both), or `stat_study` is set on a result (a result is STAT by its triage).
    """

    hospital: str
    exchange_job_id: str
    product_id: str
    product_name: str
    product_version: str
    study: OriginalStudy = field(repr=False)
    summary: ResultSummary | None
    result_sop_instance_uids: tuple[str, ...] = ()
    completed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    unavailable: str | None = None
    stat_study: bool = False
    delayed: str | None = None
    after_delay: bool = False

    def __post_init__(self) -> None:
        if self.completed_at.tzinfo is None:
            raise ValueError("ResultNotice.completed_at must be timezone-aware")
        for name in ("exchange_job_id", "product_id"):
            if not getattr(self, name).strip():
                raise ValueError(f"ResultNotice.{name} must not be empty")
        if self.unavailable is not None:
            if not self.unavailable.strip():
                raise ValueError("ResultNotice.unavailable must give the reason, not be blank")
            if self.summary is not None or self.result_sop_instance_uids:
                raise ValueError(
                    "ResultNotice.unavailable: a notice that there is no result carries no "
                    "summary and no result UIDs"
                )
        if self.delayed is not None:
            if not self.delayed.strip():
                raise ValueError("ResultNotice.delayed must say why, not be blank")
            if self.unavailable is not None or self.after_delay:
                raise ValueError(
                    "ResultNotice.delayed: a delay notice is neither the news that no result "
                    "will come nor what follows a delay"
                )
            if self.summary is not None or self.result_sop_instance_uids:
                raise ValueError(
                    "ResultNotice.delayed: a notice that the result is late carries no summary "
                    "and no result UIDs"
                )
            if not self.stat_study:
                raise ValueError("ResultNotice.delayed: only a study run STAT has its delay told")
        elif self.unavailable is None and self.stat_study:
            raise ValueError("ResultNotice.stat_study: a result is STAT by its triage")

    @property
    def available(self) -> bool:
        """There is a result to announce (False: the notice says there will be none, or that
        it is late)."""
        return self.unavailable is None and self.delayed is None

    @property
    def kind(self) -> str:
        """``result``, ``no-result`` or ``delayed``: what each channel's message says, and
        what makes its id differ from the job's other notices'."""
        if self.delayed is not None:
            return "delayed"
        return "result" if self.unavailable is None else "no-result"

    @property
    def stat(self) -> bool:
        """The notice must reach the radiologist at once: a triage-positive result, no result
        for a study run STAT, or a STAT study's result late."""
        if not self.available:
            return self.stat_study
        return self.summary is not None and self.summary.triage.flag is TriageFlag.POSITIVE

    @property
    def goes_stat(self) -> bool:
        """The message goes as STAT (its channels, its priority, how its outcome counts): a
        STAT notice, or what follows a delay told, as the order stays STAT whatever the
        result says (`stat` alone says whether the result itself is an alert)."""
        return self.stat or self.after_delay

    @property
    def no_result_statement(self) -> str | None:
        """What HL7 and FHIR say instead of a result, ``No AI result: <reason>`` or ``AI
        result delayed: <why>``, worded here once so that both read the same; None for a
        result."""
        if self.delayed is not None:
            return f"AI result delayed: {self.delayed.strip()}"
        if self.unavailable is None:
            return None
        return f"No AI result: {self.unavailable.strip()}"

    @property
    def label(self) -> str:
        """The intended-use label shown with every notice; AIFI's reference label by default."""
        if self.summary is not None and self.summary.label:
            return self.summary.label
        return NOT_FOR_CLINICAL_USE


def build_notice(
    *,
    hospital: str,
    exchange_job_id: str,
    product_id: str,
    summary: ResultSummary | None,
    study: OriginalStudy,
    result_sop_instance_uids: Sequence[str] = (),
    product_name: str | None = None,
    product_version: str | None = None,
    completed_at: datetime | None = None,
    unavailable: str | None = None,
    stat_study: bool = False,
    delayed: str | None = None,
    after_delay: bool = False,
) -> ResultNotice:
    """The notice for a job, from what the gateway holds after re-identification.

    `study` comes from a re-identified result (:meth:`OriginalStudy.from_dataset`) or from the
    vault (:meth:`OriginalStudy.from_vault`); the product's name and version default to the
    summary's algorithm and product version. With `unavailable` (the reason) it is the notice
    that there will be no result: `summary` None, no result UIDs, and the product's name
    worth passing, since there is no summary to take it from; with `delayed` (why) the
    notice that a STAT study's result is late, likewise.
    """
    algorithm = summary.algorithm if summary is not None else None
    return ResultNotice(
        hospital=hospital,
        exchange_job_id=exchange_job_id,
        product_id=product_id,
        product_name=product_name or (algorithm.name if algorithm else product_id),
        product_version=product_version or (summary.product_version if summary is not None else ""),
        study=study,
        summary=summary,
        result_sop_instance_uids=tuple(result_sop_instance_uids),
        completed_at=completed_at or datetime.now(UTC),
        unavailable=unavailable,
        stat_study=stat_study,
        delayed=delayed,
        after_delay=after_delay,
    )
