"""The national demo (what `make demo` runs) brings every study back, and says so in figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from aifi.demo import DEMO_PRODUCTS, HOSPITALS, run_demo
from support.peers import free_port


@pytest.mark.peer
def test_the_demo_brings_everything_back(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    console = Console(file=(tmp_path / "out.txt").open("w"), width=160)
    code = run_demo(
        studies=1,
        workdir=tmp_path / "work",
        summary=summary,
        keep_running=False,
        port=free_port(),
        console=console,
    )
    figures = json.loads(summary.read_text())
    assert code == 0, figures
    assert figures["studies_sent"] == len(HOSPITALS)
    assert figures["lost"] == 0 and figures["jobs_failed"] == 0
    assert figures["jobs_completed"] == figures["jobs_total"] > 0
    assert figures["results_delivered"] >= figures["jobs_completed"]
    assert figures["e2e_seconds"]["p50"] > 0
    assert set(figures["products"]) == set(DEMO_PRODUCTS)
    for product in figures["products"].values():
        if product["studies"]:
            assert all(t["met"] for t in product["accuracy"]["targets"].values()), product
    # Every hospital's PACS holds its results, under the hospital's own folder.
    for hospital in HOSPITALS:
        assert any((tmp_path / "work" / "pacs" / hospital.id).rglob("*.dcm"))
    text = (tmp_path / "out.txt").read_text()
    assert "per hospital and product" in text and "not for clinical use" in text
