"""The national priority list of clinical areas, with its aggregation computed by hand."""

from __future__ import annotations

import pytest

from aifi.governance.priorities import AreaScore, rank_areas


def flat(hospital: str, area: str, value: int) -> AreaScore:
    return AreaScore(
        hospital_id=hospital, area=area, volume=value, benefit=value, urgency=value, readiness=value
    )


SCORES = [
    flat("h1", "stroke", 5),
    flat("h2", "stroke", 3),  # mean 4, 2 hospitals, spread 1
    flat("h1", "fracture", 4),
    flat("h2", "fracture", 4),
    flat("h3", "fracture", 4),  # mean 4, 3 hospitals
    flat("h1", "pe", 4),
    flat("h2", "pe", 4),  # mean 4, 2 hospitals, spread 0 ...
    flat("h1", "nodule", 4),
    flat("h3", "nodule", 4),  # ... equal to pe in every respect: they share a rank
    AreaScore(hospital_id="h1", area="bone-age", volume=5, benefit=1, urgency=1, readiness=5),
]


def test_ranking_and_tie_breaks() -> None:
    ranked = rank_areas(SCORES)
    assert [(a.rank, a.area, a.tied) for a in ranked.areas] == [
        (1, "fracture", False),  # same mean as stroke, nodule and pe: most hospitals first
        (2, "nodule", True),
        (2, "pe", True),
        (4, "stroke", False),  # same mean and count as nodule and pe but more spread
        (5, "bone-age", False),
    ]
    stroke = ranked.areas[3]
    assert (stroke.score, stroke.minimum, stroke.maximum, stroke.spread) == (4.0, 3.0, 5.0, 1.0)
    # bone age: 0.25 * 5 + 0.35 * 1 + 0.25 * 1 + 0.15 * 5
    assert ranked.areas[4].score == pytest.approx(2.6)
    assert ranked.areas[4].criteria == {"benefit": 1, "volume": 5, "urgency": 1, "readiness": 5}


def test_weights_are_normalised_and_change_the_order() -> None:
    ranked = rank_areas(SCORES, weights={"volume": 2, "benefit": 0, "urgency": 0, "readiness": 0})
    assert ranked.weights == {"benefit": 0.0, "volume": 1.0, "urgency": 0.0, "readiness": 0.0}
    assert ranked.areas[0].area == "bone-age" and ranked.areas[0].score == 5.0


def test_refusals() -> None:
    with pytest.raises(ValueError, match="hospital 'h1' scored area 'stroke' more than once"):
        rank_areas([flat("h1", "stroke", 3), flat("h1", "stroke", 4)])
    with pytest.raises(ValueError, match="exactly the criteria"):
        rank_areas(SCORES, weights={"volume": 1})
    with pytest.raises(ValueError, match="not all zero"):
        rank_areas(SCORES, weights={"volume": 0, "benefit": 0, "urgency": 0, "readiness": 0})
    with pytest.raises(ValueError):
        AreaScore(hospital_id="h1", area="x", volume=6, benefit=1, urgency=1, readiness=1)
