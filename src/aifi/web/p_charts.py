"""A drift p-chart as a small inline SVG: the positive rate per period against its centre line
and 3-sigma limits, periods outside them marked, and a line where a product version came in
(a signal just after one points at the release; a return to an earlier version is marked
too). Drawn on the server so the page needs no script; this module only places the marks,
the template draws them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aifi.governance import NATIONAL
from aifi.governance.drift import DriftChart, versions_named

WIDTH, HEIGHT, PAD = 340, 120, 14
#: About how wide a character of the 9-pixel labels is, to keep a label inside the chart.
CHAR_WIDTH = 5.4
#: The heights a version's label may take: the next when the first would overlap another.
LABEL_ROWS = (20.0, 30.0)


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    signal: bool
    tip: str


@dataclass(frozen=True)
class VersionMark:
    """A period (after the first) where a version ran that did not run in the period before.

    `label` names the versions in full (the line's tooltip); `text` is what fits beside the
    line inside the chart, shortened with "…" if need be, at (`text_x`, `text_y`) anchored
    at `anchor`; `text_y` None where no row was free of other labels (the line and its
    tooltip stay)."""

    x: float
    label: str
    text: str
    text_x: float
    text_y: float | None
    anchor: str


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
                + (f"; {versions_named(p.versions)}" if p.versions else ""),
            )
            for i, p in enumerate(points)
        ],
        first_period=points[0].period if points else "",
        last_period=points[-1].period if points else "",
        versions=_new_versions(chart, x),
    )


def _new_versions(chart: DriftChart, x: Callable[[int], float]) -> list[VersionMark]:
    """A mark at each period (after the first) where a version ran that did not in the
    period before: a release, or a return to an earlier version."""
    marks: list[VersionMark] = []
    taken: dict[float, list[tuple[float, float]]] = {row: [] for row in LABEL_ROWS}
    points = chart.chart.points
    for index in range(1, len(points)):
        before = set(points[index - 1].versions)
        came = [v for v in points[index].versions if v not in before]
        if came:
            marks.append(_mark(x(index), ", ".join(came), taken))
    return marks


def _mark(at: float, label: str, taken: dict[float, list[tuple[float, float]]]) -> VersionMark:
    """The mark at `at`, its text on the side of the line with room for it (shortened if
    neither has), in the first row where it overlaps no label placed before."""
    right, left = WIDTH - PAD - (at + 2), (at - 2) - PAD
    fits = int(max(right, left) // CHAR_WIDTH)
    text = label if len(label) <= fits else label[: max(fits - 1, 0)] + "…"
    width = len(text) * CHAR_WIDTH
    on_right = width <= right or (width > left and right >= left)
    start = at + 2 if on_right else at - 2 - width
    row = next(
        (
            y
            for y, spans in taken.items()
            if all(start + width + 3 <= a or b + 3 <= start for a, b in spans)
        ),
        None,
    )
    if row is not None:
        taken[row].append((start, start + width))
    return VersionMark(
        x=at,
        label=label,
        text=text,
        text_x=at + 2 if on_right else at - 2,
        text_y=row,
        anchor="start" if on_right else "end",
    )


def worth_showing(chart: DriftChart, hospital_user: bool) -> bool:
    """Each product's national chart, every chart with an alert, and a hospital's own: the
    nation's seventy hospitals × products would bury the ones that matter."""
    return hospital_user or chart.hospital_id == NATIONAL or bool(chart.alerts)
