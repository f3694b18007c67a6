"""docs/conformance.md says what the gateway does as it does it: its tables are read here and
compared with the code that decides (a transfer syntax added to the SCP, a result class the
exchange starts to accept, a new failure reason) so that the statement cannot fall behind."""

from __future__ import annotations

import re
from pathlib import Path

from pynetdicom import AllStoragePresentationContexts

from aifi.gateway import receipt
from aifi.gateway.dimse import TRANSFER_SYNTAXES, storage_scp_ae
from aifi.results.kinds import ACCEPTED_SOP_CLASSES

STATEMENT = Path(__file__).parents[2] / "docs" / "conformance.md"


def _section(title: str) -> str:
    text = STATEMENT.read_text()
    start = text.index(f"### {title}")
    end = text.find("\n### ", start + 1)
    return text[start : end if end > 0 else None]


def _uids(section: str) -> list[str]:
    return re.findall(r"^\| [^|]+ \| `([0-9.]+)` \|$", section, re.M)


def test_the_scp_transfer_syntaxes_are_those_it_accepts() -> None:
    listed = _uids(_section("2.1 Storage SCP"))
    assert sorted(listed) == sorted(TRANSFER_SYNTAXES)


def test_the_scp_takes_the_storage_classes_and_associations_it_says() -> None:
    section = _section("2.1 Storage SCP")
    [count] = re.findall(r"\*\*(\d+)\*\*", section)
    assert int(count) == len(AllStoragePresentationContexts)
    ae = storage_scp_ae("AIFI_GW")
    assert len(ae.supported_contexts) == len(AllStoragePresentationContexts) + 1  # Verification
    text = STATEMENT.read_text()
    assert f"Up to **{ae.maximum_associations}** associations" in text
    assert f"ACSE {ae.acse_timeout:.0f} s, DIMSE {ae.dimse_timeout:.0f} s" in text
    assert f"network {ae.network_timeout:.0f} s" in text
    assert ae.maximum_pdu_size == 0 and "no limit (0)" in text


def test_the_result_classes_are_those_the_exchange_accepts() -> None:
    listed = _uids(_section("2.2 Storage SCU (results to the PACS)"))
    assert sorted(listed) == sorted(ACCEPTED_SOP_CLASSES)


def test_the_statuses_and_failure_reasons_are_those_the_gateway_answers() -> None:
    statuses = set(re.findall(r"^\| `([0-9A-F]{4})` \|", _section("2.1 Storage SCP"), re.M))
    reasons = set(
        re.findall(r"^\| `([0-9A-F]{4})` \|", _section("2.3 STOW-RS origin server"), re.M)
    )
    answered = {receipt.SUCCESS, receipt.OUT_OF_RESOURCES, receipt.CANNOT_UNDERSTAND}
    assert statuses == {f"{status:04X}" for status in answered}
    refused = {receipt.OUT_OF_RESOURCES, receipt.CANNOT_UNDERSTAND, receipt.STUDY_MISMATCH}
    assert reasons == {f"{reason:04X}" for reason in refused}
    assert set(receipt.REASONS) == refused  # each has its metrics label too
