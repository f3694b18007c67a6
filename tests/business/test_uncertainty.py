"""Monte Carlo and tornado: reproducible draws, probabilities that match the algebra, ranking."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from aifi.business.engine import evaluate
from aifi.business.loading import parse_case
from aifi.business.uncertainty import npv_distribution, tornado
from aifi.business.values import InputValues, monte_carlo_values, tornado_values

A3 = 1 / 1.1 + 1 / 1.21 + 1 / 1.331
EXAMS = 16_000


def test_same_seed_same_draws_other_seed_other_draws(tiny: dict[str, Any]) -> None:
    tiny["radiologist_cost_per_hour"]["distribution"] = {"kind": "uniform", "low": 100, "high": 200}
    case = parse_case(tiny)
    first = monte_carlo_values(case, 1_000, seed=7)
    again = monte_carlo_values(case, 1_000, seed=7)
    other = monte_carlo_values(case, 1_000, seed=8)
    path = "radiologist_cost_per_hour"
    assert np.array_equal(first.overrides[path], again.overrides[path])
    assert not np.array_equal(first.overrides[path], other.overrides[path])


def test_draws_follow_their_distribution(tiny: dict[str, Any]) -> None:
    tiny["radiologist_cost_per_hour"]["distribution"] = {
        "kind": "triangular",
        "low": 120,
        "high": 300,
    }
    tiny["applications"][0]["uptake"]["distribution"] = {"kind": "normal", "sd": 0.5}
    case = parse_case(tiny)
    values = monte_carlo_values(case, 20_000, seed=1)
    cost = values.overrides["radiologist_cost_per_hour"]
    assert cost.min() >= 120 and cost.max() <= 300
    assert cost.mean() == pytest.approx((120 + 180 + 300) / 3, rel=0.01)
    uptake = values.overrides["applications[xr].uptake"]
    # A fraction's normal draws are clipped to [0, 1].
    assert uptake.min() >= 0.0 and uptake.max() <= 1.0
    assert (uptake == 1.0).any()


def test_probability_npv_positive_matches_the_algebra(tiny: dict[str, Any]) -> None:
    # NPV is linear in the hourly cost c: NPV(c) = -38,500 + A3 × (16,000 × (c/60 + 0.5) - 19,600).
    tiny["radiologist_cost_per_hour"]["distribution"] = {"kind": "uniform", "low": 50, "high": 250}
    case = parse_case(tiny)
    break_even_cost = ((38_500 / A3 + 19_600) / EXAMS - 0.5) * 60
    expected = (250 - break_even_cost) / 200
    summary, npv = npv_distribution(case, case.base, monte_carlo_values(case, 20_000, seed=3))
    assert 0.1 < expected < 0.9
    assert summary.probability_positive == pytest.approx(expected, abs=0.02)
    assert summary.draws == 20_000 == len(npv)
    assert summary.p5 < summary.p50 < summary.p95


def test_monte_carlo_of_10000_draws_is_one_vectorised_evaluation(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["uptake"]["distribution"] = {"kind": "uniform", "low": 0.5, "high": 1.0}
    case = parse_case(tiny)
    values = monte_carlo_values(case, 10_000, seed=0)
    outcome = evaluate(case, case.base, values)
    assert outcome.npv().shape == (10_000,)
    assert all(line.amount.shape == (10_000,) for line in outcome.lines)


def test_without_uncertainty_every_draw_is_the_base_case(tiny: dict[str, Any]) -> None:
    case = parse_case(tiny)
    summary, npv = npv_distribution(case, case.base, monte_carlo_values(case, 50, seed=0))
    assert np.allclose(npv, evaluate(case, case.base).npv()[0])
    assert summary.probability_positive == 1.0


def test_tornado_values_hold_one_input_off_base_per_draw(tiny: dict[str, Any]) -> None:
    tiny["radiologist_cost_per_hour"]["distribution"] = {"kind": "uniform", "low": 100, "high": 200}
    tiny["applications"][0]["uptake"]["distribution"] = {"kind": "uniform", "low": 0.6, "high": 1.0}
    case = parse_case(tiny)
    values, swings = tornado_values(case)
    assert [s.path for s in swings] == ["radiologist_cost_per_hour", "applications[xr].uptake"]
    cost = values.overrides["radiologist_cost_per_hour"]
    uptake = values.overrides["applications[xr].uptake"]
    assert cost.tolist() == pytest.approx([105, 195, 180, 180])  # P5 and P95 of U(100, 200)
    assert uptake.tolist() == pytest.approx([0.8, 0.8, 0.62, 0.98])


def test_tornado_ranks_the_input_that_moves_npv_most_first(tiny: dict[str, Any]) -> None:
    tiny["radiologist_cost_per_hour"]["distribution"] = {"kind": "uniform", "low": 170, "high": 190}
    tiny["applications"][0]["uptake"]["distribution"] = {"kind": "uniform", "low": 0.4, "high": 1.0}
    case = parse_case(tiny)
    result = tornado(case, case.base)
    assert [bar.path for bar in result.bars] == [
        "applications[xr].uptake",
        "radiologist_cost_per_hour",
    ]
    assert result.base_npv == pytest.approx(evaluate(case, case.base).npv()[0])
    # Each bar is the NPV of the model with just that input moved.
    cost_bar = result.bars[1]
    moved = InputValues(overrides={"radiologist_cost_per_hour": np.array([cost_bar.high_value])})
    assert cost_bar.npv_at_high == pytest.approx(evaluate(case, case.base, moved).npv()[0])
    assert cost_bar.npv_at_high > result.base_npv > cost_bar.npv_at_low
