"""The report's tables as plain data, so the terminal and the HTML report show the same figures."""

from __future__ import annotations

from dataclasses import dataclass, field

from aifi.business.analysis import Analysis, ScenarioResult
from aifi.business.formatting import DASH, count, eur, eur_short, percent, points, significant, year
from aifi.business.model import iter_quantities

TORNADO_ROWS = 10


@dataclass(frozen=True)
class TableSpec:
    """A titled table of strings; `numeric` marks the columns to right-align."""

    key: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: set[int] = field(default_factory=set)


def report_tables(analysis: Analysis) -> list[TableSpec]:
    """Every table of the report, in reading order."""
    tables = [
        scenarios_table(analysis),
        comparisons_table(analysis),
        single_application_table(analysis),
        size_class_table(analysis),
        hospitals_table(analysis.base),
        prices_table(analysis.base),
        tornado_table(analysis.base),
        volumes_table(analysis),
    ]
    if analysis.metering is not None:
        tables.append(metering_table(analysis))
    return [t for t in tables if t.rows]


def overview_lines(analysis: Analysis) -> list[str]:
    """The few sentences above the tables: what was computed, from what."""
    case = analysis.case
    quantities = [q for _, q in iter_quantities(case)]
    assumptions = sum(q.is_assumption for q in quantities)
    uncertain = sum(q.distribution is not None for q in quantities)
    volumes = list(analysis.base.outcome.volumes.values())
    metered = sum(v.origin == "metered" for v in volumes)
    return [
        f"{case.name} ({analysis.origin})",
        f"Horizon {int(case.horizon.value)} years after a year-0 investment; discount rate "
        f"{percent(case.discount_rate.value, 1)} a year; prices in {case.currency} "
        f"{case.price_year}.",
        f"{len(quantities)} inputs, each with its source: {len(quantities) - assumptions} from "
        f"published or derived figures, {assumptions} marked as assumptions; "
        f"{uncertain} uncertain.",
        f"Volumes: {metered} of {len(volumes)} hospital × application pairs measured on the "
        f"exchange, the rest assumed (exams × eligible share × uptake)."
        if metered
        else f"Volumes: all {len(volumes)} hospital × application pairs assumed "
        f"(exams × eligible share × uptake); none metered.",
        f"Monte Carlo: {analysis.draws:,} draws (seed {analysis.seed}), the same draws for every "
        f"scenario. Base scenario: {case.base.name}.",
    ]


def _npv_range(result: ScenarioResult) -> str:
    mc = result.monte_carlo
    return f"{eur_short(mc.p5)} … {eur_short(mc.p95)}"


def scenarios_table(analysis: Analysis) -> TableSpec:
    results = analysis.scenarios
    headers = ["", *(r.scenario.id for r in results)]
    rows: list[list[str]] = [
        ["platform", *(r.scenario.platform for r in results)],
        ["procurement", *(r.scenario.procurement for r in results)],
        ["price pooling", *(r.scenario.pooling for r in results)],
    ]
    figures = [
        ("one-off costs", lambda r: eur_short(r.metrics.one_off_costs)),
        ("yearly costs", lambda r: eur_short(r.metrics.yearly_costs)),
        ("yearly benefits", lambda r: eur_short(r.metrics.yearly_benefits)),
        ("PV costs", lambda r: eur_short(r.metrics.pv_costs)),
        ("PV benefits", lambda r: eur_short(r.metrics.pv_benefits)),
        ("NPV", lambda r: eur_short(r.metrics.npv)),
        ("ROI", lambda r: percent(r.metrics.roi)),
        ("payback", lambda r: year(r.metrics.payback_year)),
        ("cost per exam", lambda r: eur_short(r.metrics.cost_per_exam)),
        ("exams/hospital/yr today", lambda r: count(r.metrics.mean_exams_per_hospital)),
        ("break-even exams/hospital/yr", lambda r: count(r.metrics.break_even_exams_per_hospital)),
        ("P(NPV > 0)", lambda r: percent(r.monte_carlo.probability_positive)),
        ("NPV 90 % interval", _npv_range),
    ]
    rows += [[label, *(fmt(r) for r in results)] for label, fmt in figures]
    return TableSpec(
        "scenarios",
        "Scenarios side by side",
        headers,
        rows,
        caption="; ".join(f"{r.scenario.id}: {r.scenario.name}" for r in results),
        numeric=set(range(1, len(headers))),
    )


