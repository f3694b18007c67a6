"""The report's charts as PNG bytes: cash flow over time, tornado, cost per exam against volume.

matplotlib with the Agg backend (no display needed); each function returns the image, so the HTML
report can embed it and tests can check it is a picture.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from aifi.business.analysis import ScenarioResult  # noqa: E402
from aifi.business.formatting import eur_short, significant  # noqa: E402
from aifi.business.uncertainty import Tornado  # noqa: E402

DPI = 110
EURO_AXIS = FuncFormatter(lambda value, _: eur_short(value))


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _legend_below(axes: plt.Axes) -> None:
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def cumulative_cash_flow_png(results: list[ScenarioResult]) -> bytes:
    """Cumulative discounted net cash flow per scenario, year 0 to the horizon."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for result in results:
        cumulative = result.metrics.cumulative_discounted
        axes.plot(range(len(cumulative)), cumulative, marker="o", label=result.scenario.name)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xlabel("year (0 = one-off costs)")
    axes.set_ylabel("cumulative discounted net cash flow")
    axes.yaxis.set_major_formatter(EURO_AXIS)
    axes.set_xticks(range(len(results[0].metrics.cumulative_discounted)) if results else [])
    axes.grid(alpha=0.3)
    _legend_below(axes)
    axes.set_title("Cumulative discounted cash flow per scenario")
    return _png(figure)


def tornado_png(tornado: Tornado, scenario_name: str, bars: int = 12) -> bytes:
    """Horizontal bars: NPV with each input at its 5th and 95th percentile, largest swing on top."""
    shown = list(reversed(tornado.bars[:bars]))
    figure, axes = plt.subplots(figsize=(9, 0.45 * max(len(shown), 1) + 1.5))
    base = tornado.base_npv
    for row, bar in enumerate(shown):
        axes.barh(row, bar.npv_at_low - base, left=base, color="#d9534f", height=0.6)
        axes.barh(row, bar.npv_at_high - base, left=base, color="#5b8def", height=0.6)
    labels = [
        f"{bar.path}  [{significant(bar.low_value)} – {significant(bar.high_value)} {bar.unit}]"
        for bar in shown
    ]
    axes.set_yticks(range(len(shown)), labels, fontsize=8)
    axes.axvline(base, color="black", linewidth=0.8)
    axes.axvline(0, color="grey", linewidth=0.8, linestyle=":")
    axes.xaxis.set_major_formatter(EURO_AXIS)
    axes.set_xlabel(f"NPV (base {eur_short(base)}); red: input at P5, blue: input at P95")
    axes.set_title(f"Tornado: what moves the NPV most ({scenario_name})")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def cost_per_exam_png(results: list[ScenarioResult], benefit_per_exam: float | None) -> bytes:
    """Cost per exam against mean yearly exams per hospital, with each scenario's own volume."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for result in results:
        curve = result.cost_curve
        points = [
            (x, y)
            for x, y in zip(curve.exams_per_hospital, curve.cost_per_exam, strict=True)
            if y is not None and x > 0
        ]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        (line,) = axes.plot(xs, ys, label=result.scenario.name)
        here = result.metrics
        if here.cost_per_exam is not None:
            axes.plot(here.mean_exams_per_hospital, here.cost_per_exam, "o", color=line.get_color())
    if benefit_per_exam is not None:
        axes.axhline(
            benefit_per_exam,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"benefit per exam ({eur_short(benefit_per_exam)})",
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(EURO_AXIS)
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.set_xlabel("mean exams per hospital per year (all volumes scaled; dot = today)")
    axes.set_ylabel("cost per exam (levelised)")
    axes.set_title("Cost per exam against volume")
    axes.grid(alpha=0.3, which="both")
    _legend_below(axes)
    return _png(figure)
