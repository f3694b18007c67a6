"""`aifi conformance` refuses what it cannot run, before starting anything (exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from aifi.governance.cli import app


def run(*args: str) -> tuple[int, str]:
    outcome = CliRunner().invoke(app, list(args))
    return outcome.exit_code, " ".join(outcome.output.split())


def test_an_unknown_product_names_the_reference_products(tmp_path: Path) -> None:
    code, output = run("no-such-product", "--report", str(tmp_path / "r.html"))
    assert code == 2
    assert "unknown product 'no-such-product'" in output and "aifi-tissue-volume" in output
    assert not (tmp_path / "r.html").exists()


def test_a_manifest_must_describe_the_product_named(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {"id": "acme-x", "vendor": "acme", "name": "X", "version": "1", "clinical_area": "q"}
        )
    )
    code, output = run("acme-y", "--manifest", str(manifest), "--report", str(tmp_path / "r.html"))
    assert code == 2 and "describes product 'acme-x', not 'acme-y'" in output
    manifest.write_text("id: [unclosed")
    code, output = run("acme-x", "--manifest", str(manifest), "--report", str(tmp_path / "r.html"))
    assert code == 2 and "not a usable product manifest" in output


def test_a_product_no_phantom_matches_cannot_be_tested(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        "id: us-thyroid\nvendor: acme\nname: Thyroid\nversion: '1'\nclinical_area: q\n"
        "accepts: {modalities: [US]}\n"
    )
    code, output = run(
        "us-thyroid", "--manifest", str(manifest), "--report", str(tmp_path / "r.html")
    )
    assert code == 2 and "no synthetic study matches what it accepts" in output