def comparisons_table(analysis: Analysis) -> TableSpec:
    rows = []
    for comparison in analysis.case.comparisons:
        first, second = (analysis.result(s) for s in comparison.scenarios[:2])
        rows.append(
            [
                comparison.name,
                f"{second.scenario.id} vs {first.scenario.id}",
                eur_short(second.metrics.npv - first.metrics.npv),
                eur_short(second.metrics.pv_costs - first.metrics.pv_costs),
                points(
                    second.monte_carlo.probability_positive - first.monte_carlo.probability_positive
                ),
                comparison.question,
            ]
        )
    return TableSpec(
        "comparisons",
        "Comparisons (second scenario minus first)",
        ["comparison", "scenarios", "Δ NPV", "Δ PV costs", "Δ P(NPV > 0)", "question"],
        rows,
        numeric={2, 3, 4},
    )


def single_application_table(analysis: Analysis) -> TableSpec:
    rows = []
    for result in analysis.single_application:
        app = result.outcome.applications[0]
        m = result.metrics
        rows.append(
            [
                app.name,
                app.licence.model.replace("_", " "),
                count(m.exams_per_year),
                eur_short(m.pv_costs),
                eur_short(m.pv_benefits),
                eur_short(m.npv),
                percent(m.roi),
                year(m.payback_year),
                eur_short(m.cost_per_exam),
                count(m.break_even_exams_per_hospital),
                percent(result.monte_carlo.probability_positive),
            ]
        )
    return TableSpec(
        "single_application",
        f"Each application alone ({analysis.case.base.name})",
        [
            "application",
            "licence",
            "exams/yr",
            "PV costs",
            "PV benefits",
            "NPV",
            "ROI",
            "payback",
            "cost/exam",
            "break-even exams/hospital/yr",
            "P(NPV > 0)",
        ],
        rows,
        caption="Central costs (platform, procurement) are borne in full by the one application.",
        numeric=set(range(2, 11)),
    )


def size_class_table(analysis: Analysis) -> TableSpec:
    results = analysis.scenarios
    classes = [s.size_class for s in analysis.base.size_classes]
    rows = []
    for size_class in classes:
        row = [size_class]
        for result in results:
            match = next((s for s in result.size_classes if s.size_class == size_class), None)
            row.append(
                DASH
                if match is None
                else f"{eur_short(match.pv_costs)} ({eur_short(match.cost_per_exam)}/exam)"
            )
        rows.append(row)
    return TableSpec(
        "size_classes",
        "Cost per hospital by size: PV of costs per hospital (cost per exam)",
        ["size", *(r.scenario.id for r in results)],
        rows,
        caption="Central costs are shared as each scenario says (by volume unless 'equal').",
        numeric=set(range(1, len(results) + 1)),
    )


def hospitals_table(result: ScenarioResult) -> TableSpec:
    rows = [
        [
            h.name,
            h.size_class,
            count(h.exams_per_year),
            eur_short(h.one_off_costs),
            eur_short(h.yearly_costs),
            eur_short(h.yearly_benefits),
            eur_short(h.npv),
            eur_short(h.cost_per_exam),
            count(h.break_even_exams_per_year),
        ]
        for h in result.hospitals
    ]
    return TableSpec(
        "hospitals",
        f"Per hospital ({result.scenario.name})",
        [
            "hospital",
            "size",
            "exams/yr",
            "one-off",
            "yearly costs",
            "yearly benefits",
            "NPV",
            "cost/exam",
            "break-even exams/yr",
        ],
        rows,
        caption=(
            "Break-even: exams per year at which the hospital's margin per exam earns back its own "
            "fixed costs and its present share of the central costs."
        ),
        numeric=set(range(2, 9)),
    )


