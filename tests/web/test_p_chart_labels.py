"""The names of product versions on a drift chart, as Chromium lays them out: inside the
chart, never over one another, and a return to an earlier version marked too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aifi.exchange.months import Months
from aifi.governance import NATIONAL
from aifi.governance.drift import PeriodCount, charts
from aifi.web import p_charts, pages
from aifi.web.session import WebUser
from support.peers import require_executable

pytestmark = pytest.mark.peer

USER = WebUser("olivia", "Olivia", "operator", "operator", "operator")


def drawing(ran: list[list[str]]) -> Any:
    counts = [
        PeriodCount(period=f"2026-{m:02d}", studies=100, positives=10, versions=versions)
        for m, versions in enumerate(ran, start=1)
    ]
    [chart] = charts({("ich", NATIONAL): counts})
    return p_charts.draw(chart)


def html(drawn: list[Any]) -> str:
    return pages.templates.env.get_template("evaluation.html").render(
        user=USER, error=None, months=Months(), by_version=False, shortcuts=[], rows=[],
        alerts=[], charts=drawn, typed=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_executable("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


def label_boxes(browser: Any, drawn: Any) -> list[dict[str, float]]:
    """Each version label's box as laid out, in the chart's units."""
    page = browser.new_page()
    page.set_content(html([drawn]))
    boxes = page.eval_on_selector_all(
        "svg text.version-label",
        "els => els.map(e => { const b = e.getBBox(); "
        "return {x: b.x, right: b.x + b.width, y: b.y, bottom: b.y + b.height}; })",
    )
    page.close()
    return list(boxes)


def test_a_long_version_label_stays_inside_the_chart(browser: Any) -> None:
    """A semver with pre-release and build, first run in month 9 of 12, and one longer than
    either side has room for (shortened, named in full in its tooltip)."""
    for version in ("2.0.0-rc.1+build.20261207", "v" * 64):
        [box] = label_boxes(browser, drawing([["1.4.2"]] * 8 + [[version]] * 4))
        assert box["x"] >= p_charts.PAD and box["right"] <= p_charts.WIDTH - p_charts.PAD, box
    [mark] = drawing([["1.4.2"]] * 8 + [["v" * 64]] * 4).versions
    assert mark.label == "v" * 64 and mark.text.endswith("…")


def test_labels_of_releases_in_consecutive_months_do_not_overlap(browser: Any) -> None:
    ran = [["1.4.2"]] * 4 + [["1.5.0-rc.1"]] + [["1.5.0"]] * 2 + [["1.5.1"]] * 5
    boxes = label_boxes(browser, drawing(ran))
    assert len(boxes) == 3, boxes
    for n, one in enumerate(boxes):
        for other in boxes[n + 1 :]:
            apart = one["right"] <= other["x"] or other["right"] <= one["x"]
            assert apart or one["bottom"] <= other["y"] or other["bottom"] <= one["y"], boxes


def test_a_return_to_an_earlier_version_is_marked() -> None:
    """2.0 replaced by 1.0 again in month 5: the product in use changed."""
    ran = [["1.0"], ["1.0"], ["2.0"], ["2.0"], ["1.0"], ["1.0"]]
    assert [m.label for m in drawing(ran).versions] == ["2.0", "1.0"]
