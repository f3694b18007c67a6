"""A product's record of processing at one hospital: the input the hospital's DPIA needs.

GDPR art. 30 asks each controller to record what personal data it processes, why, where, for
how long and how it is protected; art. 35 asks for a DPIA where the processing is high risk.
The hospital is the controller; the exchange's operator and the vendor process on its behalf.
Everything the record says follows from three sources that already exist: the product's
manifest (what data it needs, what it returns), the vendor's dossier (where it processes,
how long it keeps, its certifications) and the hospital's gateway configuration (which
studies go to the product). Nothing here is typed in twice, so the record stays true when any
of them changes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from aifi.dicom.deid import OPTION_SPECS
from aifi.exchange.schemas import ProductManifest
from aifi.governance.dossier import Dossier
from aifi.governance.templating import duration, environment

#: What each Annex E option lets through beyond the Basic Profile, in a DPIA's words.
OPTION_EFFECTS: dict[str, str] = {
    "retain-safe-private": "private attributes the manufacturer declared safe (no identity)",
    "retain-uids": "the hospital's original study, series and instance UIDs",
    "retain-device-identity": "the identity of the scanner (station name, serial number)",
    "retain-institution-identity": "the institution's name, address and department",
    "retain-patient-characteristics": "patient sex, age, size, weight and similar characteristics",
    "retain-long-full-dates": "the real dates and times of the study",
    "retain-long-modified-dates": "dates shifted by a per-patient offset (intervals kept, "
    "real dates not)",
    "clean-descriptors": "study, series and protocol descriptions, cleaned of identifying text",
    "clean-structured-content": "structured report content, cleaned of identifying text",
    "clean-graphics": "graphic annotations and overlays, cleaned of identifying text",
    "clean-pixel-data": "images whose burned-in text was blanked in configured regions",
    "clean-recognizable-visual-features": "images from which recognisable features were removed",
}

#: What the Basic Application Confidentiality Profile removes or replaces in every study; no
#: option a manifest may ask for lets any of these through.
NEVER_SENT = (
    "patient name, patient ID and other patient identifiers (replaced by a keyed pseudonym)",
    "birth date, address, telephone numbers and other demographics",
    "accession number, study ID and the names of physicians and operators",
    "free-text comments and any attribute not known to be safe",
    "the link between pseudonym and patient: the vault stays inside the hospital's gateway",
)


class RoutingRule(BaseModel):
    """A gateway routing rule that sends studies to the product (a subset of its fields)."""

    model_config = ConfigDict(extra="ignore")

    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    study_description: str | None = None
    series_description: str | None = None
    sop_classes: list[str] = Field(default_factory=list)
    calling_aes: list[str] = Field(default_factory=list)

    def describe(self) -> str:
        parts = []
        if self.modalities:
            parts.append("modality " + " or ".join(self.modalities))
        if self.body_parts:
            parts.append("body part " + " or ".join(self.body_parts))
        if self.study_description:
            parts.append(f"study description matching /{self.study_description}/")
        if self.series_description:
            parts.append(f"series description matching /{self.series_description}/")
        if self.sop_classes:
            parts.append("SOP class " + " or ".join(self.sop_classes))
        if self.calling_aes:
            parts.append("sent by " + " or ".join(self.calling_aes))
        return ", ".join(parts) if parts else "every study the gateway receives"


class GatewayProcessing(BaseModel):
    """The hospital's side: who it is and which of its gateway's rules feed the product."""

    hospital_id: str
    hospital_name: str
    routes: list[RoutingRule] = Field(default_factory=list)
    location: str = "the hospital's own network (AIFI gateway)"
    vault_retention: str = "set by the hospital's own retention policy"


class ExchangeProcessing(BaseModel):
    """The national exchange's side: who runs it, where, and its retention settings."""

    operator: str
    location: str
    input_retention_seconds: float | None = None
    result_retention_seconds: float | None = None
    undelivered_retention_seconds: float | None = None
    unfinished_expiry_seconds: float | None = None


class OptionUse(BaseModel):
    name: str
    code: str
    lets_through: str
    justification: str


class ProcessingStep(BaseModel):
    step: str
    party: str
    role: str
    location: str
    data: str


class RetentionRule(BaseModel):
    place: str
    data: str
    period: str


class RecordOfProcessing(BaseModel):
    """What a hospital's DPIA needs about one product: which data, purpose, where, how long."""

    hospital_id: str
    controller: str
    product_id: str
    product_name: str
    product_version: str
    vendor: str
    clinical_area: str
    purpose: str
    studies_sent: list[str]
    data_categories: list[str]
    never_sent: list[str]
    options: list[OptionUse]
    steps: list[ProcessingStep]
    outside_eea: bool | None
    retention: list[RetentionRule]
    security_measures: list[str]
    vendor_dpia: str | None
    open_questions: list[str] = Field(
        default_factory=list, description="Answers the vendor's dossier does not give yet."
    )
    generated_at: datetime

    def to_markdown(self) -> str:
        return environment().get_template("record_of_processing.md").render(record=self)

    def to_html(self) -> str:
        return environment().get_template("record_of_processing.html").render(record=self)


