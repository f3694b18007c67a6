"""Choosing clinical areas: hospitals score candidate areas; one shared national priority list.

Aggregation
-----------
1. Each hospital scores each candidate area on four criteria, 1 (low) to 5 (high): volume,
   expected benefit, urgency and readiness.
2. A hospital's score for an area is the weighted mean of its four criteria with
   :data:`DEFAULT_WEIGHTS` (benefit 0.35, volume 0.25, urgency 0.25, readiness 0.15), or the
   weights given; weights are normalised to sum to 1, so the score stays on the 1–5 scale.
3. The national score of an area is the plain mean of the hospitals' scores: every hospital
   counts once, however large.
4. Areas are ranked by national score (high first); ties are broken by the number of hospitals
   that scored the area (more first: broader support), then by the smaller spread (standard
   deviation: more agreement). Areas still equal share a rank; they are listed by name.
5. The spread (minimum, maximum, population standard deviation) is shown beside each score, so
   a high mean carried by a few enthusiasts is visible.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping

from pydantic import BaseModel, Field

#: Criterion -> weight in a hospital's score.
DEFAULT_WEIGHTS: dict[str, float] = {
    "benefit": 0.35,
    "volume": 0.25,
    "urgency": 0.25,
    "readiness": 0.15,
}
CRITERIA = tuple(DEFAULT_WEIGHTS)


class AreaScore(BaseModel):
    """One hospital's scores for one candidate clinical area (1–5 each)."""

    hospital_id: str
    area: str = Field(min_length=1)
    volume: int = Field(ge=1, le=5, description="How many studies a year the area concerns.")
    benefit: int = Field(ge=1, le=5, description="Expected benefit for patients and staff.")
    urgency: int = Field(ge=1, le=5, description="How pressing the problem is now.")
    readiness: int = Field(ge=1, le=5, description="Products, data and people ready to start.")


class RankedArea(BaseModel):
    rank: int
    area: str
    score: float = Field(description="Mean of the hospitals' weighted scores (1–5).")
    hospitals: int
    minimum: float
    maximum: float
    spread: float = Field(description="Population standard deviation of the hospitals' scores.")
    criteria: dict[str, float] = Field(description="Mean of each criterion over hospitals.")
    tied: bool = Field(description="Shares its rank with another area.")


class PriorityList(BaseModel):
    weights: dict[str, float]
    areas: list[RankedArea]


def hospital_score(score: AreaScore, weights: Mapping[str, float]) -> float:
    """The weighted mean of a hospital's four criteria (weights already normalised)."""
    return sum(weights[c] * getattr(score, c) for c in CRITERIA)


def _normalised(weights: Mapping[str, float] | None) -> dict[str, float]:
    chosen = dict(DEFAULT_WEIGHTS if weights is None else weights)
    if set(chosen) != set(CRITERIA):
        raise ValueError(f"weights must name exactly the criteria {list(CRITERIA)}")
    if any(w < 0 for w in chosen.values()) or sum(chosen.values()) <= 0:
        raise ValueError("weights must be non-negative and not all zero")
    total = sum(chosen.values())
    return {c: chosen[c] / total for c in CRITERIA}


def rank_areas(
    scores: Iterable[AreaScore], weights: Mapping[str, float] | None = None
) -> PriorityList:
    """The national priority list (see the module docstring for the aggregation).

    Raises
    ------
    ValueError
        When a hospital scored the same area twice, or the weights are not usable.
    """
    normalised = _normalised(weights)
    by_area: dict[str, dict[str, AreaScore]] = defaultdict(dict)
    for score in scores:
        if score.hospital_id in by_area[score.area]:
            raise ValueError(
                f"hospital {score.hospital_id!r} scored area {score.area!r} more than once"
            )
        by_area[score.area][score.hospital_id] = score
    rows = []
    for area, per_hospital in by_area.items():
        values = [hospital_score(s, normalised) for s in per_hospital.values()]
        rows.append(
            RankedArea(
                rank=0,
                area=area,
                score=statistics.fmean(values),
                hospitals=len(values),
                minimum=min(values),
                maximum=max(values),
                spread=statistics.pstdev(values),
                criteria={
                    c: statistics.fmean(getattr(s, c) for s in per_hospital.values())
                    for c in CRITERIA
                },
                tied=False,
            )
        )

    def order(row: RankedArea) -> tuple[float, int, float]:
        return (-round(row.score, 9), -row.hospitals, round(row.spread, 9))

    rows.sort(key=lambda r: (order(r), r.area))
    for index, row in enumerate(rows):
        previous = rows[index - 1] if index else None
        if previous is not None and order(previous) == order(row):
            row.rank = previous.rank
            row.tied = previous.tied = True
        else:
            row.rank = index + 1
    return PriorityList(weights=normalised, areas=rows)
