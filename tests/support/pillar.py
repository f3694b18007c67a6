"""The clinical pillar for tests: an exchange with it mounted, complete dossiers, kit reports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.products import tissue_volume
from aifi.web import mount

OPERATOR_KEY = "aifi_web-test-operator-key-0123456789abcd"


@dataclass
class Pillar:
    exchange: ExchangeThread
    keys: dict[str, str]

    def api(self, org: str) -> httpx.Client:
        key = OPERATOR_KEY if org == "operator" else self.keys[org]
        return httpx.Client(
            base_url=self.exchange.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )


def complete_dossier(manifest: dict[str, Any]) -> dict[str, Any]:
    """Every admission question answered, consistent with `manifest`."""
    valid = str(date(date.today().year + 3, 12, 31))
    return {
        "product_id": manifest["id"],
        "vendor": manifest["vendor"],
        "version": manifest["version"],
        "intended_use": manifest["intended_use"],
        "target_population": "Adults referred for CT; platform testing only.",
        "mdr_class": "IIa",
        "notified_body": {"name": "Example Notified Body", "number": "0123"},
        "ce_certificate": {"number": "CE-1", "issued_by": "Example NB", "valid_until": valid},
        "evidence_level": 2,
        "validation_studies": [
            {
                "title": "Phantom validation",
                "reference": "doi:10.0000/example",
                "design": "retrospective",
                "centres": 1,
                "external": False,
                "population": "synthetic phantoms",
                "cases": 16,
                "results": "volumes within 1 %",
            }
        ],
        "dpia": {"completed_on": "2026-01-01", "reference": "https://example.org/dpia"},
        "information_security": [
            {
                "standard": "NEN 7510",
                "certificate": {"number": "N-1", "issued_by": "Cert body", "valid_until": valid},
            }
        ],
        "data_needed": manifest["data_needed"],
        "data_justification": {},
        "processing_location": "Netherlands",
        "processing_in_eea": True,
        "vendor_retention_days": 0,
        "outputs": [
            {"kind": o["kind"], "standard": "DICOM SR TID 1500 (IHE AIR)"}
            for o in manifest["outputs"]
        ],
        "turnaround_sla_seconds": manifest["turnaround_sla_seconds"],
        "pricing": {"model": "per-study", "description": "EUR 1 per study"},
        "post_market_surveillance": "Monthly drift review.",
        "version_policy": {"notice_days": 30, "channel": "e-mail"},
        "support_contact": "support@example.org",
    }


def kit_report(workdir: Path) -> dict[str, Any]:
    """The conformance kit's real report on the tissue-volume reference product."""
    from aifi.governance.conformance import KitOptions, run_conformance

    report = run_conformance(
        tissue_manifest(),
        lambda _environment: tissue_volume.run,
        workdir=workdir,
        options=KitOptions(size="small", per_kind=1, timeout_seconds=120),
    )
    assert report.passed, [c for c in report.checks if not c.passed]
    return report.model_dump(mode="json")


def tissue_manifest() -> dict[str, Any]:
    return tissue_volume.manifest("aifi-reference")


@contextmanager
def pillar_exchange(tmp_path: Path) -> Iterator[Pillar]:
    settings = ExchangeSettings(
        data_dir=tmp_path / "exchange", operator_key=OPERATOR_KEY, admit_on_register=False
    )
    with ExchangeThread(settings, extensions=[mount]) as exchange:
        operator = httpx.Client(
            base_url=exchange.url, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}, timeout=60
        )
        keys = {}
        for org, kind in (
            ("hospital-a", "hospital"), ("hospital-b", "hospital"),
            ("aifi-reference", "vendor"), ("other-vendor", "vendor"),
        ):  # fmt: skip
            response = operator.post(
                "/organisations", json={"id": org, "name": org.title(), "kind": kind}
            )
            keys[org] = response.json()["api_key"]
        operator.close()
        yield Pillar(exchange, keys)
