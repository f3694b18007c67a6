"""Fixtures for governance tests: a product manifest and a dossier that answers every question."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from aifi.exchange.schemas import ProductManifest
from aifi.governance.dossier import (
    Certificate,
    ConformanceAttachment,
    Dossier,
    Dpia,
    EvidenceLevel,
    MdrClass,
    NotifiedBody,
    OutputDeclaration,
    Pricing,
    PricingModel,
    SecurityCertification,
    SecurityStandard,
    StudyDesign,
    ValidationStudy,
    VersionPolicy,
)

TODAY = date(2026, 3, 1)


@pytest.fixture
def today() -> date:
    """The date completeness is judged on (certificates in the fixtures are valid then)."""
    return TODAY


@pytest.fixture
def manifest() -> ProductManifest:
    return ProductManifest.model_validate(
        dict(
            id="bone-age",
            vendor="acme-ai",
            name="Acme bone age",
            version="2.1.0",
            clinical_area="quantification",
            intended_use="Estimate skeletal age from a left-hand radiograph of children aged 3–17.",
            accepts={"modalities": ["DX"], "body_parts": ["HAND"]},
            data_needed=["retain-patient-characteristics"],
            outputs=[
                {"kind": "sr-tid1500", "description": "bone age in years"},
                {"kind": "summary-json"},
            ],
            turnaround_sla_seconds=120,
        )
    )


@pytest.fixture
def dossier(manifest: ProductManifest) -> Dossier:
    """Every question answered, consistent with `manifest`, valid on TODAY."""
    valid = date(2028, 12, 31)
    return Dossier(
        product_id=manifest.id,
        vendor=manifest.vendor,
        version=manifest.version,
        intended_use=manifest.intended_use,
        target_population="Children 3–17 years; not for syndromic growth disorders.",
        mdr_class=MdrClass.IIa,
        notified_body=NotifiedBody(name="Example Notified Body", number="0123"),
        ce_certificate=Certificate(number="CE-123", issued_by="Example NB", valid_until=valid),
        evidence_level=EvidenceLevel.diagnostic_accuracy,
        validation_studies=[
            ValidationStudy(
                title="External validation of automated bone age",
                reference="doi:10.0000/example",
                design=StudyDesign.retrospective,
                centres=3,
                external=True,
                population="1,200 children from three Dutch hospitals",
                cases=1200,
                results="mean absolute difference 0.4 years",
            )
        ],
        dpia=Dpia(completed_on=date(2025, 6, 1), reference="https://acme.example/dpia"),
        information_security=[
            SecurityCertification(
                standard=SecurityStandard.nen_7510,
                certificate=Certificate(number="NEN-9", issued_by="Cert body", valid_until=valid),
            )
        ],
        data_needed=["retain-patient-characteristics"],
        data_justification={
            "retain-patient-characteristics": "bone age standards differ by sex",
        },
        processing_location="Netherlands (Amsterdam data centre)",
        processing_in_eea=True,
        vendor_retention_days=0,
        outputs=[
            OutputDeclaration(kind="sr-tid1500", standard="DICOM SR TID 1500 (IHE AIR)"),
            OutputDeclaration(kind="summary-json", standard="AIFI ResultSummary v1"),
        ],
        turnaround_sla_seconds=120,
        pricing=Pricing(model=PricingModel.per_study, description="EUR 4 per study"),
        post_market_surveillance="Monthly drift review; incidents reported under MDR art. 87.",
        version_policy=VersionPolicy(notice_days=30, channel="e-mail to each hospital"),
        support_contact="support@acme.example",
        conformance=ConformanceAttachment(
            product_version=manifest.version,
            passed=True,
            generated_at=datetime(2026, 2, 1, tzinfo=UTC),
            filename="admission-report.html",
            sha256="0" * 64,
        ),
    )
