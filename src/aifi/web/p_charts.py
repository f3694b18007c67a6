"""A drift p-chart as a small inline SVG: the positive rate per period against its centre line
and 3-sigma limits, periods outside them marked, and a line where a product version first ran
(a signal just after one points at the release). Drawn on the server so the page needs no
script; this module only places the marks, the template draws them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aifi.governance import NATIONAL
from aifi.governance.drift import DriftChart

WIDTH, HEIGHT, PAD = 340, 120, 14


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    signal: bool
    tip: str


@dataclass(frozen=True)
class VersionMark:
    """Where a version (or several) first ran in the chart's periods, after its first."""

    x: float
    label: str

    @property
    def label_x(self) -> float:
        """The label beside the line, on its left near the chart's right edge."""
        return self.x - 2 if self.x > WIDTH * 0.75 else self.x + 2

    @property
    def anchor(self) -> str:
        return "end" if self.x > WIDTH * 0.75 else "start"


@dataclass(frozen=True)
class PChartDrawing:
    """Everything the template needs, in SVG user units."""

    title: str
    alerts: int
    rate: str
    upper: str
    lower: str
    centre_y: float
    centre: float
    top: float
    dots: list[Dot]
    first_period: str
    last_period: str
    versions: list[VersionMark]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = PAD
    right: int = WIDTH - PAD
    bottom: int = HEIGHT - PAD


def draw(chart: DriftChart) -> PChartDrawing:
    """Place `chart`'s marks: periods evenly from left to right, rates from 0 at the bottom to
    the highest rate or limit at the top; limits as steps, since each period has its own."""
    points = chart.chart.points
    top = max([0.05, *(p.upper_limit for p in points), *(p.rate for p in points)])
    step = (WIDTH - 2 * PAD) / max(len(points) - 1, 1)

    def x(index: int) -> float:
        return PAD + index * step if len(points) > 1 else WIDTH / 2

    def y(rate: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * rate / top

    def steps(limits: list[float]) -> str:
        half = step / 2 if len(points) > 1 else PAD
        return " ".join(
            f"{x(i) - half:.1f},{y(v):.1f} {x(i) + half:.1f},{y(v):.1f}"
            for i, v in enumerate(limits)
        )

    where = "national" if chart.hospital_id == NATIONAL else chart.hospital_id
    return PChartDrawing(
        title=f"{chart.product_id} — {where}",
        alerts=len(chart.alerts),
        rate=" ".join(f"{x(i):.1f},{y(p.rate):.1f}" for i, p in enumerate(points)),
        upper=steps([p.upper_limit for p in points]),
        lower=steps([p.lower_limit for p in points]),
        centre_y=y(chart.chart.centre),
        centre=chart.chart.centre,
        top=top,
        dots=[
            Dot(
                x=x(i),
                y=y(p.rate),
                signal=p.signal is not None,
                tip=f"{p.period}: {p.positives}/{p.studies} positive ({p.rate:.1%}), "
                f"limits {p.lower_limit:.1%}–{p.upper_limit:.1%}"
                + (f"; version {', '.join(p.versions)}" if p.versions else ""),
            )
            for i, p in enumerate(points)
        ],
        first_period=points[0].period if points else "",
        last_period=points[-1].period if points else "",
        versions=_new_versions(chart, x),
    )


def _new_versions(chart: DriftChart, x: Callable[[int], float]) -> list[VersionMark]:
    """A mark at each period (after the first) where a version not seen before ran."""
    seen: set[str] = set()
    marks = []
    for index, point in enumerate(chart.chart.points):
        new = [v for v in point.versions if v not in seen]
        if new and seen:
            marks.append(VersionMark(x=x(index), label=", ".join(new)))
        seen.update(point.versions)
    return marks


def worth_showing(chart: DriftChart, hospital_user: bool) -> bool:
    """Each product's national chart, every chart with an alert, and a hospital's own: the
    nation's seventy hospitals × products would bury the ones that matter."""
    return hospital_user or chart.hospital_id == NATIONAL or bool(chart.alerts)
