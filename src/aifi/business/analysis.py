"""The whole business case in one pass: every scenario, its variants, uncertainty and curves.

`analyse` computes everything a report shows; `analysis_to_dict` writes every figure, every line
item with its formula and inputs, and every input with its source, as plain JSON-ready data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from aifi.business.engine import ScenarioOutcome, evaluate, single_application_variant
from aifi.business.metering import MeteringReport
from aifi.business.metrics import (
    HospitalMetrics,
    ScenarioMetrics,
    SizeClassMetrics,
    hospital_metrics,
    scenario_metrics,
    size_class_metrics,
)
from aifi.business.model import BusinessCase, Scenario, iter_quantities
from aifi.business.uncertainty import NpvDistribution, Tornado, npv_distribution, tornado
from aifi.business.values import InputValues, monte_carlo_values

DEFAULT_DRAWS = 10_000
DEFAULT_SEED = 2025
#: Volume multiples the cost-per-exam curve is traced over (1 = the scenario's own volume).
CURVE_SCALES = np.unique(np.append(np.geomspace(0.05, 4.0, 60), 1.0))


@dataclass(frozen=True)
class CostCurve:
    """Cost per exam and NPV as every hospital's volume is scaled, prices following the tiers."""

    exams_per_hospital: list[float]
    cost_per_exam: list[float | None]
    npv: list[float]


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    outcome: ScenarioOutcome
    metrics: ScenarioMetrics
    hospitals: list[HospitalMetrics]
    size_classes: list[SizeClassMetrics]
    monte_carlo: NpvDistribution
    tornado: Tornado
    cost_curve: CostCurve


@dataclass(frozen=True)
class Analysis:
    case: BusinessCase
    origin: str
    draws: int
    seed: int | None
    scenarios: list[ScenarioResult]
    single_application: list[ScenarioResult]
    metering: MeteringReport | None

    @property
    def base(self) -> ScenarioResult:
        return self.result(self.case.base.id)

    def result(self, scenario_id: str) -> ScenarioResult:
        return next(
            r for r in self.scenarios + self.single_application if r.scenario.id == scenario_id
        )


def analyse(
    case: BusinessCase,
    origin: str = "business case",
    draws: int = DEFAULT_DRAWS,
    seed: int | None = DEFAULT_SEED,
    metering: MeteringReport | None = None,
) -> Analysis:
    """Evaluate every scenario and each application alone (under the base scenario).

    All scenarios share the same Monte Carlo draws, so their probabilities can be compared.
    """
    draws_values = monte_carlo_values(case, draws, seed)
    declared = [_scenario_result(case, s, draws_values) for s in case.scenarios]
    variants = [
        _scenario_result(case, single_application_variant(case.base, app), draws_values)
        for app in case.applications
    ]
    return Analysis(case, origin, draws, seed, declared, variants, metering)


def _scenario_result(
    case: BusinessCase, scenario: Scenario, draws_values: InputValues
) -> ScenarioResult:
    outcome = evaluate(case, scenario)
    hospitals = hospital_metrics(outcome)
    distribution, _ = npv_distribution(case, scenario, draws_values)
    return ScenarioResult(
        scenario=scenario,
        outcome=outcome,
        metrics=scenario_metrics(outcome),
        hospitals=hospitals,
        size_classes=size_class_metrics(hospitals),
        monte_carlo=distribution,
        tornado=tornado(case, scenario),
        cost_curve=cost_curve(case, scenario),
    )


def cost_curve(case: BusinessCase, scenario: Scenario) -> CostCurve:
    """Cost per exam against mean yearly exams per hospital, all volumes scaled together."""
    scales = CURVE_SCALES
    outcome = evaluate(case, scenario, InputValues(n=len(scales)), volume_scale=scales)
    per_hospital = outcome.exams_per_year() / len(outcome.hospitals)
    return CostCurve(
        exams_per_hospital=[float(x) for x in per_hospital],
        cost_per_exam=[_clean(x) for x in outcome.cost_per_exam()],
        npv=[float(x) for x in outcome.npv()],
    )