def prices_table(result: ScenarioResult) -> TableSpec:
    names = {a.id: a.name for a in result.outcome.applications}
    rows = [
        [
            names[p.application],
            ", ".join(p.pool) if len(p.pool) < 3 else f"{len(p.pool)} hospitals",
            count(float(p.pooled_volume[0])),
            str(int(p.tier[0]) + 1),
            f"{eur(float(p.unit_price[0]), 2 if p.unit_price[0] < 100 else 0)}"
            f" {p.unit.removeprefix('EUR')}",
        ]
        for p in result.outcome.prices
    ]
    return TableSpec(
        "prices",
        f"Licence prices reached ({result.scenario.name})",
        ["application", "pool", "pooled studies/yr", "tier", "price"],
        rows,
        numeric={2, 3, 4},
    )


def tornado_table(result: ScenarioResult) -> TableSpec:
    rows = [
        [
            bar.path,
            f"{significant(bar.low_value)} … {significant(bar.high_value)} {bar.unit}",
            eur_short(bar.npv_at_low),
            eur_short(bar.npv_at_high),
            eur_short(bar.swing),
        ]
        for bar in result.tornado.bars[:TORNADO_ROWS]
    ]
    return TableSpec(
        "tornado",
        f"Inputs that move the NPV most ({result.scenario.name}, base NPV "
        f"{eur_short(result.tornado.base_npv)})",
        ["input", "range (P5 … P95)", "NPV at P5", "NPV at P95", "swing"],
        rows,
        numeric={2, 3, 4},
    )


def volumes_table(analysis: Analysis) -> TableSpec:
    outcome = analysis.base.outcome
    apps = outcome.applications
    rows = []
    for hospital in outcome.hospitals:
        row = [hospital.name]
        for app in apps:
            volume = outcome.volumes[(hospital.id, app.id)]
            mark = " (metered)" if volume.origin == "metered" else ""
            row.append(f"{count(float(volume.yearly[0]))}{mark}")
        rows.append(row)
    return TableSpec(
        "volumes",
        "Exams per year sent to each application",
        ["hospital", *(a.name for a in apps)],
        rows,
        caption=(
            "(metered) = annualised from the exchange's metering (the studies its jobs "
            "analysed, or its completed jobs where it does not count studies); the others are "
            "assumed: exams of the modality × eligible share × uptake."
        ),
        numeric=set(range(1, len(apps) + 1)),
    )


def metering_table(analysis: Analysis) -> TableSpec:
    report = analysis.metering
    assert report is not None
    rows = [
        [
            period.hospital,
            period.exchange_id,
            f"{period.first_month} … {period.last_month}",
            str(period.months),
            "—" if period.studies_completed is None else count(period.studies_completed),
            count(period.jobs_completed),
            count(period.jobs_failed),
            f"× 12/{period.months}",
        ]
        for period in report.periods
    ]
    caption = (
        f"From {report.source}: {report.rows} rows. A hospital's yearly volume is its studies "
        f"analysed (by completed jobs, a study sent again counted once a month; its completed "
        f"jobs where the exchange does not count studies, shown as —) over the months from its "
        f"first to its last month in the metering, × 12 / months."
    )
    if report.assumed_pairs:
        caption += f" {len(report.assumed_pairs)} pair(s) kept their assumed volume."
    if report.ignored:
        caption += f" Not in the case, ignored: {', '.join(report.ignored)}."
    return TableSpec(
        "metering",
        "Metering used",
        [
            "hospital",
            "exchange id",
            "months",
            "n",
            "studies analysed",
            "jobs completed",
            "jobs failed",
            "annualised",
        ],
        rows,
        caption=caption,
        numeric={3, 4, 5, 6},
    )
