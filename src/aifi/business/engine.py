"""From a scenario to cash-flow lines: every cost and benefit, with the inputs it came from.

Each `CashLine` is one amount (per draw) that falls either once in year 0 or every operating year,
with a formula in words and the paths of the inputs it multiplies. Totals, NPV and every other
figure are sums over these lines, so any figure can be opened up to the inputs behind it.

Volumes are the same in every operating year (no ramp-up), so a yearly line is one amount.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from aifi.business import finance
from aifi.business.model import Application, BusinessCase, Hospital, Scenario
from aifi.business.quantity import Quantity
from aifi.business.tiers import average_price, tier_index, tier_price
from aifi.business.values import InputValues

SECONDS_PER_HOUR = 3600.0

Kind = Literal["cost", "benefit"]
Timing = Literal["one-off", "yearly"]


@dataclass(frozen=True)
class CashLine:
    """One cost or benefit of a scenario.

    `hospital` None means borne centrally (by the group); the per-hospital view shares it out.
    `per_exam` marks amounts proportional to volume (variable), the rest are fixed.
    """

    label: str
    kind: Kind
    category: str
    timing: Timing
    per_exam: bool
    amount: np.ndarray
    hospital: str | None
    application: str | None
    formula: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Volume:
    """Exams per year one hospital sends to one application, and where that number comes from."""

    hospital: str
    application: str
    yearly: np.ndarray
    origin: Literal["assumed", "metered"]
    formula: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class PricePoint:
    """The licence price a pool of hospitals reaches for one application."""

    application: str
    pool: tuple[str, ...]
    pooled_volume: np.ndarray
    tier: np.ndarray
    unit_price: np.ndarray
    unit: str


@dataclass
class ScenarioOutcome:
    """All lines of one scenario evaluated for `n` draws of the inputs."""

    scenario: Scenario
    hospitals: list[Hospital]
    applications: list[Application]
    horizon: int
    rate: np.ndarray
    volumes: dict[tuple[str, str], Volume]
    lines: list[CashLine] = field(default_factory=list)
    prices: list[PricePoint] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.rate.shape[0])

    def annuity(self) -> np.ndarray:
        return finance.annuity_factor(self.rate, self.horizon)

    def exams_per_year(self, hospital: str | None = None) -> np.ndarray:
        """Processed exams per operating year, for one hospital or the whole scenario."""
        total = np.zeros(self.n)
        for (hospital_id, _), volume in self.volumes.items():
            if hospital is None or hospital_id == hospital:
                total = total + volume.yearly
        return total

    def total(self, kind: Kind, timing: Timing, per_exam: bool | None = None) -> np.ndarray:
        """Sum of the lines of one kind and timing (optionally only fixed or only per-exam)."""
        total = np.zeros(self.n)
        for line in self.lines:
            if (
                line.kind == kind
                and line.timing == timing
                and (per_exam is None or line.per_exam == per_exam)
            ):
                total = total + line.amount
        return total

    def cash_flows(self) -> np.ndarray:
        """Net cash flow per draw and year, shape (n, horizon + 1); year 0 holds one-off items."""
        flows = np.zeros((self.n, self.horizon + 1))
        flows[:, 0] = self.total("benefit", "one-off") - self.total("cost", "one-off")
        yearly = self.total("benefit", "yearly") - self.total("cost", "yearly")
        flows[:, 1:] = yearly[:, None]
        return flows

    def present_value(self, kind: Kind, per_exam: bool | None = None) -> np.ndarray:
        return self.total(kind, "one-off", per_exam) + self.annuity() * self.total(
            kind, "yearly", per_exam
        )

    def npv(self) -> np.ndarray:
        return self.present_value("benefit") - self.present_value("cost")

    def cost_per_exam(self) -> np.ndarray:
        """Levelised cost per exam: PV of all costs over PV of all processed exams."""
        exams = self.exams_per_year() * self.annuity()
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(exams > 0, self.present_value("cost") / exams, np.nan)


def scenario_hospitals(case: BusinessCase, scenario: Scenario) -> list[Hospital]:
    if scenario.hospitals is None:
        return list(case.hospitals)
    return [case.hospital(h) for h in scenario.hospitals]


def scenario_applications(case: BusinessCase, scenario: Scenario) -> list[Application]:
    if scenario.applications is None:
        return list(case.applications)
    return [case.application(a) for a in scenario.applications]


def single_application_variant(scenario: Scenario, application: Application) -> Scenario:
    """The scenario restricted to one application (for "each application alone")."""
    return scenario.model_copy(
        update={
            "id": f"{scenario.id}:{application.id}",
            "name": f"{application.name} only",
            "description": f"{scenario.name}, with {application.name} as the only application",
            "applications": [application.id],
        }
    )


def evaluate(
    case: BusinessCase,
    scenario: Scenario,
    values: InputValues | None = None,
    volume_scale: np.ndarray | float = 1.0,
) -> ScenarioOutcome:
    """Every cost and benefit line of `scenario` for the draws in `values`.

    `volume_scale` multiplies every processed volume (per draw), which is how cost per exam is
    traced against volume.
    """
    values = values or InputValues()
    builder = _Builder(case, scenario, values, np.broadcast_to(volume_scale, (values.n,)))
    return builder.build()


class _Builder:
    """Collects the lines of one scenario; one method per cost or benefit family."""

    def __init__(
        self, case: BusinessCase, scenario: Scenario, values: InputValues, scale: np.ndarray
    ) -> None:
        self.case = case
        self.scenario = scenario
        self.v = values
        self.scale = scale
        hospitals = scenario_hospitals(case, scenario)
        applications = scenario_applications(case, scenario)
        self.outcome = ScenarioOutcome(
            scenario=scenario,
            hospitals=hospitals,
            applications=applications,
            horizon=int(case.horizon.value),
            rate=values(case.discount_rate),
            volumes={(h.id, a.id): self._volume(h, a) for h in hospitals for a in applications},
        )

    def build(self) -> ScenarioOutcome:
        for application in self.outcome.applications:
            self._licence(application)
            self._benefits(application)
        self._platform()
        self._procurement()
        return self.outcome

    # -- volumes ---------------------------------------------------------------------------

    def _volume(self, hospital: Hospital, application: Application) -> Volume:
        metered = self.case.metered(hospital.id, application.id)
        if metered is not None:
            return Volume(
                hospital.id,
                application.id,
                self.v(metered.volume) * self.scale,
                "metered",
                "metered on the exchange, annualised",
                (metered.volume.path,),
            )
        exams = hospital.exams_per_year[application.modality]
        yearly = self.v(exams) * self.v(application.eligible_share) * self.v(application.uptake)
        return Volume(
            hospital.id,
            application.id,
            yearly * self.scale,
            "assumed",
            f"{application.modality} exams/year × eligible share × uptake",
            (exams.path, application.eligible_share.path, application.uptake.path),
        )

    def _exams(self, hospital_id: str, application_id: str) -> np.ndarray:
        return self.outcome.volumes[(hospital_id, application_id)].yearly

    def _volume_inputs(self, hospital_id: str, application_id: str) -> tuple[str, ...]:
        return self.outcome.volumes[(hospital_id, application_id)].inputs

    # -- lines -----------------------------------------------------------------------------

    def _add(
        self,
        label: str,
        kind: Kind,
        category: str,
        timing: Timing,
        amount: np.ndarray,
        formula: str,
        inputs: tuple[str, ...],
        hospital: str | None = None,
        application: str | None = None,
        per_exam: bool = False,
    ) -> None:
        self.outcome.lines.append(
            CashLine(
                label=label,
                kind=kind,
                category=category,
                timing=timing,
                per_exam=per_exam,
                amount=np.asarray(amount, dtype=float),
                hospital=hospital,
                application=application,
                formula=formula,
                inputs=tuple(dict.fromkeys(inputs)),
            )
        )

    def _fixed(
        self,
        label: str,
        category: str,
        quantity: Quantity,
        hospital: str | None = None,
        application: str | None = None,
        factor: np.ndarray | float = 1.0,
        factor_text: str = "",
        factor_inputs: tuple[str, ...] = (),
    ) -> None:
        """A fixed cost read from one quantity; its unit decides one-off or yearly."""
        timing: Timing = "one-off" if quantity.unit == "EUR" else "yearly"
        formula = quantity.path + (f" × {factor_text}" if factor_text else "")
        self._add(
            label,
            "cost",
            category,
            timing,
            self.v(quantity) * factor,
            formula,
            (quantity.path, *factor_inputs),
            hospital,
            application,
        )

    # -- licences --------------------------------------------------------------------------

    def _pools(self) -> list[list[Hospital]]:
        if self.scenario.pooling == "joint":
            return [self.outcome.hospitals]
        return [[h] for h in self.outcome.hospitals]

    def _licence(self, application: Application) -> None:
        licence = application.licence
        thresholds = np.array([tier.from_volume.value for tier in licence.tiers])
        prices = np.stack([self.v(tier.price) for tier in licence.tiers], axis=-1)
        tier_inputs = tuple(
            path for tier in licence.tiers for path in (tier.from_volume.path, tier.price.path)
        )
        unit = licence.tiers[0].price.unit
        for pool in self._pools():
            pooled = sum((self._exams(h.id, application.id) for h in pool), np.zeros(self.v.n))
            pool_inputs = tuple(p for h in pool for p in self._volume_inputs(h.id, application.id))
            pool_text = "pooled over the group" if len(pool) > 1 else "own volume"
            if licence.model == "per_study":
                unit_price = average_price(pooled, thresholds, prices, licence.tier_mode)
            else:
                unit_price = tier_price(pooled, thresholds, prices)
            self.outcome.prices.append(
                PricePoint(
                    application.id,
                    tuple(h.id for h in pool),
                    pooled,
                    tier_index(pooled, thresholds),
                    unit_price,
                    unit,
                )
            )
            label = f"{application.name} licence"
            tier_text = (
                f"{licence.tier_mode.replace('_', '-')} tier price at the yearly volume {pool_text}"
            )
            if licence.model == "per_study":
                for hospital in pool:
                    exams = self._exams(hospital.id, application.id)
                    self._add(
                        label,
                        "cost",
                        "licence",
                        "yearly",
                        unit_price * exams,
                        f"{tier_text} (EUR/study) × exams/year",
                        tier_inputs + pool_inputs,
                        hospital.id,
                        application.id,
                        per_exam=True,
                    )
            elif licence.model == "per_year":
                for hospital in pool:
                    self._add(
                        label,
                        "cost",
                        "licence",
                        "yearly",
                        unit_price,
                        f"{tier_text} (EUR/hospital/year)",
                        tier_inputs + pool_inputs,
                        hospital.id,
                        application.id,
                    )
            else:
                self._add(
                    label,
                    "cost",
                    "licence",
                    "yearly",
                    unit_price,
                    f"{tier_text} (EUR/year for the pool)",
                    tier_inputs + pool_inputs,
                    pool[0].id if len(pool) == 1 else None,
                    application.id,
                )

    # -- benefits --------------------------------------------------------------------------

    def _benefits(self, application: Application) -> None:
        hourly = self.case.radiologist_cost_per_hour
        seconds = application.seconds_saved_per_exam
        for hospital in self.outcome.hospitals:
            exams = self._exams(hospital.id, application.id)
            volume_inputs = self._volume_inputs(hospital.id, application.id)
            self._add(
                f"{application.name}: radiologist time saved",
                "benefit",
                "radiologist time",
                "yearly",
                exams * self.v(seconds) / SECONDS_PER_HOUR * self.v(hourly),
                f"exams/year × {seconds.path} / 3600 × {hourly.path}",
                (*volume_inputs, seconds.path, hourly.path),
                hospital.id,
                application.id,
                per_exam=True,
            )
            for effect in application.downstream:
                self._add(
                    f"{application.name}: {effect.name}",
                    "benefit",
                    "downstream",
                    "yearly",
                    exams * self.v(effect.per_exam) * self.v(effect.unit_value),
                    f"exams/year × {effect.per_exam.path} × {effect.unit_value.path}",
                    (*volume_inputs, effect.per_exam.path, effect.unit_value.path),
                    hospital.id,
                    application.id,
                    per_exam=True,
                )

    # -- platform --------------------------------------------------------------------------

    def _platform(self) -> None:
        platforms = self.case.platforms
        hospitals = self.outcome.hospitals
        if self.scenario.platform == "national" and platforms.national is not None:
            national = platforms.national
            connected = national.connected_hospitals_nationally
            share = np.minimum(1.0, len(hospitals) / self.v(connected))
            share_text = f"min(1, {len(hospitals)} hospitals / {connected.path})"
            self._fixed(
                "National platform: build (share)",
                "platform",
                national.central_one_off,
                factor=share,
                factor_text=share_text,
                factor_inputs=(connected.path,),
            )
            self._fixed(
                "National platform: operation (share)",
                "platform",
                national.central_yearly,
                factor=share,
                factor_text=share_text,
                factor_inputs=(connected.path,),
            )
            for hospital in hospitals:
                self._fixed(
                    "National platform: connection",
                    "platform",
                    national.connection_per_hospital,
                    hospital.id,
                )
                self._fixed(
                    "National platform: yearly per hospital",
                    "platform",
                    national.yearly_per_hospital,
                    hospital.id,
                )
        elif self.scenario.platform == "commercial" and platforms.commercial is not None:
            commercial = platforms.commercial
            for hospital in hospitals:
                self._fixed(
                    "Commercial platform: onboarding",
                    "platform",
                    commercial.onboarding_per_hospital,
                    hospital.id,
                )
                self._fixed(
                    "Commercial platform: hospital fee",
                    "platform",
                    commercial.fee_per_hospital,
                    hospital.id,
                )
                exams = self.outcome.exams_per_year(hospital.id)
                self._add(
                    "Commercial platform: study fees",
                    "cost",
                    "platform",
                    "yearly",
                    exams * self.v(commercial.fee_per_study),
                    f"exams/year (all applications) × {commercial.fee_per_study.path}",
                    (
                        *(
                            p
                            for a in self.outcome.applications
                            for p in self._volume_inputs(hospital.id, a.id)
                        ),
                        commercial.fee_per_study.path,
                    ),
                    hospital.id,
                    per_exam=True,
                )

    # -- procurement -----------------------------------------------------------------------

    def _integration_saving(self) -> Quantity | None:
        """The platform's saving on per-application integration, if the scenario has a platform."""
        if self.scenario.platform == "none":
            return None
        platform = getattr(self.case.platforms, self.scenario.platform)
        return platform.integration_saving if platform is not None else None

    def _per_hospital_item(
        self, label: str, quantity: Quantity, hospital_id: str, application_id: str, item: str
    ) -> None:
        saving = self._integration_saving() if item == "integration" else None
        if saving is None:
            self._fixed(label, "procurement", quantity, hospital_id, application_id)
            return
        self._fixed(
            label,
            "procurement",
            quantity,
            hospital_id,
            application_id,
            factor=1.0 - self.v(saving),
            factor_text=f"(1 - {saving.path})",
            factor_inputs=(saving.path,),
        )

    def _procurement(self) -> None:
        procurement = self.case.procurement
        for application in self.outcome.applications:
            if self.scenario.procurement == "local" and procurement.local is not None:
                local = procurement.local
                for hospital in self.outcome.hospitals:
                    for item in ("tender", "integration", "validation", "training", "governance"):
                        self._per_hospital_item(
                            f"{application.name}: local {item}",
                            getattr(local, item),
                            hospital.id,
                            application.id,
                            item,
                        )
            elif self.scenario.procurement == "central" and procurement.central is not None:
                central = procurement.central
                for item in ("tender", "validation", "governance"):
                    self._fixed(
                        f"{application.name}: central {item}",
                        "procurement",
                        getattr(central.per_application, item),
                        application=application.id,
                    )
                for hospital in self.outcome.hospitals:
                    for item in ("integration", "training", "governance"):
                        self._per_hospital_item(
                            f"{application.name}: {item} in hospital",
                            getattr(central.per_hospital_per_application, item),
                            hospital.id,
                            application.id,
                            item,
                        )