def record_of_processing(
    manifest: ProductManifest,
    dossier: Dossier,
    gateway: GatewayProcessing,
    exchange: ExchangeProcessing,
    *,
    now: datetime | None = None,
) -> RecordOfProcessing:
    """The record of processing of `manifest`'s product at `gateway`'s hospital."""
    open_questions: list[str] = []
    options = [
        OptionUse(
            name=name,
            code=OPTION_SPECS[name].code if name in OPTION_SPECS else "",
            lets_through=OPTION_EFFECTS.get(name, "unknown option"),
            justification=dossier.data_justification.get(name, ""),
        )
        for name in manifest.data_needed
    ]
    for option in options:
        if not option.justification:
            open_questions.append(f"why the product needs {option.name}")
    vendor_location = dossier.processing_location or "not stated"
    if dossier.processing_location is None:
        open_questions.append("where the vendor processes the studies")
    if dossier.processing_in_eea is None:
        open_questions.append("whether processing stays inside the EEA")
    if dossier.vendor_retention_days is None:
        open_questions.append("how long the vendor keeps inputs and results")
    if dossier.dpia is None:
        open_questions.append("the vendor's DPIA")
    outputs = ", ".join(o.kind for o in manifest.outputs) or "results"
    return RecordOfProcessing(
        hospital_id=gateway.hospital_id,
        controller=gateway.hospital_name,
        product_id=manifest.id,
        product_name=manifest.name,
        product_version=manifest.version,
        vendor=manifest.vendor,
        clinical_area=manifest.clinical_area,
        purpose=manifest.intended_use or dossier.intended_use or "not stated",
        studies_sent=[r.describe() for r in gateway.routes] or ["no routing rule yet"],
        data_categories=[
            "medical images of the study (pixel data), pseudonymised at the hospital",
            "technical image attributes needed to read them (geometry, acquisition)",
            *(f"{o.lets_through} ({o.name})" for o in options),
            f"the product's results ({outputs}), about the same pseudonymised study",
        ],
        never_sent=list(NEVER_SENT),
        options=options,
        steps=[
            ProcessingStep(
                step="select and pseudonymise studies; keep the pseudonym vault",
                party=gateway.hospital_name,
                role="controller",
                location=gateway.location,
                data="identified studies (they never leave this step)",
            ),
            ProcessingStep(
                step="hold pseudonymised studies and results; route jobs; audit access",
                party=exchange.operator,
                role="processor",
                location=exchange.location,
                data="pseudonymised studies and results",
            ),
            ProcessingStep(
                step="run the AI product on the study and return results",
                party=manifest.vendor,
                role="sub-processor",
                location=vendor_location,
                data="pseudonymised studies of its own jobs only, while it holds the job",
            ),
            ProcessingStep(
                step="re-identify results and store them in the PACS",
                party=gateway.hospital_name,
                role="controller",
                location=gateway.location,
                data="results under the patient's own identifiers",
            ),
        ],
        outside_eea=None if dossier.processing_in_eea is None else not dossier.processing_in_eea,
        retention=[
            RetentionRule(
                place="gateway vault (hospital)",
                data="pseudonym ↔ patient mapping",
                period=gateway.vault_retention,
            ),
            RetentionRule(
                place="gateway disclosure log (hospital)",
                data="each study sent and each result returned, by patient ID, product and "
                "pseudonym",
                period="as long as the hospital keeps its access logs (NEN 7513); never "
                "purged by the gateway",
            ),
            RetentionRule(
                place=f"exchange ({exchange.operator})",
                data="pseudonymised input studies, after the job ended",
                period=duration(exchange.input_retention_seconds),
            ),
            RetentionRule(
                place=f"exchange ({exchange.operator})",
                data="results, after the hospital acknowledged delivery",
                period=duration(exchange.result_retention_seconds),
            ),
            RetentionRule(
                place=f"exchange ({exchange.operator})",
                data="results the hospital never fetched, after the job ended",
                period=duration(exchange.undelivered_retention_seconds),
            ),
            RetentionRule(
                place=f"exchange ({exchange.operator})",
                data="a job not ended this long after its creation is ended (expired); its "
                "inputs then go as above",
                period=duration(exchange.unfinished_expiry_seconds),
            ),
            RetentionRule(
                place=f"vendor ({manifest.vendor})",
                data="inputs and results",
                period=_vendor_period(dossier),
            ),
        ],
        security_measures=[
            "pseudonymisation inside the hospital (DICOM PS3.15 Annex E, keyed pseudonyms)",
            "the exchange refuses input that is not marked de-identified",
            "tenants walled: a vendor reaches only its own jobs, only while it holds them",
            "every access logged in a hash-chained audit log (NEN 7513 fields)",
            "the hospital's gateway logs each disclosure by patient (which study went to which "
            "product, when, under which pseudonym) in a hash-chained log of its own that never "
            "leaves the hospital",
            "transport over HTTPS; API keys stored only as hashes",
            *(
                f"vendor certified {c.standard.value} (certificate {c.certificate.number}, "
                f"valid until {c.certificate.valid_until.isoformat()})"
                for c in dossier.information_security
            ),
        ],
        vendor_dpia=(
            f"{dossier.dpia.reference} (completed {dossier.dpia.completed_on.isoformat()})"
            if dossier.dpia
            else None
        ),
        open_questions=open_questions,
        generated_at=now or datetime.now(UTC),
    )


def _vendor_period(dossier: Dossier) -> str:
    days = dossier.vendor_retention_days
    if days is None:
        return "not stated"
    return duration(days * 86400.0) if days else "deleted when the job ends"
