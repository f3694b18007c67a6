"""Discounting arithmetic against cash flows worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from aifi.business import finance


def test_npv_of_a_known_cash_flow() -> None:
    # -1000 now, then 300, 400, 500 at 10 %: 300/1.1 + 400/1.21 + 500/1.331 - 1000
    expected = -1000 + 300 / 1.1 + 400 / 1.21 + 500 / 1.331
    assert finance.npv([-1000, 300, 400, 500], 0.10) == pytest.approx(expected)
    assert expected == pytest.approx(-21.04, abs=0.01)


def test_npv_at_zero_rate_is_the_plain_sum() -> None:
    assert finance.npv([-1000, 300, 400, 500], 0.0) == pytest.approx(200.0)


def test_npv_is_vectorised_over_draws() -> None:
    flows = np.array([[-100.0, 110.0], [-100.0, 121.0]])
    rates = np.array([0.10, 0.21])
    assert finance.npv(flows, rates) == pytest.approx([0.0, 0.0])


def test_annuity_factor_is_the_sum_of_discount_factors() -> None:
    assert finance.annuity_factor(0.10, 3) == pytest.approx(1 / 1.1 + 1 / 1.21 + 1 / 1.331)
    assert finance.annuity_factor(0.0, 5) == pytest.approx(5.0)


def test_payback_year_is_the_first_year_the_cumulative_discounted_flow_is_not_negative() -> None:
    # Undiscounted: -1000, -700, -300, +200 -> year 3.
    assert finance.payback_year([-1000, 300, 400, 500], 0.0) == 3
    # At 10 % the same flows never pay back within three years (NPV is -21).
    assert finance.payback_year([-1000, 300, 400, 500], 0.10) is None
    # Exactly zero counts as paid back.
    assert finance.payback_year([-100, 50, 50], 0.0) == 2


def test_payback_years_marks_never_with_minus_one() -> None:
    flows = np.array([[-100.0, 200.0, 0.0], [-100.0, 10.0, 10.0]])
    assert finance.payback_years(flows, np.array([0.0, 0.0])).tolist() == [1, -1]


def test_roi_is_net_over_costs_and_undefined_without_costs() -> None:
    assert finance.roi(150.0, 100.0) == pytest.approx(0.5)
    assert np.isnan(finance.roi(10.0, 0.0))
