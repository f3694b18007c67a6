"""The conformance kit's admission report: each check with its verdict and evidence, as JSON
and as a self-contained HTML page that is attached to the product's dossier."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field, computed_field

from aifi.exchange.schemas import ProductManifest
from aifi.governance.dossier import ConformanceAttachment
from aifi.governance.templating import environment


class CheckResult(BaseModel):
    """One requirement: what it asks, whether the product met it, and the evidence."""

    name: str
    question: str
    passed: bool
    details: list[str] = Field(default_factory=list)


class ResultEvidence(BaseModel):
    """One result file a completed job returned, as the kit examined it."""

    name: str
    kind: str
    media_type: str
    air_conformant: bool
    notes: list[str] = Field(default_factory=list)
    dciodvfy_errors: list[str] = Field(default_factory=list)
    dciodvfy_warnings: int = 0
    algorithm: str | None = Field(default=None, description="name version (manufacturer)")
    problems: list[str] = Field(
        default_factory=list, description="What the kit's own check of the file found."
    )


class JobEvidence(BaseModel):
    """One study the kit sent, and what became of its job."""

    job_id: str
    label: str
    role: str = Field(description="reference | corrupt | sentinel")
    study_uid: str
    state: str
    reason: str | None = None
    turnaround_seconds: float | None = None
    results: list[ResultEvidence] = Field(default_factory=list)


class ConformanceReport(BaseModel):
    """Everything the kit found about one product version."""

    product_id: str
    product_name: str
    vendor: str
    version: str
    manifest: ProductManifest
    generated_at: datetime
    aifi_version: str
    worker: str = Field(description="How the product ran: in the kit, or the vendor's own.")
    reference_set: list[str]
    checks: list[CheckResult]
    jobs: list[JobEvidence] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def check(self, name: str) -> CheckResult:
        """The check called `name` (KeyError naming the known ones when absent)."""
        for item in self.checks:
            if item.name == name:
                return item
        raise KeyError(f"no check {name!r}; checks: {[c.name for c in self.checks]}")

    def to_html(self) -> str:
        return environment().get_template("conformance_report.html").render(report=self)

    def write(self, html_path: Path, json_path: Path | None = None) -> ConformanceAttachment:
        """Write the HTML (and JSON) report; returns the attachment the dossier records."""
        html = self.to_html().encode("utf-8")
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_bytes(html)
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return self.attachment(html_path.name, html)

    def attachment(self, filename: str, html: bytes) -> ConformanceAttachment:
        return ConformanceAttachment(
            product_version=self.version,
            passed=self.passed,
            generated_at=self.generated_at,
            filename=filename,
            sha256=hashlib.sha256(html).hexdigest(),
        )
