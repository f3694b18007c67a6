"""The business case as data: hospitals, AI applications, platforms, procurement, scenarios.

A `BusinessCase` is what a YAML file says, validated. It holds inputs only; `engine` turns a
scenario of it into cash flows. Cross-references (a scenario naming an unknown application, an
application on a modality a hospital has no volume for) are checked here, so an object that exists
can be computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aifi.business.quantity import (
    Beds,
    ExamsPerYear,
    Fraction,
    Hospitals,
    Money,
    MoneyPerHospitalYear,
    MoneyPerHour,
    MoneyPerStudy,
    MoneyPerYear,
    Quantity,
    RatePerYear,
    Seconds,
    StudiesPerYear,
    Years,
    expect,
)

Identifier = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)
LicenceModel = Literal["per_study", "per_year", "enterprise"]

#: The price unit each licence model is quoted in.
LICENCE_PRICE_UNITS: dict[str, str] = {
    "per_study": "EUR/study",
    "per_year": "EUR/hospital/year",
    "enterprise": "EUR/year",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hospital(_Strict):
    """A hospital organisation: how big it is and how many exams it makes per modality a year."""

    id: str = Identifier
    name: str
    size_class: str = Field(min_length=1, description="e.g. academic, large, medium, small")
    exchange_id: str | None = Field(default=None, description="organisation id on the exchange")
    beds: Beds | None = None
    exams_per_year: dict[str, ExamsPerYear] = Field(min_length=1)


class Tier(_Strict):
    """One price tier: from this pooled yearly volume of the application on, this price holds."""

    from_volume: StudiesPerYear
    price: Quantity


class Licence(_Strict):
    """How a vendor charges for an application, with price tiers by pooled yearly volume.

    per_study: EUR per study; per_year: EUR per hospital per year; enterprise: EUR per year for the
    whole procuring pool. `all_units` prices the whole volume at the tier reached; `graduated`
    prices each slice of volume at its own tier (per_study only).
    """

    model: LicenceModel
    tier_mode: Literal["all_units", "graduated"] = "all_units"
    tiers: list[Tier] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_tiers(self) -> Licence:
        unit = LICENCE_PRICE_UNITS[self.model]
        check_price = expect(unit)
        for index, tier in enumerate(self.tiers):
            try:
                check_price(tier.price)
            except ValueError as err:
                raise ValueError(f"tiers[{index}].price: {err} for a {self.model} licence") from err
        thresholds = [tier.from_volume.value for tier in self.tiers]
        if thresholds[0] != 0:
            raise ValueError(f"tiers[0].from_volume must be 0 (got {thresholds[0]:g})")
        for index in range(1, len(thresholds)):
            if thresholds[index] <= thresholds[index - 1]:
                raise ValueError(
                    f"tiers[{index}].from_volume {thresholds[index]:g} must exceed "
                    f"tiers[{index - 1}].from_volume {thresholds[index - 1]:g}"
                )
        if self.tier_mode == "graduated" and self.model != "per_study":
            raise ValueError(f"graduated tiers apply to per_study licences, not {self.model}")
        return self


class DownstreamEffect(_Strict):
    """A consequence per processed exam outside the radiology department, and its price.

    Units must chain: ``bed-day/exam`` with ``EUR/bed-day``.
    """

    id: str = Identifier
    name: str
    per_exam: Quantity
    unit_value: Quantity

    @model_validator(mode="after")
    def _check_units(self) -> DownstreamEffect:
        unit = self.per_exam.unit
        if not unit.endswith("/exam") or unit == "/exam":
            raise ValueError(f"per_exam: unit must be '<thing>/exam' (got {unit!r})")
        thing = unit.removesuffix("/exam")
        expect(unit)(self.per_exam)
        expected_price_unit = f"EUR/{thing}"
        if self.unit_value.unit != expected_price_unit:
            raise ValueError(
                f"unit_value: unit must be {expected_price_unit!r} to match per_exam {unit!r} "
                f"(got {self.unit_value.unit!r})"
            )
        expect(expected_price_unit)(self.unit_value)
        return self


class Application(_Strict):
    """An AI application: which exams it takes, how it is paid for, what it saves."""

    id: str = Identifier
    name: str
    exchange_id: str | None = Field(default=None, description="product id on the exchange")
    modality: str
    eligible_share: Fraction
    uptake: Fraction
    seconds_saved_per_exam: Seconds
    downstream: list[DownstreamEffect] = Field(default_factory=list)
    licence: Licence


class NationalPlatform(_Strict):
    """The national exchange: central costs shared by every connected hospital, plus a connection.

    `integration_saving` is the share of each hospital's per-application integration cost that the
    platform saves: the hospital connects once, and products come through the platform.
    """

    integration_saving: Fraction
    central_one_off: Money
    central_yearly: MoneyPerYear
    connected_hospitals_nationally: Hospitals
    connection_per_hospital: Money
    yearly_per_hospital: MoneyPerYear


class CommercialPlatform(_Strict):
    """A commercial AI marketplace: onboarding, a fee per hospital and a fee per study.

    `integration_saving` as for the national platform.
    """

    integration_saving: Fraction
    onboarding_per_hospital: Money
    fee_per_hospital: MoneyPerHospitalYear
    fee_per_study: MoneyPerStudy


class Platforms(_Strict):
    national: NationalPlatform | None = None
    commercial: CommercialPlatform | None = None


class LocalProcurement(_Strict):
    """What each hospital spends on each application when it procures on its own."""

    tender: Money
    integration: Money
    validation: Money
    training: Money
    governance: MoneyPerYear


class CentralPerApplication(_Strict):
    """Done once per application for the whole group when procurement is central."""

    tender: Money
    validation: Money
    governance: MoneyPerYear


class CentralPerHospital(_Strict):
    """What is still done in each hospital for each application under central procurement."""

    integration: Money
    training: Money
    governance: MoneyPerYear


class CentralProcurement(_Strict):
    per_application: CentralPerApplication
    per_hospital_per_application: CentralPerHospital


class Procurement(_Strict):
    local: LocalProcurement | None = None
    central: CentralProcurement | None = None


class Scenario(_Strict):
    """One way of doing it: platform, procurement, price pooling, and which hospitals and apps.

    `central_cost_sharing` says how costs borne centrally are split over hospitals in the
    per-hospital view: by processed volume or equally. Scenario totals do not depend on it.
    """

    id: str = Identifier
    name: str
    description: str = ""
    platform: Literal["national", "commercial", "none"]
    procurement: Literal["central", "local"]
    pooling: Literal["joint", "alone"]
    applications: list[str] | None = None
    hospitals: list[str] | None = None
    central_cost_sharing: Literal["volume", "equal"] = "volume"


class Comparison(_Strict):
    """Scenarios to read side by side, with the question they answer."""

    name: str
    question: str = ""
    scenarios: list[str] = Field(min_length=2)


class MeteredVolume(_Strict):
    """A yearly volume measured on the exchange; it replaces the assumed volume for its pair."""

    hospital: str
    application: str
    volume: ExamsPerYear
    jobs_completed: int = Field(ge=0)
    #: The studies those jobs analysed, a study sent again counted once (the volume's count);
    #: None when the exchange's release did not say, and the jobs were counted.
    studies_completed: int | None = Field(default=None, ge=0)
    jobs_failed: int = Field(ge=0)
    months: int = Field(ge=1)
    first_month: str = Field(pattern=r"^\d{4}-\d{2}$")
    last_month: str = Field(pattern=r"^\d{4}-\d{2}$")


class BusinessCase(_Strict):
    """Everything one business-case file says."""

    name: str
    description: str = ""
    currency: Literal["EUR"] = "EUR"
    price_year: int
    horizon: Years
    discount_rate: RatePerYear
    radiologist_cost_per_hour: MoneyPerHour
    hospitals: list[Hospital] = Field(min_length=1)
    applications: list[Application] = Field(min_length=1)
    platforms: Platforms = Field(default_factory=Platforms)
    procurement: Procurement
    scenarios: list[Scenario] = Field(min_length=1)
    base_scenario: str | None = None
    comparisons: list[Comparison] = Field(default_factory=list)
    metered_volumes: list[MeteredVolume] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_references(self) -> BusinessCase:
        for label, items in (
            ("hospitals", self.hospitals),
            ("applications", self.applications),
            ("scenarios", self.scenarios),
        ):
            seen: set[str] = set()
            for item in items:
                if item.id in seen:
                    raise ValueError(f"{label}[{item.id}]: id is used twice")
                seen.add(item.id)
        hospital_ids = {h.id for h in self.hospitals}
        application_ids = {a.id for a in self.applications}
        scenario_ids = {s.id for s in self.scenarios}
        for scenario in self.scenarios:
            where = f"scenarios[{scenario.id}]"
            for app_id in scenario.applications or []:
                if app_id not in application_ids:
                    raise ValueError(f"{where}.applications: unknown application {app_id!r}")
            for hospital_id in scenario.hospitals or []:
                if hospital_id not in hospital_ids:
                    raise ValueError(f"{where}.hospitals: unknown hospital {hospital_id!r}")
            if scenario.platform != "none" and getattr(self.platforms, scenario.platform) is None:
                raise ValueError(
                    f"{where}.platform: {scenario.platform!r} needs platforms.{scenario.platform}"
                )
            if getattr(self.procurement, scenario.procurement) is None:
                raise ValueError(
                    f"{where}.procurement: {scenario.procurement!r} needs "
                    f"procurement.{scenario.procurement}"
                )
        for app in self.applications:
            for hospital in self.hospitals:
                if app.modality not in hospital.exams_per_year:
                    raise ValueError(
                        f"hospitals[{hospital.id}].exams_per_year: no {app.modality!r} volume, "
                        f"which applications[{app.id}] needs"
                    )
        if self.base_scenario is not None and self.base_scenario not in scenario_ids:
            raise ValueError(f"base_scenario: unknown scenario {self.base_scenario!r}")
        for index, comparison in enumerate(self.comparisons):
            for scenario_id in comparison.scenarios:
                if scenario_id not in scenario_ids:
                    raise ValueError(
                        f"comparisons[{index}].scenarios: unknown scenario {scenario_id!r}"
                    )
        for metered in self.metered_volumes:
            if metered.hospital not in hospital_ids or metered.application not in application_ids:
                raise ValueError(
                    f"metered_volumes[{metered.hospital}/{metered.application}]: "
                    f"unknown hospital or application"
                )
        return self

    def hospital(self, hospital_id: str) -> Hospital:
        return next(h for h in self.hospitals if h.id == hospital_id)

    def application(self, application_id: str) -> Application:
        return next(a for a in self.applications if a.id == application_id)

    def scenario(self, scenario_id: str) -> Scenario:
        return next(s for s in self.scenarios if s.id == scenario_id)

    @property
    def base(self) -> Scenario:
        """The scenario the single-application variants, tornado and per-hospital view use."""
        return self.scenario(self.base_scenario) if self.base_scenario else self.scenarios[0]

    def metered(self, hospital_id: str, application_id: str) -> MeteredVolume | None:
        return next(
            (
                m
                for m in self.metered_volumes
                if m.hospital == hospital_id and m.application == application_id
            ),
            None,
        )


def iter_quantities(node: object, path: str = "") -> Iterator[tuple[str, Quantity]]:
    """Every quantity under `node` with its readable path, e.g. ``hospitals[umc].beds``.

    List items are named by their id where they have one, so a path survives reordering.
    """
    if isinstance(node, Quantity):
        yield path, node
        return
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            child = getattr(node, name)
            yield from iter_quantities(child, f"{path}.{name}" if path else name)
    elif isinstance(node, dict):
        for key, child in node.items():
            yield from iter_quantities(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from iter_quantities(child, f"{path}[{_item_name(child, index)}]")


def _item_name(item: object, index: int) -> str:
    if isinstance(item, MeteredVolume):
        return f"{item.hospital}/{item.application}"
    item_id = getattr(item, "id", None)
    return item_id if isinstance(item_id, str) else str(index)


def assign_paths(case: BusinessCase) -> BusinessCase:
    """Give every quantity of `case` its path, so results can name the inputs they used."""
    for path, quantity in iter_quantities(case):
        quantity._path = path
    return case
