"""Dossier completeness: what is missing, expired or inconsistent with the manifest."""

from __future__ import annotations

from datetime import date

import pytest

from aifi.exchange.schemas import ProductManifest
from aifi.governance.dossier import (
    Certificate,
    Dossier,
    DossierIncomplete,
    MdrClass,
    SecurityCertification,
    SecurityStandard,
    dossier_gaps,
    require_complete,
)


def fields(gaps: list) -> list[str]:
    return [g.field for g in gaps]


def test_a_fully_answered_dossier_has_no_gaps(
    dossier: Dossier, manifest: ProductManifest, today: date
) -> None:
    assert dossier_gaps(dossier, manifest, today=today) == []
    require_complete(dossier, manifest, today=today)


def test_a_fresh_draft_lists_every_unanswered_question(
    manifest: ProductManifest, today: date
) -> None:
    draft = Dossier(product_id="bone-age", vendor="acme-ai", version="2.1.0")
    gaps = dossier_gaps(draft, today=today)
    assert fields(gaps) == [
        "intended_use",
        "target_population",
        "mdr_class",
        "evidence_level",
        "validation_studies",
        "dpia",
        "information_security",
        "data_needed",
        "processing_location",
        "processing_in_eea",
        "vendor_retention_days",
        "outputs",
        "turnaround_sla_seconds",
        "pricing",
        "post_market_surveillance",
        "version_policy",
        "support_contact",
        "conformance",
    ]
    # Each gap carries the question as the model describes it, for the vendor's form.
    assert gaps[0].question == Dossier.model_fields["intended_use"].description


def test_from_manifest_answers_what_the_manifest_says(
    manifest: ProductManifest, today: date
) -> None:
    draft = Dossier.from_manifest(manifest)
    missing = fields(dossier_gaps(draft, manifest, today=today))
    assert "intended_use" not in missing and "turnaround_sla_seconds" not in missing
    assert "data_needed" not in missing
    assert "data_justification" in missing  # the reason is the vendor's to give


def test_class_iia_needs_a_notified_body_and_a_valid_certificate(
    dossier: Dossier, today: date
) -> None:
    unsigned = dossier.model_copy(update={"notified_body": None, "ce_certificate": None})
    assert fields(dossier_gaps(unsigned, today=today)) == ["notified_body", "ce_certificate"]
    class_one = unsigned.model_copy(update={"mdr_class": MdrClass.I})
    assert dossier_gaps(class_one, today=today) == []
    expired = dossier.model_copy(
        update={
            "ce_certificate": Certificate(
                number="CE-1", issued_by="NB", valid_until=date(2026, 2, 28)
            )
        }
    )
    [gap] = dossier_gaps(expired, today=today)
    assert gap.field == "ce_certificate" and gap.problem == "expired on 2026-02-28"


def test_information_security_needs_a_valid_nen_7510_or_iso_27001(
    dossier: Dossier, today: date
) -> None:
    other = SecurityCertification(
        standard=SecurityStandard.other,
        certificate=Certificate(number="X", issued_by="Y", valid_until=date(2030, 1, 1)),
    )
    only_other = dossier.model_copy(update={"information_security": [other]})
    [gap] = dossier_gaps(only_other, today=today)
    assert gap.field == "information_security" and "only expired or other" in gap.problem
    iso = SecurityCertification(
        standard=SecurityStandard.iso_27001,
        certificate=Certificate(number="ISO", issued_by="Y", valid_until=date(2030, 1, 1)),
    )
    assert (
        dossier_gaps(dossier.model_copy(update={"information_security": [other, iso]}), today=today)
        == []
    )


def test_every_option_needed_has_a_reason_and_exists(dossier: Dossier, today: date) -> None:
    unexplained = dossier.model_copy(update={"data_justification": {}})
    [gap] = dossier_gaps(unexplained, today=today)
    assert gap.field == "data_justification"
    assert "retain-patient-characteristics" in gap.problem
    unknown = dossier.model_copy(
        update={
            "data_needed": ["retain-everything"],
            "data_justification": {"retain-everything": "x"},
        }
    )
    assert "unknown Annex E option" in dossier_gaps(unknown, today=today)[0].problem


def test_the_conformance_report_must_be_for_this_version_and_passed(
    dossier: Dossier, today: date
) -> None:
    assert dossier.conformance is not None
    old = dossier.model_copy(
        update={"conformance": dossier.conformance.model_copy(update={"product_version": "2.0"})}
    )
    assert "for version '2.0', not '2.1.0'" in dossier_gaps(old, today=today)[0].problem
    failed = dossier.model_copy(
        update={"conformance": dossier.conformance.model_copy(update={"passed": False})}
    )
    assert dossier_gaps(failed, today=today)[0].problem == (
        "the attached conformance report did not pass"
    )


def test_answers_must_agree_with_the_manifest(
    dossier: Dossier, manifest: ProductManifest, today: date
) -> None:
    newer = manifest.model_copy(
        update={
            "version": "2.2.0",
            "data_needed": ["retain-patient-characteristics", "retain-long-modified-dates"],
            "turnaround_sla_seconds": 60.0,
            "outputs": manifest.outputs[:1],
        }
    )
    gaps = dossier_gaps(dossier, newer, today=today)
    assert fields(gaps) == ["version", "data_needed", "outputs", "turnaround_sla_seconds"]
    assert "the gateway applies the manifest" in gaps[1].problem


def test_require_complete_names_the_rule_product_and_fields(dossier: Dossier, today: date) -> None:
    incomplete = dossier.model_copy(update={"dpia": None, "pricing": None})
    with pytest.raises(DossierIncomplete) as caught:
        require_complete(incomplete, today=today)
    assert fields(caught.value.gaps) == ["dpia", "pricing"]
    assert str(caught.value).startswith("rule 'dossier-complete': product 'bone-age': dpia:")
