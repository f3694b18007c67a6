"""Discounting arithmetic: present values, annuities, NPV and payback, vectorised over draws.

Cash flows are laid out by year: index 0 is the investment year (one-off costs, undiscounted),
indices 1..H are the operating years. Arrays may carry leading axes (Monte Carlo draws); the year
axis is always the last one.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def discount_factors(rate: ArrayLike, horizon: int) -> np.ndarray:
    """``1 / (1 + rate) ** t`` for t = 0..horizon, shape ``rate.shape + (horizon + 1,)``."""
    rate = np.asarray(rate, dtype=float)
    years = np.arange(horizon + 1, dtype=float)
    return np.power(1.0 + rate[..., None], -years)


def annuity_factor(rate: ArrayLike, horizon: int) -> np.ndarray:
    """Present value of 1 paid at the end of each of years 1..horizon."""
    return discount_factors(rate, horizon)[..., 1:].sum(axis=-1)


def npv(cash_flows: ArrayLike, rate: ArrayLike) -> np.ndarray:
    """Net present value of yearly cash flows (year 0 first) at `rate`."""
    flows = np.asarray(cash_flows, dtype=float)
    horizon = flows.shape[-1] - 1
    return (flows * discount_factors(rate, horizon)).sum(axis=-1)


def cumulative_discounted(cash_flows: ArrayLike, rate: ArrayLike) -> np.ndarray:
    """Running total of discounted cash flows, year by year."""
    flows = np.asarray(cash_flows, dtype=float)
    horizon = flows.shape[-1] - 1
    return np.cumsum(flows * discount_factors(rate, horizon), axis=-1)


def payback_years(cash_flows: ArrayLike, rate: ArrayLike) -> np.ndarray:
    """The first operating year (1..H) whose cumulative discounted cash flow is >= 0; -1 if none.

    Discounted payback: money spent in year 0 is recovered only by discounted returns.
    """
    cumulative = cumulative_discounted(cash_flows, rate)[..., 1:]
    reached = cumulative >= 0
    first = np.argmax(reached, axis=-1) + 1
    return np.where(reached.any(axis=-1), first, -1)


def payback_year(cash_flows: ArrayLike, rate: float) -> int | None:
    """`payback_years` for one cash-flow series: the year, or None when not within the horizon."""
    year = int(payback_years(cash_flows, rate))
    return None if year < 0 else year


def roi(pv_benefits: ArrayLike, pv_costs: ArrayLike) -> np.ndarray:
    """Return on investment: ``(PV benefits - PV costs) / PV costs`` (NaN when nothing is spent)."""
    benefits = np.asarray(pv_benefits, dtype=float)
    costs = np.asarray(pv_costs, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(costs > 0, (benefits - costs) / costs, np.nan)
