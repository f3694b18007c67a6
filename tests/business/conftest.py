"""Fixtures for the business-case tests: a case small enough to compute by hand, a fake exchange."""

from __future__ import annotations

import copy
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Header, HTTPException

SOURCE = "Assumption: test value"


def q(value: float, unit: str, source: str = SOURCE, **extra: Any) -> dict[str, Any]:
    """A quantity as YAML would give it."""
    return {"value": value, "unit": unit, "source": source, **extra}


# The hand-computable case (see test_engine.py for the arithmetic):
#   h1: 10,000 radiographs, h2: 30,000; xr takes half of them, uptake 0.8 -> 4,000 and 12,000.
#   Benefit per exam: 60 s / 3600 × 180 EUR/h = 3.00, plus 0.001 bed-day × 500 = 0.50 -> 3.50.
#   Licence per study: 1.00, or 0.80 from 10,000 pooled studies a year.
TINY_CASE: dict[str, Any] = {
    "name": "tiny",
    "price_year": 2025,
    "horizon": q(3, "years"),
    "discount_rate": q(0.10, "1/year"),
    "radiologist_cost_per_hour": q(180, "EUR/hour"),
    "hospitals": [
        {
            "id": "h1",
            "name": "Small",
            "size_class": "small",
            "exchange_id": "org-1",
            "exams_per_year": {"radiograph": q(10_000, "exams/year")},
        },
        {
            "id": "h2",
            "name": "Large",
            "size_class": "large",
            "exchange_id": "org-2",
            "exams_per_year": {"radiograph": q(30_000, "exams/year")},
        },
    ],
    "applications": [
        {
            "id": "xr",
            "name": "XR app",
            "exchange_id": "prod-xr",
            "modality": "radiograph",
            "eligible_share": q(0.5, "fraction"),
            "uptake": q(0.8, "fraction"),
            "seconds_saved_per_exam": q(60, "s"),
            "downstream": [
                {
                    "id": "beds",
                    "name": "bed-days avoided",
                    "per_exam": q(0.001, "bed-day/exam"),
                    "unit_value": q(500, "EUR/bed-day"),
                }
            ],
            "licence": {
                "model": "per_study",
                "tiers": [
                    {"from_volume": q(0, "studies/year"), "price": q(1.00, "EUR/study")},
                    {"from_volume": q(10_000, "studies/year"), "price": q(0.80, "EUR/study")},
                ],
            },
        }
    ],
    "platforms": {
        "national": {
            "integration_saving": q(0.5, "fraction"),
            "central_one_off": q(100_000, "EUR"),
            "central_yearly": q(20_000, "EUR/year"),
            "connected_hospitals_nationally": q(10, "hospitals"),
            "connection_per_hospital": q(5_000, "EUR"),
            "yearly_per_hospital": q(1_000, "EUR/year"),
        },
        "commercial": {
            "integration_saving": q(0.0, "fraction"),
            "onboarding_per_hospital": q(2_000, "EUR"),
            "fee_per_hospital": q(3_000, "EUR/hospital/year"),
            "fee_per_study": q(0.1, "EUR/study"),
        },
    },
    "procurement": {
        "local": {
            "tender": q(1_000, "EUR"),
            "integration": q(4_000, "EUR"),
            "validation": q(2_000, "EUR"),
            "training": q(500, "EUR"),
            "governance": q(300, "EUR/year"),
        },
        "central": {
            "per_application": {
                "tender": q(3_000, "EUR"),
                "validation": q(2_500, "EUR"),
                "governance": q(600, "EUR/year"),
            },
            "per_hospital_per_application": {
                "integration": q(2_000, "EUR"),
                "training": q(500, "EUR"),
                "governance": q(100, "EUR/year"),
            },
        },
    },
    "scenarios": [
        {
            "id": "national-central-joint",
            "name": "National, central, joint",
            "platform": "national",
            "procurement": "central",
            "pooling": "joint",
        },
        {
            "id": "direct-local-alone",
            "name": "Direct, local, alone",
            "platform": "none",
            "procurement": "local",
            "pooling": "alone",
        },
        {
            "id": "commercial-central-joint",
            "name": "Commercial, central, joint",
            "platform": "commercial",
            "procurement": "central",
            "pooling": "joint",
        },
    ],
    "comparisons": [
        {
            "name": "AIFI vs status quo",
            "scenarios": ["direct-local-alone", "national-central-joint"],
        }
    ],
}


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A fresh deep copy of the hand-computable case, free to modify."""
    return copy.deepcopy(TINY_CASE)


OPERATOR_KEY = "operator-test-key"

METERING_ROWS: list[dict[str, Any]] = [
    # org-1 appears from 2025-02 to 2025-04: 3 months; 150 completed xr jobs -> 600 a year.
    {"hospital": "org-1", "hospital_name": "Small", "product": "prod-xr", "month": "2025-02",
     "jobs_completed": 100, "jobs_failed": 2, "input_bytes": 1_000},
    {"hospital": "org-1", "hospital_name": "Small", "product": "prod-xr", "month": "2025-04",
     "jobs_completed": 50, "jobs_failed": 0, "input_bytes": 500},
    # org-2 appears only in 2025-03 and only for another product: its xr volume is metered as 0.
    {"hospital": "org-2", "hospital_name": "Large", "product": "prod-other", "month": "2025-03",
     "jobs_completed": 7, "jobs_failed": 1, "input_bytes": 70},
    # An organisation the case does not know.
    {"hospital": "org-9", "hospital_name": "Elsewhere", "product": "prod-xr", "month": "2025-03",
     "jobs_completed": 3, "jobs_failed": 0, "input_bytes": 30},
]  # fmt: skip


def fake_exchange_app(rows: list[dict[str, Any]], seen: list[dict[str, Any]]) -> FastAPI:
    """An exchange that serves exactly the metering contract, and records what it was asked."""
    app = FastAPI()

    @app.get("/metering")
    def metering(
        since: str | None = None,
        until: str | None = None,
        authorization: str | None = Header(default=None),
    ) -> dict[str, Any]:
        seen.append({"since": since, "until": until, "authorization": authorization})
        if authorization != f"Bearer {OPERATOR_KEY}":
            raise HTTPException(status_code=401, detail="unknown API key")
        return {"rows": rows}

    return app


@pytest.fixture
def fake_exchange() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A fake exchange over real HTTP on 127.0.0.1: its URL and the list of requests it saw.

    The socket is bound and listening before the server thread starts, so a request made at once
    waits in the backlog instead of racing the start-up.
    """
    seen: list[dict[str, Any]] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    config = uvicorn.Config(fake_exchange_app(METERING_ROWS, seen), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
