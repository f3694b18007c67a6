"""Volume-tier pricing: which price a pooled yearly volume earns, and what that volume costs.

`from_volume` thresholds are inclusive: a pool of exactly the threshold gets that tier's price.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def tier_index(volume: ArrayLike, thresholds: ArrayLike) -> np.ndarray:
    """Index of the tier that `volume` falls in (thresholds ascending, the first one 0)."""
    volume = np.asarray(volume, dtype=float)
    thresholds = np.asarray(thresholds, dtype=float)
    return np.searchsorted(thresholds, volume, side="right") - 1


def tier_price(volume: ArrayLike, thresholds: ArrayLike, prices: ArrayLike) -> np.ndarray:
    """All-units pricing: the price of the tier that `volume` reaches.

    `prices` has the tiers on its last axis and may carry leading draw axes that broadcast
    with `volume`.
    """
    prices = np.asarray(prices, dtype=float)
    index = tier_index(volume, thresholds)
    index = np.broadcast_to(index, np.broadcast_shapes(index.shape, prices.shape[:-1]))
    prices = np.broadcast_to(prices, index.shape + prices.shape[-1:])
    return np.take_along_axis(prices, index[..., None], axis=-1)[..., 0]


def graduated_cost(volume: ArrayLike, thresholds: ArrayLike, prices: ArrayLike) -> np.ndarray:
    """Graduated pricing: each slice of volume between two thresholds pays its own tier's price."""
    volume = np.asarray(volume, dtype=float)
    thresholds = np.asarray(thresholds, dtype=float)
    prices = np.asarray(prices, dtype=float)
    upper = np.append(thresholds[1:], np.inf)
    in_tier = np.clip(volume[..., None] - thresholds, 0.0, upper - thresholds)
    return (in_tier * prices).sum(axis=-1)


def average_price(
    volume: ArrayLike, thresholds: ArrayLike, prices: ArrayLike, mode: str
) -> np.ndarray:
    """Price per unit that `volume` pays under `mode` ('all_units' or 'graduated').

    Under graduated pricing a pool of zero pays the first tier's price per unit (nothing in total).
    """
    if mode == "all_units":
        return tier_price(volume, thresholds, prices)
    volume = np.asarray(volume, dtype=float)
    cost = graduated_cost(volume, thresholds, prices)
    first = np.asarray(prices, dtype=float)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(volume > 0, cost / np.where(volume > 0, volume, 1.0), first)
