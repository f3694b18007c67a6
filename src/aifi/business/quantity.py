"""One input number of a business case: its value, unit, source and (optionally) its uncertainty.

Every number the engine uses is a `Quantity`, so every result can be traced back to an input and
every input to the source that justifies it. The unit is checked against the field it fills (a
yearly cost must say `EUR/year`), which catches the most common modelling slip: a one-off amount
typed where a yearly one was meant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

#: Source texts that say nothing: a default with one of these has no source.
PLACEHOLDER_SOURCES = frozenset({"?", "-", "n/a", "na", "none", "tbd", "todo", "unknown", "source"})

#: A source that starts with this word is an assumption, not a published figure; reports count them.
ASSUMPTION_PREFIX = "assumption"


class _Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def frozen(self, value: float) -> Any:
        """The scipy distribution around the quantity's base-case `value`."""
        raise NotImplementedError

    def check(self, value: float) -> None:
        """Raise ValueError when the base-case value lies outside the distribution's support."""


class Triangular(_Distribution):
    """Triangular between `low` and `high`, with the base-case value as its mode."""

    kind: Literal["triangular"]
    low: float
    high: float

    def frozen(self, value: float) -> Any:
        from scipy import stats  # imported on first use: keeps `aifi` start-up fast

        width = self.high - self.low
        return stats.triang(c=(value - self.low) / width, loc=self.low, scale=width)

    def check(self, value: float) -> None:
        if not self.low < self.high:
            raise ValueError(
                f"triangular distribution needs low < high (got {self.low}, {self.high})"
            )
        if not self.low <= value <= self.high:
            raise ValueError(
                f"value {value} lies outside its triangular range [{self.low}, {self.high}]"
            )


class Uniform(_Distribution):
    """Uniform between `low` and `high`; the base-case value must lie between them."""

    kind: Literal["uniform"]
    low: float
    high: float

    def frozen(self, value: float) -> Any:
        from scipy import stats

        return stats.uniform(loc=self.low, scale=self.high - self.low)

    def check(self, value: float) -> None:
        if not self.low < self.high:
            raise ValueError(f"uniform distribution needs low < high (got {self.low}, {self.high})")
        if not self.low <= value <= self.high:
            raise ValueError(
                f"value {value} lies outside its uniform range [{self.low}, {self.high}]"
            )


class Normal(_Distribution):
    """Normal around the base-case value with standard deviation `sd`, optionally truncated."""

    kind: Literal["normal"]
    sd: float = Field(gt=0)
    low: float | None = None
    high: float | None = None

    def frozen(self, value: float) -> Any:
        from scipy import stats

        a = -math.inf if self.low is None else (self.low - value) / self.sd
        b = math.inf if self.high is None else (self.high - value) / self.sd
        return stats.truncnorm(a, b, loc=value, scale=self.sd)

    def check(self, value: float) -> None:
        if self.low is not None and value < self.low:
            raise ValueError(f"value {value} lies below its normal distribution's low {self.low}")
        if self.high is not None and value > self.high:
            raise ValueError(f"value {value} lies above its normal distribution's high {self.high}")


Distribution = Annotated[Triangular | Uniform | Normal, Field(discriminator="kind")]


class Quantity(BaseModel):
    """A number with its unit and its source; the engine reads nothing else.

    `path` is set after loading (e.g. ``applications[fracture].uptake``): results name the inputs
    they came from by it, and Monte Carlo draws are keyed by it.
    """

    model_config = ConfigDict(extra="forbid")

    value: float
    unit: str = Field(min_length=1)
    source: str
    distribution: Distribution | None = None
    note: str | None = None

    _path: str = PrivateAttr(default="")
    _bounds: tuple[float, float] = PrivateAttr(default=(-math.inf, math.inf))

    @model_validator(mode="after")
    def _check(self) -> Quantity:
        if not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number (got {self.value})")
        text = self.source.strip()
        if len(text) < 5 or text.lower() in PLACEHOLDER_SOURCES:
            raise ValueError(
                f"source must say where the value comes from (got {self.source!r}); "
                f"write 'Assumption: <reasoning>' when there is no published figure"
            )
        if self.distribution is not None:
            self.distribution.check(self.value)
        return self

    @property
    def path(self) -> str:
        return self._path

    @property
    def bounds(self) -> tuple[float, float]:
        """The range the field allows; Monte Carlo draws are clipped to it."""
        return self._bounds

    @property
    def is_assumption(self) -> bool:
        return self.source.strip().lower().startswith(ASSUMPTION_PREFIX)

    def quantiles(self, probabilities: np.ndarray) -> np.ndarray:
        """The values at `probabilities` of this input's distribution, clipped to its field range.

        Without a distribution every quantile is the base-case value.
        """
        probabilities = np.asarray(probabilities, dtype=float)
        if self.distribution is None:
            return np.full(probabilities.shape, self.value)
        values = np.asarray(self.distribution.frozen(self.value).ppf(probabilities), dtype=float)
        low, high = self._bounds
        return np.clip(values, low, high)


def expect(
    unit: str | tuple[str, ...],
    low: float = 0.0,
    high: float = math.inf,
    integer: bool = False,
    uncertain: bool = True,
) -> Callable[[Quantity], Quantity]:
    """A field check: the quantity has this unit and its value (and range) lies in [low, high]."""
    units = (unit,) if isinstance(unit, str) else unit

    def check(q: Quantity) -> Quantity:
        if q.unit not in units:
            wanted = " or ".join(repr(u) for u in units)
            raise ValueError(f"unit must be {wanted} (got {q.unit!r})")
        if not low <= q.value <= high:
            raise ValueError(
                f"value {q.value} {q.unit} lies outside the allowed range [{low}, {high}]"
            )
        if integer and q.value != int(q.value):
            raise ValueError(f"value must be a whole number (got {q.value})")
        if q.distribution is not None:
            if not uncertain:
                raise ValueError("this input cannot carry a distribution")
            d = q.distribution
            if isinstance(d, Triangular | Uniform) and (d.low < low or d.high > high):
                raise ValueError(
                    f"distribution range [{d.low}, {d.high}] leaves the allowed range "
                    f"[{low}, {high}]"
                )
        q._bounds = (low, high)
        return q

    return check


Money = Annotated[Quantity, AfterValidator(expect("EUR"))]
MoneyPerYear = Annotated[Quantity, AfterValidator(expect("EUR/year"))]
MoneyPerHospitalYear = Annotated[Quantity, AfterValidator(expect("EUR/hospital/year"))]
MoneyPerStudy = Annotated[Quantity, AfterValidator(expect("EUR/study"))]
MoneyPerHour = Annotated[Quantity, AfterValidator(expect("EUR/hour"))]
Fraction = Annotated[Quantity, AfterValidator(expect("fraction", high=1.0))]
Seconds = Annotated[Quantity, AfterValidator(expect("s"))]
ExamsPerYear = Annotated[Quantity, AfterValidator(expect("exams/year"))]
StudiesPerYear = Annotated[Quantity, AfterValidator(expect("studies/year", uncertain=False))]
Beds = Annotated[Quantity, AfterValidator(expect("beds", integer=True))]
Hospitals = Annotated[Quantity, AfterValidator(expect("hospitals", low=1.0, integer=True))]
Years = Annotated[
    Quantity, AfterValidator(expect("years", low=1.0, high=50.0, integer=True, uncertain=False))
]
RatePerYear = Annotated[Quantity, AfterValidator(expect("1/year", high=1.0))]
