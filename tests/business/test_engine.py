"""The engine against the tiny case worked out by hand (figures in conftest.TINY_CASE)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from aifi.business.engine import evaluate, single_application_variant
from aifi.business.loading import parse_case
from aifi.business.metrics import (
    break_even_exams_per_hospital,
    hospital_metrics,
    scenario_metrics,
    size_class_metrics,
)
from aifi.business.values import InputValues

A3 = 1 / 1.1 + 1 / 1.21 + 1 / 1.331  # annuity, 3 years at 10 %
BENEFIT_PER_EXAM = 60 / 3600 * 180 + 0.001 * 500  # 3.00 time + 0.50 bed-days
EXAMS = 4_000 + 12_000  # h1 + h2: radiographs × 0.5 eligible × 0.8 uptake


def metrics_of(data: dict[str, Any], scenario: str) -> Any:
    case = parse_case(data)
    return scenario_metrics(evaluate(case, case.scenario(scenario)))


def test_volumes_are_exams_times_eligible_share_times_uptake(tiny: dict[str, Any]) -> None:
    case = parse_case(tiny)
    outcome = evaluate(case, case.base)
    assert outcome.volumes[("h1", "xr")].yearly[0] == pytest.approx(4_000)
    assert outcome.volumes[("h2", "xr")].yearly[0] == pytest.approx(12_000)
    assert outcome.volumes[("h1", "xr")].origin == "assumed"
    assert outcome.volumes[("h1", "xr")].inputs == (
        "hospitals[h1].exams_per_year.radiograph",
        "applications[xr].eligible_share",
        "applications[xr].uptake",
    )


def test_national_central_joint_by_hand(tiny: dict[str, Any]) -> None:
    one_off = (
        0.2 * 100_000  # platform build, share 2 of 10 connected hospitals
        + 2 * 5_000  # connections
        + 3_000 + 2_500  # central tender and validation
        + 2 * 2_000 * (1 - 0.5)  # integration in each hospital, halved by the platform
        + 2 * 500  # training
    )  # fmt: skip
    yearly_costs = (
        0.2 * 20_000  # platform operation share
        + 2 * 1_000  # per connected hospital
        + 600 + 2 * 100  # central and hospital governance
        + EXAMS * 0.80  # pooled 16,000 studies reach the 0.80 tier
    )  # fmt: skip
    yearly_benefits = EXAMS * BENEFIT_PER_EXAM
    net = yearly_benefits - yearly_costs
    m = metrics_of(tiny, "national-central-joint")
    assert m.one_off_costs == pytest.approx(one_off)  # 38,500
    assert m.yearly_costs == pytest.approx(yearly_costs)  # 19,600
    assert m.yearly_benefits == pytest.approx(yearly_benefits)  # 56,000
    assert m.cash_flows == pytest.approx([-one_off, net, net, net])
    assert m.npv == pytest.approx(-one_off + net * A3)  # 52,021.41
    assert m.npv == pytest.approx(52_021.41, abs=0.01)
    assert m.pv_costs == pytest.approx(one_off + yearly_costs * A3)
    assert m.roi == pytest.approx(m.npv / m.pv_costs)
    # Cumulative discounted: -38,500; -5,409 after year 1; +24,673 after year 2.
    assert m.payback_year == 2
    assert m.cost_per_exam == pytest.approx(m.pv_costs / (EXAMS * A3))


def test_status_quo_by_hand_prices_each_hospital_at_its_own_tier(tiny: dict[str, Any]) -> None:
    one_off = 2 * (1_000 + 4_000 + 2_000 + 500)  # local tender, integration, validation, training
    licences = 4_000 * 1.00 + 12_000 * 0.80  # h1 below the 10,000 tier, h2 above it
    yearly_costs = 2 * 300 + licences
    m = metrics_of(tiny, "direct-local-alone")
    assert m.one_off_costs == pytest.approx(one_off)
    assert m.yearly_costs == pytest.approx(yearly_costs)
    assert m.npv == pytest.approx(-one_off + (EXAMS * BENEFIT_PER_EXAM - yearly_costs) * A3)


def test_commercial_platform_by_hand(tiny: dict[str, Any]) -> None:
    one_off = 2 * 2_000 + 3_000 + 2_500 + 2 * 2_000 + 2 * 500  # no integration saving
    yearly_costs = 2 * 3_000 + EXAMS * 0.1 + 600 + 2 * 100 + EXAMS * 0.80
    m = metrics_of(tiny, "commercial-central-joint")
    assert m.one_off_costs == pytest.approx(one_off)
    assert m.yearly_costs == pytest.approx(yearly_costs)


def test_per_year_licence_charges_each_hospital_at_the_pool_tier(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["licence"] = {
        "model": "per_year",
        "tiers": [
            {"from_volume": _studies(0), "price": _price(1_000, "EUR/hospital/year")},
            {"from_volume": _studies(10_000), "price": _price(800, "EUR/hospital/year")},
        ],
    }
    case = parse_case(tiny)
    joint = _licence_costs(evaluate(case, case.scenario("national-central-joint")))
    alone = _licence_costs(evaluate(case, case.scenario("direct-local-alone")))
    assert joint == {"h1": pytest.approx(800), "h2": pytest.approx(800)}
    assert alone == {"h1": pytest.approx(1_000), "h2": pytest.approx(800)}


def test_enterprise_licence_is_one_central_price_for_a_joint_pool(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["licence"] = {
        "model": "enterprise",
        "tiers": [
            {"from_volume": _studies(0), "price": _price(5_000, "EUR/year")},
            {"from_volume": _studies(10_000), "price": _price(7_000, "EUR/year")},
        ],
    }
    case = parse_case(tiny)
    joint = _licence_costs(evaluate(case, case.scenario("national-central-joint")))
    alone = _licence_costs(evaluate(case, case.scenario("direct-local-alone")))
    assert joint == {None: pytest.approx(7_000)}
    assert alone == {"h1": pytest.approx(5_000), "h2": pytest.approx(7_000)}


def test_graduated_per_study_tiers(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["licence"]["tier_mode"] = "graduated"
    case = parse_case(tiny)
    costs = _licence_costs(evaluate(case, case.scenario("national-central-joint")))
    # Pool of 16,000: 10,000 × 1.00 + 6,000 × 0.80 = 14,800, shared by volume (1:3).
    assert sum(costs.values()) == pytest.approx(14_800)
    assert costs["h2"] == pytest.approx(3 * costs["h1"])


def test_every_line_names_inputs_that_exist(tiny: dict[str, Any]) -> None:
    from aifi.business.model import iter_quantities

    case = parse_case(tiny)
    known = {path for path, _ in iter_quantities(case)}
    for scenario in case.scenarios:
        for line in evaluate(case, scenario).lines:
            assert line.inputs, line.label
            assert set(line.inputs) <= known, line.label


def test_hospital_shares_add_up_to_the_scenario(tiny: dict[str, Any]) -> None:
    case = parse_case(tiny)
    for scenario in case.scenarios:
        outcome = evaluate(case, scenario)
        total = scenario_metrics(outcome)
        hospitals = hospital_metrics(outcome)
        assert sum(h.pv_costs for h in hospitals) == pytest.approx(total.pv_costs)
        assert sum(h.pv_benefits for h in hospitals) == pytest.approx(total.pv_benefits)
        assert sum(h.one_off_costs for h in hospitals) == pytest.approx(total.one_off_costs)


def test_central_costs_are_shared_by_volume_or_equally(tiny: dict[str, Any]) -> None:
    case = parse_case(tiny)
    by_volume = hospital_metrics(evaluate(case, case.base))
    # Central one-off items: platform build share 20,000 + tender 3,000 + validation 2,500.
    central = 20_000 + 3_000 + 2_500
    own = 5_000 + 1_000 + 500  # connection, halved integration, training
    assert by_volume[0].one_off_costs == pytest.approx(own + central * 4_000 / EXAMS)
    tiny["scenarios"][0]["central_cost_sharing"] = "equal"
    case = parse_case(tiny)
    equally = hospital_metrics(evaluate(case, case.base))
    assert equally[0].one_off_costs == pytest.approx(own + central / 2)


def test_cost_per_hospital_by_size_groups_hospitals(tiny: dict[str, Any]) -> None:
    tiny["hospitals"][1]["size_class"] = "small"
    case = parse_case(tiny)
    hospitals = hospital_metrics(evaluate(case, case.base))
    (small,) = size_class_metrics(hospitals)
    assert small.hospitals == 2
    assert small.pv_costs == pytest.approx((hospitals[0].pv_costs + hospitals[1].pv_costs) / 2)


def test_break_even_volume_by_hand(tiny: dict[str, Any]) -> None:
    case = parse_case(tiny)
    outcome = evaluate(case, case.base)
    pv_fixed = 38_500 + (19_600 - EXAMS * 0.80) * A3  # everything but the per-study licence
    margin = BENEFIT_PER_EXAM - 0.80
    expected = pv_fixed / (A3 * margin) / 2
    assert break_even_exams_per_hospital(outcome) == pytest.approx(expected)


def test_scaling_volumes_to_break_even_gives_zero_npv(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["licence"]["tiers"].pop()  # one flat price: tiers cannot jump
    case = parse_case(tiny)
    outcome = evaluate(case, case.base)
    break_even = break_even_exams_per_hospital(outcome)
    assert break_even is not None
    scale = break_even * 2 / EXAMS
    at_break_even = evaluate(case, case.base, volume_scale=scale)
    assert at_break_even.npv()[0] == pytest.approx(0.0, abs=1e-6)


def test_no_break_even_when_each_exam_loses_money(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["seconds_saved_per_exam"]["value"] = 0
    tiny["applications"][0]["downstream"] = []
    case = parse_case(tiny)
    assert break_even_exams_per_hospital(evaluate(case, case.base)) is None


def test_volume_scale_is_vectorised(tiny: dict[str, Any]) -> None:
    case = parse_case(tiny)
    scales = np.array([0.5, 1.0, 2.0])
    outcome = evaluate(case, case.base, InputValues(n=3), volume_scale=scales)
    assert outcome.exams_per_year() == pytest.approx(EXAMS * scales)
    assert outcome.npv()[1] == pytest.approx(evaluate(case, case.base).npv()[0])


def test_single_application_variant_keeps_the_scenario_but_one_application(
    tiny: dict[str, Any],
) -> None:
    case = parse_case(tiny)
    app = case.applications[0]
    variant = single_application_variant(case.base, app)
    assert variant.applications == ["xr"]
    assert variant.platform == case.base.platform
    assert evaluate(case, variant).npv()[0] == pytest.approx(evaluate(case, case.base).npv()[0])


def _studies(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "studies/year", "source": "Assumption: test tier"}


def _price(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "source": "Assumption: test price"}


def _licence_costs(outcome: Any) -> dict[str | None, float]:
    costs: dict[str | None, float] = {}
    for line in outcome.lines:
        if line.category == "licence":
            costs[line.hospital] = costs.get(line.hospital, 0.0) + float(line.amount[0])
    return costs