def _clean(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


# -- JSON ------------------------------------------------------------------------------------


def analysis_to_dict(analysis: Analysis) -> dict[str, Any]:
    """Every figure of the analysis as JSON-ready data (NaN and infinity become null)."""
    case = analysis.case
    data = {
        "case": {
            "name": case.name,
            "description": case.description,
            "origin": analysis.origin,
            "currency": case.currency,
            "price_year": case.price_year,
            "horizon_years": int(case.horizon.value),
            "discount_rate": case.discount_rate.value,
            "base_scenario": case.base.id,
        },
        "method": METHOD,
        "monte_carlo": {"draws": analysis.draws, "seed": analysis.seed},
        "inputs": input_records(case),
        "scenarios": [_result_dict(r) for r in analysis.scenarios],
        "single_application": [_result_dict(r) for r in analysis.single_application],
        "comparisons": [
            {
                "name": c.name,
                "question": c.question,
                "scenarios": c.scenarios,
                "npv_difference": analysis.result(c.scenarios[1]).metrics.npv
                - analysis.result(c.scenarios[0]).metrics.npv,
            }
            for c in case.comparisons
        ],
        "volumes": volume_records(analysis.base.outcome),
        "metering": _metering_dict(analysis.metering),
    }
    return _json_safe(data)


def input_records(case: BusinessCase) -> list[dict[str, Any]]:
    """Every input with its value, unit, source and distribution."""
    return [
        {
            "path": path,
            "value": q.value,
            "unit": q.unit,
            "source": q.source,
            "assumption": q.is_assumption,
            "distribution": q.distribution.model_dump() if q.distribution else None,
        }
        for path, q in iter_quantities(case)
    ]


def volume_records(outcome: ScenarioOutcome) -> list[dict[str, Any]]:
    """Yearly volume per hospital and application, with its origin (assumed or metered)."""
    return [
        {
            "hospital": v.hospital,
            "application": v.application,
            "exams_per_year": float(v.yearly[0]),
            "origin": v.origin,
            "formula": v.formula,
            "inputs": list(v.inputs),
        }
        for v in outcome.volumes.values()
    ]


def _result_dict(result: ScenarioResult) -> dict[str, Any]:
    outcome = result.outcome
    return {
        "scenario": result.scenario.model_dump(),
        "metrics": asdict(result.metrics),
        "hospitals": [asdict(h) for h in result.hospitals],
        "size_classes": [asdict(s) for s in result.size_classes],
        "monte_carlo": asdict(result.monte_carlo),
        "tornado": {
            "scenario": result.tornado.scenario,
            "base_npv": result.tornado.base_npv,
            "bars": [asdict(bar) for bar in result.tornado.bars],
        },
        "cost_curve": asdict(result.cost_curve),
        "prices": [
            {
                "application": p.application,
                "pool": list(p.pool),
                "pooled_volume": float(p.pooled_volume[0]),
                "tier": int(p.tier[0]),
                "unit_price": float(p.unit_price[0]),
                "unit": p.unit,
            }
            for p in outcome.prices
        ],
        "lines": [
            {
                "label": line.label,
                "kind": line.kind,
                "category": line.category,
                "timing": line.timing,
                "per_exam": line.per_exam,
                "hospital": line.hospital,
                "application": line.application,
                "amount": float(line.amount[0]),
                "formula": line.formula,
                "inputs": list(line.inputs),
            }
            for line in outcome.lines
        ],
    }


def _metering_dict(report: MeteringReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "source": report.source,
        "rows": report.rows,
        "annualisation": ANNUALISATION,
        "periods": [asdict(p) for p in report.periods],
        "metered": [m.model_dump() for m in report.metered],
        "assumed_pairs": [list(pair) for pair in report.assumed_pairs],
        "ignored": report.ignored,
    }


def _json_safe(node: Any) -> Any:
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {key: _json_safe(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_json_safe(value) for value in node]
    return node


ANNUALISATION = (
    "studies analysed (by completed jobs; a study sent again counted once a month; completed "
    "jobs where the exchange does not count studies) over the months from the hospital's first "
    "to its last month in the metering (inclusive), × 12 / that number of months"
)

METHOD = {
    "years": "year 0 holds one-off costs; years 1..horizon hold yearly costs and benefits",
    "npv": "sum over years of (benefits - costs) / (1 + discount rate) ** year",
    "roi": "(PV benefits - PV costs) / PV costs",
    "payback_year": "first operating year whose cumulative discounted cash flow is >= 0",
    "cost_per_exam": "PV costs / PV processed exams (levelised)",
    "break_even": (
        "yearly exams per hospital at which NPV = 0: PV fixed costs / (annuity × margin per exam),"
        " at the prices the current volumes reach"
    ),
    "monte_carlo": "independent inverse-CDF draws of every input with a distribution",
    "tornado": "NPV with one input at the 5th and 95th percentile of its distribution",
    "volumes": "exams/year of the modality × eligible share × uptake, unless metered",
}
