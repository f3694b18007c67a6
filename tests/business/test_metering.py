"""Metering onto the case (pure), and reading it from an exchange that speaks the contract."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from aifi.business.engine import evaluate
from aifi.business.loading import parse_case
from aifi.business.metering import (
    MeteringError,
    MeteringRow,
    apply_metering,
    fetch_metering,
    months_inclusive,
)

from .conftest import METERING_ROWS, OPERATOR_KEY

ROWS = [MeteringRow.model_validate(row) for row in METERING_ROWS]


@pytest.mark.parametrize(
    ("first", "last", "months"),
    [("2025-02", "2025-02", 1), ("2025-02", "2025-07", 6), ("2024-11", "2025-02", 4)],
)
def test_months_inclusive(first: str, last: str, months: int) -> None:
    assert months_inclusive(first, last) == months


def test_metered_volume_is_annualised_over_the_hospitals_months(tiny: dict[str, Any]) -> None:
    case, report = apply_metering(parse_case(tiny), ROWS, source="http://exchange/metering")
    h1 = case.metered("h1", "xr")
    assert h1 is not None
    # 100 + 50 completed jobs over 2025-02..2025-04 (3 months, the empty March included):
    # an exchange that does not count studies, whose jobs are used, as the source says.
    assert (h1.jobs_completed, h1.studies_completed) == (150, None)
    assert "150 completed jobs (the exchange does not count studies" in h1.volume.source
    assert h1.months == 3
    assert h1.volume.value == pytest.approx(150 * 12 / 3)
    assert "× 12/3" in h1.volume.source and "http://exchange/metering" in h1.volume.source
    assert h1.volume.path == "metered_volumes[h1/xr].volume"
    assert [
        (p.hospital, p.months, p.jobs_completed, p.studies_completed) for p in report.periods
    ] == [
        ("h1", 3, 150, None),
        ("h2", 1, 7, None),
    ]


def test_a_study_sent_again_is_one_study_of_the_volume(tiny: dict[str, Any]) -> None:
    """An exchange that counts studies: 150 jobs completed, 146 studies (four sent again after
    the exchange's store lost their results). The volume is the studies; the jobs are shown
    beside them. Rows of an earlier release's exchange, without the count, use the jobs (the
    test above)."""
    counted = [
        MeteringRow.model_validate({**row, "studies_completed": row["jobs_completed"] - lost})
        for row, lost in zip(METERING_ROWS, (3, 1, 0, 0), strict=True)
    ]
    case, report = apply_metering(parse_case(tiny), counted, source="x")
    h1 = case.metered("h1", "xr")
    assert h1 is not None
    assert (h1.jobs_completed, h1.studies_completed) == (150, 146)
    assert h1.volume.value == pytest.approx(146 * 12 / 3)
    assert "146 studies analysed (150 completed jobs)" in h1.volume.source
    assert [(p.hospital, p.studies_completed, p.jobs_completed) for p in report.periods] == [
        ("h1", 146, 150),
        ("h2", 7, 7),
    ]


def test_a_pair_without_rows_of_its_own_is_metered_at_zero(tiny: dict[str, Any]) -> None:
    case, _ = apply_metering(parse_case(tiny), ROWS, source="x")
    h2 = case.metered("h2", "xr")
    assert h2 is not None
    assert h2.volume.value == 0


def test_unknown_organisations_are_reported_not_used(tiny: dict[str, Any]) -> None:
    _, report = apply_metering(parse_case(tiny), ROWS, source="x")
    assert report.ignored == ["organisation org-9", "product prod-other"]
    assert report.rows == 4


def test_hospitals_not_on_the_exchange_keep_their_assumed_volume(tiny: dict[str, Any]) -> None:
    tiny["hospitals"][1]["exchange_id"] = None
    case, report = apply_metering(parse_case(tiny), ROWS, source="x")
    assert case.metered("h2", "xr") is None
    assert report.assumed_pairs == [("h2", "xr")]
    outcome = evaluate(case, case.base)
    assert outcome.volumes[("h1", "xr")].origin == "metered"
    assert outcome.volumes[("h1", "xr")].yearly[0] == pytest.approx(600)
    assert outcome.volumes[("h2", "xr")].origin == "assumed"
    assert outcome.volumes[("h2", "xr")].yearly[0] == pytest.approx(12_000)


def test_metering_changes_the_business_case(tiny: dict[str, Any]) -> None:
    original = parse_case(tiny)
    metered, _ = apply_metering(original, ROWS, source="x")
    before = evaluate(original, original.base)
    after = evaluate(metered, metered.base)
    assert after.exams_per_year()[0] == pytest.approx(600)
    assert after.npv()[0] < before.npv()[0]
    assert original.metered_volumes == []  # the input case is left as it was


def mock_client(status: int = 200, body: Any = None, seen: list[httpx.Request] | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body if body is not None else {"rows": METERING_ROWS})

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_fetch_sends_the_key_as_bearer_and_the_months_as_query() -> None:
    seen: list[httpx.Request] = []
    rows = fetch_metering(
        "http://exchange.test/",
        "k3y",
        since="2025-02",
        until="2025-06",
        client=mock_client(seen=seen),
    )
    assert rows == ROWS
    (request,) = seen
    assert request.url.path == "/metering"
    assert request.headers["Authorization"] == "Bearer k3y"
    assert dict(request.url.params) == {"since": "2025-02", "until": "2025-06"}


def test_fetch_without_months_sends_no_query() -> None:
    seen: list[httpx.Request] = []
    fetch_metering("http://exchange.test", "k", client=mock_client(seen=seen))
    assert seen[0].url.query == b""


def test_a_refused_key_says_so_without_repeating_it() -> None:
    with pytest.raises(MeteringError) as caught:
        fetch_metering("http://exchange.test", "secret-key", client=mock_client(401, {}))
    assert "401" in str(caught.value)
    assert "secret-key" not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, {}, "answered 500"),
        (200, {"items": []}, "another shape"),
        (200, {"rows": [{"hospital": "x"}]}, "another shape"),
    ],
)
def test_other_answers_are_errors(status: int, body: Any, message: str) -> None:
    with pytest.raises(MeteringError, match=message):
        fetch_metering("http://exchange.test", "k", client=mock_client(status, body))


def test_an_unreachable_exchange_is_an_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    with pytest.raises(MeteringError, match="could not reach"):
        fetch_metering("http://exchange.test", "k", client=client)


def test_fetch_over_http_from_a_fake_exchange(
    fake_exchange: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = fake_exchange
    rows = fetch_metering(url, OPERATOR_KEY, since="2025-01")
    assert rows == ROWS
    assert seen == [{"since": "2025-01", "until": None, "authorization": f"Bearer {OPERATOR_KEY}"}]
    with pytest.raises(MeteringError, match="401"):
        fetch_metering(url, "wrong-key")
