"""The figures people read from an evaluated scenario: NPV, ROI, payback, cost per exam, break-even.

These work on the first draw of an outcome (the base case); Monte Carlo uses `ScenarioOutcome.npv`
directly on all draws.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from aifi.business import finance
from aifi.business.engine import CashLine, ScenarioOutcome


def _first(array: np.ndarray) -> float:
    return float(np.asarray(array).reshape(-1)[0])


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ScenarioMetrics:
    """Headline figures of one scenario in the base case (EUR unless named otherwise)."""

    scenario: str
    name: str
    hospitals: int
    exams_per_year: float
    one_off_costs: float
    yearly_costs: float
    yearly_benefits: float
    pv_costs: float
    pv_benefits: float
    npv: float
    roi: float | None
    payback_year: int | None
    cost_per_exam: float | None
    mean_exams_per_hospital: float
    break_even_exams_per_hospital: float | None
    cash_flows: list[float]
    cumulative_discounted: list[float]
    pv_costs_by_category: dict[str, float]
    pv_benefits_by_category: dict[str, float]


def scenario_metrics(outcome: ScenarioOutcome) -> ScenarioMetrics:
    """Headline figures of `outcome`'s first draw."""
    rate = _first(outcome.rate)
    flows = outcome.cash_flows()[0]
    pv_costs = _first(outcome.present_value("cost"))
    pv_benefits = _first(outcome.present_value("benefit"))
    hospitals = len(outcome.hospitals)
    exams = _first(outcome.exams_per_year())
    return ScenarioMetrics(
        scenario=outcome.scenario.id,
        name=outcome.scenario.name,
        hospitals=hospitals,
        exams_per_year=exams,
        one_off_costs=_first(outcome.total("cost", "one-off")),
        yearly_costs=_first(outcome.total("cost", "yearly")),
        yearly_benefits=_first(outcome.total("benefit", "yearly")),
        pv_costs=pv_costs,
        pv_benefits=pv_benefits,
        npv=pv_benefits - pv_costs,
        roi=_finite_or_none(float(finance.roi(pv_benefits, pv_costs))),
        payback_year=finance.payback_year(flows, rate),
        cost_per_exam=_finite_or_none(_first(outcome.cost_per_exam())),
        mean_exams_per_hospital=exams / hospitals,
        break_even_exams_per_hospital=break_even_exams_per_hospital(outcome),
        cash_flows=[float(x) for x in flows],
        cumulative_discounted=[float(x) for x in finance.cumulative_discounted(flows, rate)],
        pv_costs_by_category=_pv_by_category(outcome, "cost"),
        pv_benefits_by_category=_pv_by_category(outcome, "benefit"),
    )


def _line_pv(line: CashLine, annuity: float) -> float:
    amount = _first(line.amount)
    return amount if line.timing == "one-off" else amount * annuity


def _pv_by_category(outcome: ScenarioOutcome, kind: str) -> dict[str, float]:
    annuity = _first(outcome.annuity())
    totals: dict[str, float] = defaultdict(float)
    for line in outcome.lines:
        if line.kind == kind:
            totals[line.category] += _line_pv(line, annuity)
    return dict(totals)


def break_even_exams_per_hospital(outcome: ScenarioOutcome) -> float | None:
    """Yearly exams per hospital at which NPV is zero, at the scenario's prices and exam mix.

    Fixed costs (present value) must be earned back by the margin per exam (benefits minus
    per-exam costs, over the horizon): ``E* = PV fixed / (annuity × margin)``, divided over the
    hospitals. Prices stay at the tiers the current volumes reach. None when each exam loses
    money (no volume breaks even).
    """
    exams = _first(outcome.exams_per_year())
    if exams <= 0:
        return None
    annuity = _first(outcome.annuity())
    pv_fixed = _first(outcome.present_value("cost", per_exam=False))
    margin = (
        _first(outcome.total("benefit", "yearly")) - _first(outcome.total("cost", "yearly", True))
    ) / exams
    if margin <= 0:
        return None
    return pv_fixed / (annuity * margin) / len(outcome.hospitals)


@dataclass(frozen=True)
class HospitalMetrics:
    """One hospital's share of a scenario: its own lines plus its part of the central ones."""

    hospital: str
    name: str
    size_class: str
    exams_per_year: float
    one_off_costs: float
    yearly_costs: float
    yearly_benefits: float
    pv_costs: float
    pv_benefits: float
    npv: float
    cost_per_exam: float | None
    break_even_exams_per_year: float | None


