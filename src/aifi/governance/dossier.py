"""A product's admission dossier: the questions purchasing guidance for radiology AI asks.

The questions follow ECLAIR (Omoumi et al., Eur Radiol 2021) and the multi-society statement of
ACR, CAR, ESR, RANZCR and RSNA on developing, purchasing, implementing and monitoring AI tools
in radiology (2024): what the product is for, its regulatory status, its evidence, what it does
with patient data, how it is secured, what it returns and how fast, what it costs, how it is
watched after market and how its versions change. Every answer is optional while the vendor
drafts; :func:`dossier_gaps` lists what is still missing or inconsistent before it is submitted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from enum import IntEnum, StrEnum

from pydantic import BaseModel, ConfigDict, Field

from aifi.dicom.deid import OPTION_SPECS
from aifi.exchange.schemas import ProductManifest


class MdrClass(StrEnum):
    """EU MDR 2017/745 risk class; radiology software is usually IIa or higher (rule 11)."""

    I = "I"  # noqa: E741 - the class's name in the regulation
    IIa = "IIa"
    IIb = "IIb"
    III = "III"


class EvidenceLevel(IntEnum):
    """Fryback & Thornbury's hierarchy of diagnostic efficacy (Med Decis Making 1991)."""

    technical = 1
    diagnostic_accuracy = 2
    diagnostic_thinking = 3
    therapeutic = 4
    patient_outcome = 5
    societal = 6


class StudyDesign(StrEnum):
    retrospective = "retrospective"
    prospective = "prospective"
    randomised = "randomised-controlled"


class SecurityStandard(StrEnum):
    nen_7510 = "NEN 7510"
    iso_27001 = "ISO/IEC 27001"
    other = "other"


#: Certifications that answer the information-security question on their own.
ACCEPTED_SECURITY_STANDARDS = frozenset({SecurityStandard.nen_7510, SecurityStandard.iso_27001})


class PricingModel(StrEnum):
    per_study = "per-study"
    subscription = "subscription"
    site_licence = "site-licence"
    volume_tiers = "volume-tiers"
    free = "free"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Certificate(_Part):
    number: str = Field(min_length=1, description="The certificate's number.")
    issued_by: str = Field(min_length=1, description="Who issued it (a notified body, a CAB).")
    valid_until: date = Field(description="Expiry date; an expired certificate is a gap.")


class NotifiedBody(_Part):
    name: str = Field(min_length=1)
    number: str = Field(pattern=r"^\d{4}$", description="Its four-digit NANDO number.")


class ValidationStudy(_Part):
    title: str = Field(min_length=1)
    reference: str = Field(min_length=1, description="DOI, PubMed id or a URL to the report.")
    design: StudyDesign
    centres: int = Field(ge=1, description="Number of sites that contributed data.")
    external: bool = Field(description="Validated on data from sites not used for training.")
    population: str = Field(min_length=1, description="Who was studied (age, setting, scanner).")
    cases: int = Field(ge=1, description="Number of studies (patients) evaluated.")
    results: str = Field(min_length=1, description="Main results, e.g. sensitivity 0.91 (CI).")


class Dpia(_Part):
    completed_on: date
    reference: str = Field(min_length=1, description="Where a hospital can read it.")
    summary: str = ""


class SecurityCertification(_Part):
    standard: SecurityStandard
    certificate: Certificate


class OutputDeclaration(_Part):
    kind: str = Field(min_length=1, description="As in the manifest, e.g. sr-tid1500, seg.")
    standard: str = Field(
        min_length=1, description="The standard it follows, e.g. DICOM SR TID 1500 (IHE AIR)."
    )


class Pricing(_Part):
    model: PricingModel
    description: str = Field(min_length=1, description="Prices, tiers, what is included.")


class VersionPolicy(_Part):
    notice_days: int = Field(ge=0, description="Days between the announcement and the release.")
    channel: str = Field(min_length=1, description="How hospitals and the operator are told.")
    release_notes: str = Field(default="", description="Where release notes are published.")


