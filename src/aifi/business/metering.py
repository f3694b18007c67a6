"""Volumes from what really ran: the exchange's metering, mapped onto a business case.

The exchange answers ``GET {url}/metering`` (operator API key as a Bearer token, optional
``since``/``until`` months) with one row per hospital × product × month. `apply_metering` is
pure: it matches rows to the case's hospitals and applications by their `exchange_id` and turns
studies analysed into yearly volumes, so it can be checked without any exchange.

A study analysed is counted once in a month however many jobs it took (sent again after the
exchange's store lost its results, say): the exchange's `studies_completed`. An exchange of an
earlier release does not send that figure: its completed jobs are counted instead, and the
report says so (no studies for that hospital, and the volume's source names the jobs).

Annualisation: a hospital's volume for an application is its studies analysed over the months from
the hospital's first to its last month in the metering (inclusive, whatever the product), times
12 / that number of months. A month inside that span without rows counts as a month without jobs.
A pair is metered when both its hospital and its product appear in the metering; a pair with no
rows of its own is then metered at zero. Pairs whose hospital or product do not appear keep their
assumed volume.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, Field, ValidationError

from aifi.business.model import BusinessCase, MeteredVolume, assign_paths

MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


class MeteringRow(BaseModel):
    """One row of the exchange's metering: one hospital, one product, one month."""

    hospital: str
    hospital_name: str = ""
    product: str
    month: str = Field(pattern=MONTH_PATTERN)
    jobs_completed: int = Field(ge=0)
    studies_completed: int | None = Field(default=None, ge=0)
    jobs_failed: int = Field(ge=0)
    input_bytes: int = Field(ge=0)

    @property
    def studies(self) -> int:
        """The studies analysed: the exchange's count, or (an earlier release's exchange
        sends none) its completed jobs."""
        return self.jobs_completed if self.studies_completed is None else self.studies_completed


class MeteringResponse(BaseModel):
    rows: list[MeteringRow]


class MeteringError(RuntimeError):
    """The exchange's metering could not be read; the message says what to do (never the key)."""


def fetch_metering(
    url: str,
    api_key: str,
    since: str | None = None,
    until: str | None = None,
    client: httpx.Client | None = None,
    timeout: float = 30.0,
) -> list[MeteringRow]:
    """The metering rows of the exchange at `url`, read with the operator's API key.

    Raises:
        MeteringError: the exchange refused the key (401), answered something else than 200 with
            rows of the agreed shape, or could not be reached.
    """
    endpoint = url.rstrip("/") + "/metering"
    params = {key: value for key, value in (("since", since), ("until", until)) if value}
    headers = {"Authorization": f"Bearer {api_key}"}
    own_client = client is None
    http = client or httpx.Client(timeout=timeout)
    try:
        response = http.get(endpoint, params=params, headers=headers)
    except httpx.HTTPError as err:
        raise MeteringError(f"could not reach the exchange at {endpoint}: {err}") from err
    finally:
        if own_client:
            http.close()
    if response.status_code == 401:
        raise MeteringError(
            f"the exchange at {endpoint} refused the API key (401): pass the operator's key "
            f"with --api-key or AIFI_API_KEY"
        )
    if response.status_code != 200:
        raise MeteringError(f"the exchange at {endpoint} answered {response.status_code}")
    try:
        return MeteringResponse.model_validate(response.json()).rows
    except (ValueError, ValidationError) as err:
        raise MeteringError(
            f"the exchange at {endpoint} sent metering of another shape: {err}"
        ) from err


def months_inclusive(first: str, last: str) -> int:
    """Calendar months from `first` to `last` (YYYY-MM), both counted: 2025-02..2025-07 is 6."""
    first_year, first_month = (int(part) for part in first.split("-"))
    last_year, last_month = (int(part) for part in last.split("-"))
    return (last_year - first_year) * 12 + (last_month - first_month) + 1


@dataclass(frozen=True)
class HospitalPeriod:
    """The months a hospital appears in the metering, and its totals over all products."""

    hospital: str
    exchange_id: str
    first_month: str
    last_month: str
    months: int
    jobs_completed: int
    #: None when the exchange did not count studies (an earlier release): its jobs were used.
    studies_completed: int | None
    jobs_failed: int
    input_bytes: int


@dataclass(frozen=True)
class MeteringReport:
    """What the metering said and how it was used: for the report's "volumes" section."""

    source: str
    rows: int
    periods: list[HospitalPeriod]
    metered: list[MeteredVolume]
    assumed_pairs: list[tuple[str, str]]
    ignored: list[str] = field(default_factory=list)


