"""The accuracy report the demo prints: its shape, and refusals of what it cannot evaluate."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifi.dicom.deid.options import OPTION_NAMES
from aifi.exchange.schemas import ProductManifest
from aifi.products import brain_volumetry, ich_triage, lung_nodules, reference_products
from aifi.products.accuracy import EVALUATED_PRODUCTS, measure_accuracy


def test_every_new_reference_product_is_registered_and_evaluated():
    products = reference_products()
    for module in (brain_volumetry, lung_nodules, ich_triage):
        assert products[module.PRODUCT_ID].handler is module.run
        manifest = ProductManifest.model_validate(products[module.PRODUCT_ID].manifest("aifi"))
        assert manifest.id == module.PRODUCT_ID
        assert set(manifest.data_needed) <= set(OPTION_NAMES)
        assert "Not for clinical use" in manifest.intended_use
    assert set(EVALUATED_PRODUCTS) == {
        brain_volumetry.PRODUCT_ID,
        lung_nodules.PRODUCT_ID,
        ich_triage.PRODUCT_ID,
    }


def test_report_has_figures_targets_and_one_case_per_study(ich_run):
    report = ich_run.report
    assert report["product_id"] == ich_triage.PRODUCT_ID
    assert len(report["cases"]) == report["studies"]
    for name, target in report["targets"].items():
        assert set(target) == {"measured", "target", "met"}, name
    assert (
        report["figures"]["classified_right"] == report["targets"]["classified_right"]["measured"]
    )


def test_a_missed_target_is_reported_as_not_met(ich_run, monkeypatch):
    """The targets are computed, not asserted: a product that answers wrong fails them."""
    from aifi.products import accuracy

    def always_negative(context):
        result = ich_triage.run(context)
        result.summary["triage"] = {"flag": "negative", "priority": None}
        return result

    evaluation = accuracy._EVALUATIONS[ich_triage.PRODUCT_ID]
    monkeypatch.setitem(
        accuracy._EVALUATIONS,
        ich_triage.PRODUCT_ID,
        accuracy._Evaluation(
            always_negative, evaluation.case, evaluation.compare, evaluation.summarise
        ),
    )
    report = measure_accuracy(ich_triage.PRODUCT_ID, 1, ich_run.workdir / "wrong", size="small")
    assert report["targets"]["classified_right"] == {"measured": 0.0, "target": 1.0, "met": False}


def test_unknown_product_and_no_studies_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="no accuracy evaluation for product 'aifi-nothing'"):
        measure_accuracy("aifi-nothing", 1, tmp_path)
    with pytest.raises(ValueError, match="studies must be at least 1"):
        measure_accuracy(ich_triage.PRODUCT_ID, 0, tmp_path)