def central_shares(outcome: ScenarioOutcome, line: CashLine) -> dict[str, float]:
    """How a centrally borne line is split over the scenario's hospitals (shares sum to 1).

    By processed volume (of the line's application, or of all applications for platform lines),
    or equally, as the scenario says; equally also when there is no volume to split by.
    """
    hospitals = [h.id for h in outcome.hospitals]
    if outcome.scenario.central_cost_sharing == "volume":
        weights = {
            h: sum(
                _first(v.yearly)
                for (hid, aid), v in outcome.volumes.items()
                if hid == h and (line.application is None or aid == line.application)
            )
            for h in hospitals
        }
        total = sum(weights.values())
        if total > 0:
            return {h: w / total for h, w in weights.items()}
    return {h: 1.0 / len(hospitals) for h in hospitals}


def hospital_metrics(outcome: ScenarioOutcome) -> list[HospitalMetrics]:
    """Per-hospital figures of the first draw; their costs and benefits add up to the scenario's.

    A hospital's break-even volume is the exams per year at which its margin per exam (benefits
    minus its own per-exam costs) earns back its own fixed costs plus its present share of the
    central costs, at the prices the scenario's volumes reach.
    """
    annuity = _first(outcome.annuity())
    sums: dict[str, dict[str, float]] = {h.id: defaultdict(float) for h in outcome.hospitals}
    for line in outcome.lines:
        shares = {line.hospital: 1.0} if line.hospital else central_shares(outcome, line)
        pv = _line_pv(line, annuity)
        amount = _first(line.amount)
        for hospital_id, share in shares.items():
            acc = sums[hospital_id]
            if line.kind == "benefit":
                acc["pv_benefits"] += share * pv
                acc["yearly_benefits"] += share * amount
                continue
            acc["pv_costs"] += share * pv
            acc[f"{line.timing}_costs"] += share * amount
            if line.per_exam and line.hospital is not None:
                acc["pv_variable"] += share * pv
            else:
                acc["pv_fixed"] += share * pv
    metrics = []
    for hospital in outcome.hospitals:
        acc = sums[hospital.id]
        exams = _first(outcome.exams_per_year(hospital.id))
        pv_exams = exams * annuity
        margin = (acc["pv_benefits"] - acc["pv_variable"]) / pv_exams if pv_exams > 0 else 0.0
        metrics.append(
            HospitalMetrics(
                hospital=hospital.id,
                name=hospital.name,
                size_class=hospital.size_class,
                exams_per_year=exams,
                one_off_costs=acc["one-off_costs"],
                yearly_costs=acc["yearly_costs"],
                yearly_benefits=acc["yearly_benefits"],
                pv_costs=acc["pv_costs"],
                pv_benefits=acc["pv_benefits"],
                npv=acc["pv_benefits"] - acc["pv_costs"],
                cost_per_exam=acc["pv_costs"] / pv_exams if pv_exams > 0 else None,
                break_even_exams_per_year=(
                    acc["pv_fixed"] / (margin * annuity) if margin > 0 else None
                ),
            )
        )
    return metrics


@dataclass(frozen=True)
class SizeClassMetrics:
    """Mean figures per hospital for the hospitals of one size class."""

    size_class: str
    hospitals: int
    exams_per_year: float
    one_off_costs: float
    yearly_costs: float
    pv_costs: float
    npv: float
    cost_per_exam: float | None


def size_class_metrics(hospitals: list[HospitalMetrics]) -> list[SizeClassMetrics]:
    """Cost per hospital by size: means over the hospitals of each size class (first-seen order)."""
    groups: dict[str, list[HospitalMetrics]] = defaultdict(list)
    for hospital in hospitals:
        groups[hospital.size_class].append(hospital)
    result = []
    for size_class, members in groups.items():
        count = len(members)
        exams = sum(m.exams_per_year for m in members) / count
        pv_costs = sum(m.pv_costs for m in members) / count
        per_exam = [m.cost_per_exam for m in members if m.cost_per_exam is not None]
        result.append(
            SizeClassMetrics(
                size_class=size_class,
                hospitals=count,
                exams_per_year=exams,
                one_off_costs=sum(m.one_off_costs for m in members) / count,
                yearly_costs=sum(m.yearly_costs for m in members) / count,
                pv_costs=pv_costs,
                npv=sum(m.npv for m in members) / count,
                cost_per_exam=sum(per_exam) / len(per_exam) if per_exam else None,
            )
        )
    return result