def apply_metering(
    case: BusinessCase, rows: Iterable[MeteringRow], source: str
) -> tuple[BusinessCase, MeteringReport]:
    """`case` with its volumes replaced by the metered ones, and a report of the mapping.

    `source` names where the rows came from (the exchange URL, never a key); it is written into
    each metered volume's source. Metered volumes already in the case for other pairs are kept.
    """
    rows = list(rows)
    hospitals = {h.exchange_id: h for h in case.hospitals if h.exchange_id}
    applications = {a.exchange_id: a for a in case.applications if a.exchange_id}
    seen_hospitals = {row.hospital for row in rows}
    seen_products = {row.product for row in rows}

    months_by_hospital: dict[str, list[str]] = defaultdict(list)
    completed: dict[tuple[str, str], int] = defaultdict(int)
    studies: dict[tuple[str, str], int] = defaultdict(int)
    failed: dict[tuple[str, str], int] = defaultdict(int)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    jobs_only = {row.hospital for row in rows if row.studies_completed is None}
    for row in rows:
        months_by_hospital[row.hospital].append(row.month)
        completed[(row.hospital, row.product)] += row.jobs_completed
        studies[(row.hospital, row.product)] += row.studies
        failed[(row.hospital, row.product)] += row.jobs_failed
        total = totals[row.hospital]
        total[0] += row.jobs_completed
        total[1] += row.studies
        total[2] += row.jobs_failed
        total[3] += row.input_bytes

    periods: dict[str, HospitalPeriod] = {}
    for exchange_id, hospital in hospitals.items():
        months = months_by_hospital.get(exchange_id)
        if not months:
            continue
        first, last = min(months), max(months)
        jobs_completed, studies_completed, jobs_failed, input_bytes = totals[exchange_id]
        periods[exchange_id] = HospitalPeriod(
            hospital.id,
            exchange_id,
            first,
            last,
            months_inclusive(first, last),
            jobs_completed,
            None if exchange_id in jobs_only else studies_completed,
            jobs_failed,
            input_bytes,
        )

    metered: list[MeteredVolume] = []
    assumed: list[tuple[str, str]] = []
    for hospital in case.hospitals:
        for application in case.applications:
            hospital_ex, product_ex = hospital.exchange_id, application.exchange_id
            if hospital_ex not in seen_hospitals or product_ex not in seen_products:
                if case.metered(hospital.id, application.id) is None:
                    assumed.append((hospital.id, application.id))
                continue
            assert hospital_ex is not None and product_ex is not None
            period = periods[hospital_ex]
            pair = (hospital_ex, product_ex)
            analysed, done = studies.get(pair, 0), completed.get(pair, 0)
            yearly = analysed * 12 / period.months
            span = f"{period.months} month(s) {period.first_month}..{period.last_month}"
            counted = (
                f"{done} completed jobs (the exchange does not count studies: a study sent "
                f"again counts each time)"
                if period.studies_completed is None
                else f"{analysed} studies analysed ({done} completed jobs)"
            )
            origin = (
                f"Exchange metering ({source}): {counted} by product {product_ex} at "
                f"organisation {hospital_ex} over {span}, annualised × 12/{period.months}"
            )
            metered.append(
                MeteredVolume.model_validate(
                    {
                        "hospital": hospital.id,
                        "application": application.id,
                        "volume": {"value": yearly, "unit": "exams/year", "source": origin},
                        "jobs_completed": done,
                        "studies_completed": (
                            None if period.studies_completed is None else analysed
                        ),
                        "jobs_failed": failed.get(pair, 0),
                        "months": period.months,
                        "first_month": period.first_month,
                        "last_month": period.last_month,
                    }
                )
            )

    ignored = sorted(
        {f"organisation {h}" for h in seen_hospitals if h not in hospitals}
        | {f"product {p}" for p in seen_products if p not in applications}
    )
    measured_pairs = {(m.hospital, m.application) for m in metered}
    kept = [m for m in case.metered_volumes if (m.hospital, m.application) not in measured_pairs]
    updated = case.model_copy(update={"metered_volumes": kept + metered})
    report = MeteringReport(
        source=source,
        rows=len(rows),
        periods=list(periods.values()),
        metered=metered,
        assumed_pairs=assumed,
        ignored=ignored,
    )
    return assign_paths(updated), report
