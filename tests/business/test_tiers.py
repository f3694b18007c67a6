"""Tier prices at and around their boundaries, all-units and graduated."""

from __future__ import annotations

import numpy as np
import pytest

from aifi.business.tiers import average_price, graduated_cost, tier_index, tier_price

THRESHOLDS = [0, 1_000, 5_000]
PRICES = [10.0, 8.0, 5.0]


@pytest.mark.parametrize(
    ("volume", "price"),
    [(0, 10.0), (999, 10.0), (1_000, 8.0), (1_001, 8.0), (4_999, 8.0), (5_000, 5.0), (10**6, 5.0)],
)
def test_all_units_price_at_tier_boundaries(volume: int, price: float) -> None:
    assert tier_price(volume, THRESHOLDS, PRICES) == pytest.approx(price)


def test_tier_index_counts_thresholds_as_inclusive() -> None:
    assert tier_index([0, 999.9, 1_000, 5_000], THRESHOLDS).tolist() == [0, 0, 1, 2]


def test_graduated_cost_prices_each_slice_at_its_own_tier() -> None:
    # 6,000 studies: 1,000 × 10 + 4,000 × 8 + 1,000 × 5
    assert graduated_cost(6_000, THRESHOLDS, PRICES) == pytest.approx(10_000 + 32_000 + 5_000)
    # At a boundary the next tier holds no volume yet.
    assert graduated_cost(1_000, THRESHOLDS, PRICES) == pytest.approx(10_000)
    assert graduated_cost(0, THRESHOLDS, PRICES) == pytest.approx(0)


def test_average_graduated_price_falls_smoothly_where_all_units_jumps() -> None:
    below = average_price(999, THRESHOLDS, PRICES, "graduated")
    above = average_price(1_001, THRESHOLDS, PRICES, "graduated")
    assert below == pytest.approx(10.0)
    assert above == pytest.approx((10_000 + 8.0) / 1_001)
    assert average_price(1_001, THRESHOLDS, PRICES, "all_units") == pytest.approx(8.0)


def test_tier_prices_broadcast_over_draws() -> None:
    prices = np.array([[10.0, 8.0, 5.0], [20.0, 16.0, 10.0]])
    volumes = np.array([1_000, 6_000])
    assert tier_price(volumes, THRESHOLDS, prices).tolist() == [8.0, 10.0]
