"""The shipped Netherlands example: complete, sourced, and computable."""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import pytest
import yaml

from aifi.business.analysis import analyse
from aifi.business.loading import load_case
from aifi.business.model import BusinessCase, iter_quantities

EXAMPLE = "netherlands-pilot"


@pytest.fixture(scope="module")
def case() -> BusinessCase:
    return load_case(EXAMPLE)


def raw_example() -> Any:
    text = (resources.files("aifi.business") / "examples" / f"{EXAMPLE}.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def numbers_without_source(node: Any, path: str = "") -> list[str]:
    """Paths of numbers in the raw YAML that are not the `value` of a {value, unit, source}."""
    missing = []
    if isinstance(node, dict):
        if "value" in node:
            if not (str(node.get("unit", "")).strip() and str(node.get("source", "")).strip()):
                missing.append(path)
            return missing
        for key, child in node.items():
            if key in {"distribution", "price_year"}:
                continue
            missing += numbers_without_source(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            missing += numbers_without_source(child, f"{path}[{index}]")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        missing.append(path)
    return missing


def test_every_number_in_the_example_names_its_unit_and_source() -> None:
    assert numbers_without_source(raw_example()) == []


def test_every_input_has_a_real_source(case: BusinessCase) -> None:
    quantities = list(iter_quantities(case))
    assert len(quantities) > 50
    for path, quantity in quantities:
        assert len(quantity.source.strip()) >= 20, path


def test_published_defaults_cite_their_source(case: BusinessCase) -> None:
    assert case.radiologist_cost_per_hour.value == 209
    assert "CGR" in case.radiologist_cost_per_hour.source
    for hospital in case.hospitals:
        for modality, exams in hospital.exams_per_year.items():
            assert "RIVM" in exams.source, (hospital.id, modality)
            assert "69 hospital organisations" in exams.source
    fracture = case.application("fracture")
    assert "LUMC" in fracture.licence.tiers[0].price.source
    assert "Guermazi" in fracture.seconds_saved_per_exam.source
    assert "Insights Imaging 2021" in case.application("bone-age").licence.tiers[0].price.source
    assert "34 %" in case.procurement.central.per_hospital_per_application.integration.source  # type: ignore[union-attr]


def test_volumes_follow_the_national_figures_they_cite(case: BusinessCase) -> None:
    # RIVM / 69 organisations, times the size factor the source names, rounded to hundreds.
    factors = {"umc": 1.8, "teaching-large": 1.5, "teaching": 1.2, "general": 0.8, "regional": 0.5}
    national = {"radiograph": 8.5e6, "ct": 2.0e6, "mri": 930_000}
    for hospital in case.hospitals:
        for modality, total in national.items():
            expected = total / 69 * factors[hospital.id]
            assert hospital.exams_per_year[modality].value == pytest.approx(expected, abs=50)


def test_five_hospitals_of_different_sizes_and_three_applications(case: BusinessCase) -> None:
    assert len(case.hospitals) == 5
    assert len({h.size_class for h in case.hospitals}) >= 4
    assert len({h.exams_per_year["ct"].value for h in case.hospitals}) == 5
    assert [a.modality for a in case.applications] == ["radiograph", "radiograph", "ct"]
    assert {a.licence.model for a in case.applications} == {"per_study", "per_year", "enterprise"}
    assert all(h.exchange_id for h in case.hospitals)
    assert all(a.exchange_id for a in case.applications)


def test_the_scenarios_answer_the_four_questions(case: BusinessCase) -> None:
    options = {(s.platform, s.procurement, s.pooling) for s in case.scenarios}
    assert {s.procurement for s in case.scenarios} == {"central", "local"}
    assert {"national", "commercial"} <= {s.platform for s in case.scenarios}
    assert {s.pooling for s in case.scenarios} == {"joint", "alone"}
    assert ("national", "central", "joint") in options
    for comparison in case.comparisons:
        first, second = (case.scenario(s) for s in comparison.scenarios)
        differences = [
            field
            for field in ("platform", "procurement", "pooling")
            if getattr(first, field) != getattr(second, field)
        ]
        assert differences, comparison.name


def test_the_example_computes(case: BusinessCase) -> None:
    analysis = analyse(case, origin=EXAMPLE, draws=2_000, seed=1)
    assert len(analysis.scenarios) == len(case.scenarios)
    assert len(analysis.single_application) == 3
    for result in analysis.scenarios + analysis.single_application:
        assert math.isfinite(result.metrics.npv)
        assert 0.0 <= result.monte_carlo.probability_positive <= 1.0
        assert result.tornado.bars
    # Pooled tiers can only lower licence costs against each hospital buying alone.
    joint = analysis.result("national-central-joint").metrics
    alone = analysis.result("national-central-alone").metrics
    assert joint.pv_costs_by_category["licence"] < alone.pv_costs_by_category["licence"]
