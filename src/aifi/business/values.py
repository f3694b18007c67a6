"""The numbers the engine computes with: base values, or many draws at once for Monte Carlo.

The engine asks an `InputValues` for each quantity it reads and gets an array with one entry per
draw. The deterministic case is one draw of the base values; Monte Carlo and the tornado are
many draws evaluated in one vectorised pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from aifi.business.model import BusinessCase, iter_quantities
from aifi.business.quantity import Quantity

#: The tornado swings each input between these quantiles of its distribution.
TORNADO_QUANTILES = (0.05, 0.95)


@dataclass(frozen=True)
class InputValues:
    """`n` draws of every input: the base value unless `overrides` holds draws for its path."""

    n: int = 1
    overrides: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __call__(self, quantity: Quantity) -> np.ndarray:
        drawn = self.overrides.get(quantity.path)
        if drawn is not None:
            return drawn
        return np.full(self.n, quantity.value)


def uncertain_inputs(case: BusinessCase) -> list[tuple[str, Quantity]]:
    """The quantities that carry a distribution, in file order."""
    return [(path, q) for path, q in iter_quantities(case) if q.distribution is not None]


def monte_carlo_values(case: BusinessCase, draws: int, seed: int | None) -> InputValues:
    """`draws` independent draws of every uncertain input (inverse-CDF of one uniform each).

    The same seed gives the same draws, and every scenario evaluated with these values sees the
    same draws, so differences between scenarios are not sampling noise.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1 (got {draws})")
    rng = np.random.default_rng(seed)
    overrides = {
        path: quantity.quantiles(rng.random(draws)) for path, quantity in uncertain_inputs(case)
    }
    return InputValues(n=draws, overrides=overrides)


@dataclass(frozen=True)
class Swing:
    """One tornado bar's input: its path and the low and high values it is swung to."""

    path: str
    unit: str
    base: float
    low: float
    high: float


def tornado_values(
    case: BusinessCase, quantiles: tuple[float, float] = TORNADO_QUANTILES
) -> tuple[InputValues, list[Swing]]:
    """Two draws per uncertain input (its low and high quantile), every other input at base.

    Draw ``2 * i`` holds input i at its low value, draw ``2 * i + 1`` at its high value.
    """
    inputs = uncertain_inputs(case)
    n = 2 * len(inputs)
    overrides: dict[str, np.ndarray] = {}
    swings = []
    for index, (path, quantity) in enumerate(inputs):
        low, high = quantity.quantiles(np.asarray(quantiles))
        column = np.full(n, quantity.value)
        column[2 * index] = low
        column[2 * index + 1] = high
        overrides[path] = column
        swings.append(Swing(path, quantity.unit, quantity.value, float(low), float(high)))
    return InputValues(n=max(n, 1), overrides=overrides), swings
