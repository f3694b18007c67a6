"""The drift p-chart's marks land where the figures say: rates from the bottom (0) to the top
(the highest rate or limit), a period outside its limits marked, limits as steps."""

from __future__ import annotations

import pytest

from aifi.governance import NATIONAL
from aifi.governance.drift import DriftChart, PeriodCount, charts
from aifi.web.p_charts import HEIGHT, PAD, draw, worth_showing


def chart(hospital: str, monthly: list[tuple[int, int]]) -> DriftChart:
    counts = [
        PeriodCount(period=f"2026-{m:02d}", studies=n, positives=k)
        for m, (n, k) in enumerate(monthly, start=1)
    ]
    [drawn] = charts({("ich", hospital): counts}, baseline=4)
    return drawn


def test_rates_and_signals_are_placed_on_the_chart() -> None:
    steady = [(200, 20), (200, 22), (200, 18), (200, 20)]
    drifting = chart("h-a", [*steady, (200, 60)])  # 30 % against a centre of 10 %
    drawing = draw(drifting)
    assert drawing.alerts == 1 and drawing.title == "ich — h-a"
    assert [d.signal for d in drawing.dots] == [False, False, False, False, True]
    top, last = drawing.dots[-1], drawing.dots[0]
    assert drawing.top == pytest.approx(0.30)  # the drifting month is the highest mark
    assert top.y == pytest.approx(PAD)
    assert last.y == pytest.approx(HEIGHT - PAD - (HEIGHT - 2 * PAD) * 0.10 / 0.30)
    assert drawing.centre_y == pytest.approx(HEIGHT - PAD - (HEIGHT - 2 * PAD) * 0.10 / 0.30)
    assert drawing.dots[0].x < drawing.dots[-1].x
    assert "2026-05: 60/200 positive (30.0%)" in top.tip
    assert (drawing.first_period, drawing.last_period) == ("2026-01", "2026-05")
    assert len(drawing.upper.split()) == 2 * len(drawing.dots)  # a step per period


def test_only_the_charts_that_matter_are_shown_to_the_nation() -> None:
    quiet = chart("h-b", [(100, 10), (100, 11)])
    assert not worth_showing(quiet, hospital_user=False)
    assert worth_showing(quiet, hospital_user=True)
    assert worth_showing(chart(NATIONAL, [(100, 10)]), hospital_user=False)
    single = draw(chart(NATIONAL, [(100, 10)]))
    assert len(single.dots) == 1 and single.dots[0].x == pytest.approx(single.width / 2)


def test_a_line_marks_a_period_where_a_version_ran_that_did_not_the_period_before() -> None:
    """After the first period, each period where a version ran that did not the period before
    gets a mark at its dot, named; every dot's tip names its versions."""
    ran = [["1.0"], ["1.0"], ["1.0", "2.0"], ["2.0"], ["2.0", "2.1"]]
    counts = [
        PeriodCount(period=f"2026-{m:02d}", studies=100, positives=10, versions=versions)
        for m, versions in enumerate(ran, start=1)
    ]
    [drifting] = charts({("ich", NATIONAL): counts})
    drawing = draw(drifting)
    assert [(m.x, m.label) for m in drawing.versions] == [
        (drawing.dots[2].x, "2.0"),
        (drawing.dots[4].x, "2.1"),
    ]
    assert drawing.dots[2].tip.endswith("; versions 1.0, 2.0")
    assert drawing.dots[3].tip.endswith("; version 2.0")
    # Near the right edge the name goes on the line's left, inside the chart.
    assert [m.anchor for m in drawing.versions] == ["start", "end"]
    assert draw(chart(NATIONAL, [(100, 10), (100, 11)])).versions == []  # none recorded
