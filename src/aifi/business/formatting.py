"""How figures are written for people: euros with k/M, shares as percentages, missing as a dash."""

from __future__ import annotations

import math

DASH = "–"


def eur(value: float | None, decimals: int = 0) -> str:
    """Euros in full with thousands separators: ``€1,234,567`` (negative with a minus sign)."""
    if value is None or not math.isfinite(value):
        return DASH
    sign = "-" if value < 0 else ""
    return f"{sign}€{abs(value):,.{decimals}f}"


def eur_short(value: float | None) -> str:
    """Euros for axes and tight cells: ``€1.2M``, ``€340k``, ``€12``."""
    if value is None or not math.isfinite(value):
        return DASH
    if value == 0:
        return "€0"
    sign = "-" if value < 0 else ""
    size = abs(value)
    if size >= 1e6:
        return f"{sign}€{size / 1e6:.2f}M"
    if size >= 1e4:
        return f"{sign}€{size / 1e3:.0f}k"
    if size >= 100:
        return f"{sign}€{size:,.0f}"
    return f"{sign}€{size:.2f}"


def percent(value: float | None, decimals: int = 0) -> str:
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value * 100:.{decimals}f} %"


def count(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value:,.0f}"


def year(value: int | None) -> str:
    return DASH if value is None else f"year {value}"


def number(value: float) -> str:
    """An input value as written: no needless decimals (``0.004``, ``25,000``, ``6.3``)."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def significant(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits, thousands separated: ``0.00223``, ``1,430,000``."""
    if value == 0 or not math.isfinite(value):
        return number(value)
    rounded = round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return number(rounded)


def points(value: float | None) -> str:
    """A difference of probabilities in percentage points, signed: ``+15 pp``, ``0 pp``."""
    if value is None or not math.isfinite(value):
        return DASH
    rounded = round(value * 100)
    return f"{rounded:+d} pp" if rounded else "0 pp"