class ConformanceAttachment(_Part):
    """The conformance kit's admission report, attached to the dossier."""

    product_version: str
    passed: bool
    generated_at: datetime
    filename: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Dossier(BaseModel):
    """The answers a vendor gives for one product version; the operator reviews them."""

    model_config = ConfigDict(extra="forbid")

    product_id: str = Field(description="The product's id in the catalogue.")
    vendor: str = Field(description="The vendor organisation's id.")
    version: str = Field(description="The product version these answers are about.")

    intended_use: str | None = Field(
        default=None, description="Intended use: the clinical question, the users and the setting."
    )
    target_population: str | None = Field(
        default=None, description="Which patients and studies the product is for (and not for)."
    )
    mdr_class: MdrClass | None = Field(default=None, description="EU MDR risk class.")
    notified_body: NotifiedBody | None = Field(
        default=None, description="The notified body that assessed the product (class IIa and up)."
    )
    ce_certificate: Certificate | None = Field(
        default=None, description="The CE certificate under the MDR (class IIa and up)."
    )
    evidence_level: EvidenceLevel | None = Field(
        default=None, description="Highest level of evidence reached (Fryback & Thornbury, 1–6)."
    )
    validation_studies: list[ValidationStudy] = Field(
        default_factory=list, description="Validation studies, published or on request."
    )
    dpia: Dpia | None = Field(
        default=None, description="The vendor's data protection impact assessment (GDPR art. 35)."
    )
    information_security: list[SecurityCertification] = Field(
        default_factory=list,
        description="Information security certification (NEN 7510 or ISO/IEC 27001).",
    )
    data_needed: list[str] | None = Field(
        default=None,
        description="The Annex E options the product needs beyond the Basic Profile "
        "(an empty list when it needs none).",
    )
    data_justification: dict[str, str] = Field(
        default_factory=dict,
        description="For each option in data_needed, why the product needs it (minimum necessary).",
    )
    processing_location: str | None = Field(
        default=None, description="Where the vendor processes the studies (country, data centre)."
    )
    processing_in_eea: bool | None = Field(
        default=None, description="Whether all processing stays inside the European Economic Area."
    )
    vendor_retention_days: int | None = Field(
        default=None, ge=0, description="Days the vendor keeps inputs and results after a job ends."
    )
    outputs: list[OutputDeclaration] = Field(
        default_factory=list, description="What the product returns, and in which standard."
    )
    turnaround_sla_seconds: float | None = Field(
        default=None, gt=0, description="Turnaround the vendor commits to (95th percentile)."
    )
    pricing: Pricing | None = Field(default=None, description="The pricing model.")
    post_market_surveillance: str | None = Field(
        default=None,
        description="The post-market surveillance plan: what is monitored, how incidents "
        "are reported (MDR art. 83–87).",
    )
    version_policy: VersionPolicy | None = Field(
        default=None, description="How version changes are announced."
    )
    support_contact: str | None = Field(
        default=None, description="Who hospitals call about the product (e-mail or phone)."
    )
    conformance: ConformanceAttachment | None = Field(
        default=None, description="The conformance kit's report for this version."
    )

    @classmethod
    def from_manifest(cls, manifest: ProductManifest) -> Dossier:
        """A draft with the answers the manifest already gives (so they agree by construction)."""
        return cls(
            product_id=manifest.id,
            vendor=manifest.vendor,
            version=manifest.version,
            intended_use=manifest.intended_use or None,
            data_needed=list(manifest.data_needed),
            outputs=[],
            turnaround_sla_seconds=manifest.turnaround_sla_seconds,
        )


#: The `gap(field, problem)` callback each group of checks reports through.
_GapSink = Callable[[str, str], None]


class Gap(BaseModel):
    """One thing standing between a dossier and its submission."""

    field: str
    question: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


class DossierIncomplete(ValueError):
    """The dossier cannot be submitted or admitted; `gaps` says why, field by field."""

    def __init__(self, product_id: str, gaps: list[Gap]) -> None:
        listed = "; ".join(str(g) for g in gaps)
        super().__init__(f"rule 'dossier-complete': product {product_id!r}: {listed}")
        self.gaps = gaps


_TEXT_ANSWERS = (
    "intended_use",
    "target_population",
    "processing_location",
    "post_market_surveillance",
    "support_contact",
)
_OTHER_ANSWERS = (
    "mdr_class",
    "evidence_level",
    "dpia",
    "processing_in_eea",
    "vendor_retention_days",
    "turnaround_sla_seconds",
    "pricing",
    "version_policy",
)


def _question(name: str) -> str:
    return Dossier.model_fields[name].description or name


