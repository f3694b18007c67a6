"""The record of processing follows from the manifest, the dossier and the gateway's routes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aifi.exchange.schemas import ProductManifest
from aifi.governance.dossier import Dossier
from aifi.governance.processing import (
    ExchangeProcessing,
    GatewayProcessing,
    RecordOfProcessing,
    RoutingRule,
    record_of_processing,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def gateway() -> GatewayProcessing:
    return GatewayProcessing(
        hospital_id="rivierenland",
        hospital_name="Ziekenhuis Rivierenland",
        routes=[
            RoutingRule(modalities=["DX", "CR"], body_parts=["HAND"]),
            RoutingRule.model_validate(
                {"product": "bone-age", "study_description": "BONE AGE|SKELETAL", "priority": None}
            ),
        ],
    )


@pytest.fixture
def exchange() -> ExchangeProcessing:
    return ExchangeProcessing(
        operator="AIFI national operator",
        location="Netherlands (government cloud)",
        input_retention_seconds=7 * 86400,
        result_retention_seconds=None,
        undelivered_retention_seconds=30 * 86400,
        unfinished_expiry_seconds=3 * 86400,
    )


def make(
    manifest: ProductManifest,
    dossier: Dossier,
    gateway: GatewayProcessing,
    exchange: ExchangeProcessing,
) -> RecordOfProcessing:
    return record_of_processing(manifest, dossier, gateway, exchange, now=NOW)


def test_which_data_and_why(
    manifest: ProductManifest,
    dossier: Dossier,
    gateway: GatewayProcessing,
    exchange: ExchangeProcessing,
) -> None:
    record = make(manifest, dossier, gateway, exchange)
    assert record.controller == "Ziekenhuis Rivierenland"
    assert record.purpose == manifest.intended_use
    [option] = record.options
    assert (option.name, option.code) == ("retain-patient-characteristics", "113108")
    assert option.justification == "bone age standards differ by sex"
    assert any("patient sex, age" in item for item in record.data_categories)
    assert any("sr-tid1500, summary-json" in item for item in record.data_categories)
    assert record.studies_sent == [
        "modality DX or CR, body part HAND",
        "study description matching /BONE AGE|SKELETAL/",
    ]
    assert record.open_questions == []


def test_where_and_how_long(
    manifest: ProductManifest,
    dossier: Dossier,
    gateway: GatewayProcessing,
    exchange: ExchangeProcessing,
) -> None:
    record = make(manifest, dossier, gateway, exchange)
    places = {step.party: step.location for step in record.steps}
    assert places["acme-ai"] == "Netherlands (Amsterdam data centre)"
    assert places["AIFI national operator"] == "Netherlands (government cloud)"
    assert record.outside_eea is False
    periods = {(r.place, r.data): r.period for r in record.retention}
    assert (
        periods[
            (
                "exchange (AIFI national operator)",
                "pseudonymised input studies, after the job ended",
            )
        ]
        == "7 days"
    )
    results = (
        "exchange (AIFI national operator)",
        "results, after the hospital acknowledged delivery",
    )
    assert periods[results] == "kept until deleted (no automatic purge)"
    exchange_place = "exchange (AIFI national operator)"
    never_fetched = (exchange_place, "results the hospital never fetched, after the job ended")
    assert periods[never_fetched] == "30 days"
    [unfinished] = [r for r in record.retention if "not ended" in r.data]
    assert (unfinished.place, unfinished.period) == (exchange_place, "3 days")
    assert periods[("vendor (acme-ai)", "inputs and results")] == "deleted when the job ends"
    assert any("NEN 7510 (certificate NEN-9" in m for m in record.security_measures)
    # What went where, by patient, is on record inside the hospital, not at the exchange.
    [disclosures] = [r for r in record.retention if r.place.startswith("gateway disclosure")]
    assert "by patient ID" in disclosures.data and "never purged" in disclosures.period
    assert record.vendor_dpia == "https://acme.example/dpia (completed 2025-06-01)"


def test_what_the_dossier_does_not_say_becomes_an_open_question(
    manifest: ProductManifest,
    dossier: Dossier,
    gateway: GatewayProcessing,
    exchange: ExchangeProcessing,
) -> None:
    vague = dossier.model_copy(
        update={
            "processing_location": None,
            "processing_in_eea": None,
            "vendor_retention_days": None,
            "dpia": None,
            "data_justification": {},
        }
    )
    record = make(manifest, vague, gateway, exchange)
    assert record.open_questions == [
        "why the product needs retain-patient-characteristics",
        "where the vendor processes the studies",
        "whether processing stays inside the EEA",
        "how long the vendor keeps inputs and results",
        "the vendor's DPIA",
    ]
    assert record.outside_eea is None and record.vendor_dpia is None


def test_rendered_as_markdown_and_html(
    manifest: ProductManifest,
    dossier: Dossier,
    gateway: GatewayProcessing,
    exchange: ExchangeProcessing,
) -> None:
    record = make(manifest, dossier, gateway, exchange)
    markdown = record.to_markdown()
    assert markdown.startswith("# Record of processing: Acme bone age\n")
    assert "| `retain-patient-characteristics` | 113108 |" in markdown
    assert "| vendor (acme-ai) | inputs and results | deleted when the job ends |" in markdown
    # A pipe inside a value must not split a Markdown table cell.
    piped = make(manifest, dossier, gateway.model_copy(update={"hospital_name": "A|B"}), exchange)
    assert "| A\\|B | controller |" in piped.to_markdown()
    html = record.to_html()
    assert "<h1>Record of processing: Acme bone age</h1>" in html
    assert "<code>retain-patient-characteristics</code>" in html
    escaped = record.model_copy(update={"purpose": "<script>alert(1)</script>"}).to_html()
    assert "<script>" not in escaped and "&lt;script&gt;" in escaped
