"""The business case as one self-contained HTML file: tables, charts as embedded PNGs, sources."""

from __future__ import annotations

import base64

from jinja2 import Environment, PackageLoader, select_autoescape

from aifi.business import plots
from aifi.business.analysis import ANNUALISATION, METHOD, Analysis, input_records
from aifi.business.formatting import eur, number
from aifi.business.tables import overview_lines, report_tables

TEMPLATE = "business_case.html"


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("aifi.business", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = number
    environment.filters["eur"] = eur
    return environment


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def report_charts(analysis: Analysis) -> dict[str, str]:
    """The report's charts as data URIs, keyed by name."""
    base = analysis.base
    benefit_per_exam = (
        base.metrics.yearly_benefits / base.metrics.exams_per_year
        if base.metrics.exams_per_year > 0
        else None
    )
    return {
        "cash_flow": _data_uri(plots.cumulative_cash_flow_png(analysis.scenarios)),
        "tornado": _data_uri(plots.tornado_png(base.tornado, base.scenario.name)),
        "cost_per_exam": _data_uri(plots.cost_per_exam_png(analysis.scenarios, benefit_per_exam)),
    }


def render_html(analysis: Analysis) -> str:
    """The whole report as an HTML document."""
    template = _environment().get_template(TEMPLATE)
    base = analysis.base
    return template.render(
        case=analysis.case,
        overview=overview_lines(analysis),
        tables={spec.key: spec for spec in report_tables(analysis)},
        charts=report_charts(analysis),
        inputs=input_records(analysis.case),
        lines=base.outcome.lines,
        base=base,
        method=METHOD,
        annualisation=ANNUALISATION,
        metering=analysis.metering,
    )