def dossier_gaps(
    dossier: Dossier, manifest: ProductManifest | None = None, *, today: date | None = None
) -> list[Gap]:
    """What is missing, expired or inconsistent, in field order; empty when ready to submit.

    With `manifest`, answers the manifest also gives (version, intended use, data needed,
    outputs, turnaround) must agree with it, since the exchange acts on the manifest.
    """
    today = today or date.today()
    gaps: list[Gap] = []

    def gap(name: str, problem: str) -> None:
        gaps.append(Gap(field=name, question=_question(name), problem=problem))

    for name in _TEXT_ANSWERS:
        value = getattr(dossier, name)
        if value is None or not str(value).strip():
            gap(name, "not answered")
    for name in _OTHER_ANSWERS:
        if getattr(dossier, name) is None:
            gap(name, "not answered")
    _regulatory_gaps(dossier, today, gap)
    if not dossier.validation_studies:
        gap("validation_studies", "no validation study given")
    _security_gaps(dossier, today, gap)
    _data_gaps(dossier, gap)
    if not dossier.outputs:
        gap("outputs", "no output declared")
    _conformance_gaps(dossier, gap)
    if manifest is not None:
        _manifest_gaps(dossier, manifest, gap)
    order = list(Dossier.model_fields)
    return sorted(gaps, key=lambda g: order.index(g.field) if g.field in order else len(order))


def _regulatory_gaps(dossier: Dossier, today: date, gap: _GapSink) -> None:
    if dossier.mdr_class is None or dossier.mdr_class == MdrClass.I:
        return
    if dossier.notified_body is None:
        gap("notified_body", f"required for MDR class {dossier.mdr_class.value}")
    if dossier.ce_certificate is None:
        gap("ce_certificate", f"required for MDR class {dossier.mdr_class.value}")
    elif dossier.ce_certificate.valid_until < today:
        gap("ce_certificate", f"expired on {dossier.ce_certificate.valid_until.isoformat()}")


def _security_gaps(dossier: Dossier, today: date, gap: _GapSink) -> None:
    valid = [
        c
        for c in dossier.information_security
        if c.standard in ACCEPTED_SECURITY_STANDARDS and c.certificate.valid_until >= today
    ]
    if not valid:
        gap(
            "information_security",
            "no valid NEN 7510 or ISO/IEC 27001 certificate"
            + (" (only expired or other ones given)" if dossier.information_security else ""),
        )


def _data_gaps(dossier: Dossier, gap: _GapSink) -> None:
    if dossier.data_needed is None:
        gap("data_needed", "not answered (an empty list means the Basic Profile suffices)")
        return
    unknown = sorted(set(dossier.data_needed) - OPTION_SPECS.keys())
    if unknown:
        gap("data_needed", f"unknown Annex E option(s) {unknown}")
    unjustified = [o for o in dossier.data_needed if not dossier.data_justification.get(o, "")]
    if unjustified:
        gap("data_justification", f"no reason given for {sorted(unjustified)}")


def _conformance_gaps(dossier: Dossier, gap: _GapSink) -> None:
    report = dossier.conformance
    if report is None:
        gap("conformance", "no conformance report attached (run `aifi conformance`)")
    elif report.product_version != dossier.version:
        gap(
            "conformance",
            f"the report is for version {report.product_version!r}, not {dossier.version!r}",
        )
    elif not report.passed:
        gap("conformance", "the attached conformance report did not pass")


def _manifest_gaps(dossier: Dossier, manifest: ProductManifest, gap: _GapSink) -> None:
    if dossier.product_id != manifest.id:
        gap("product_id", f"the manifest is for product {manifest.id!r}")
    if dossier.version != manifest.version:
        gap("version", f"the manifest declares version {manifest.version!r}")
    if not manifest.intended_use.strip():
        gap("intended_use", "the manifest's intended_use is empty")
    if dossier.data_needed is not None and set(dossier.data_needed) != set(manifest.data_needed):
        gap(
            "data_needed",
            f"differs from the manifest's {sorted(manifest.data_needed)}: the gateway applies "
            "the manifest",
        )
    declared = {o.kind for o in dossier.outputs}
    listed = {o.kind for o in manifest.outputs}
    if dossier.outputs and declared != listed:
        gap("outputs", f"kinds {sorted(declared)} differ from the manifest's {sorted(listed)}")
    sla = dossier.turnaround_sla_seconds
    if sla is not None and sla != manifest.turnaround_sla_seconds:
        gap(
            "turnaround_sla_seconds",
            f"{sla:g} s differs from the manifest's {manifest.turnaround_sla_seconds:g} s",
        )


def require_complete(
    dossier: Dossier, manifest: ProductManifest | None = None, *, today: date | None = None
) -> None:
    """Raise :class:`DossierIncomplete` listing every gap (call before submit and admit)."""
    gaps = dossier_gaps(dossier, manifest, today=today)
    if gaps:
        raise DossierIncomplete(dossier.product_id, gaps)
