"""A real exchange (in process) for one vendor's worker, and the network in between.

The worker tests need the exchange's own answers, but also a few the exchange never gives:
a load balancer's 502 while it restarts, a proxy's maintenance page, a connection refused, a
connection that breaks off after the exchange took the request. `Interposed` and
`LosesAnswer` wrap the real httpx transport and give those, for a while or once, and pass
everything else to the exchange.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom

from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.products import tissue_volume
from aifi.vendor import VendorClient
from scale.exchange_api import pseudonymised_ct

OPERATOR_KEY = "aifi_vendor-network-operator-key-0123456789"
HOSPITAL = "hospital-n"
VENDOR = "vendor-n"
PRODUCT = "network-test-product"


@dataclass(frozen=True)
class Exchange:
    """The exchange with a hospital subscribed to one vendor's product (`PRODUCT`)."""

    url: str
    hospital_key: str
    vendor_key: str
    #: The server, for a test that stops it or puts its database back.
    server: ExchangeThread

    def api(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.hospital_key}"},
            timeout=60,
        )

    def submit(self, folder: Path) -> str:
        """A small pseudonymised CT sent as a ready job, as a gateway would; returns its id."""
        study = pseudonymised_ct(folder)
        study_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
        with self.api() as api:
            answer = api.post(
                "/jobs",
                json={
                    "product_id": PRODUCT,
                    "study_uid": study_uid,
                    "patient_pseudonym": "PTEST^",
                    "idempotency_key": study_uid,
                    "instances": len(study),
                },
            )
            answer.raise_for_status()
            job_id = str(answer.json()["id"])
            for path in study:
                uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                api.put(
                    f"/jobs/{job_id}/inputs/{uid}", content=path.read_bytes()
                ).raise_for_status()
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        with self.api() as api:
            return dict(api.get(f"/jobs/{job_id}").json())

    def handed_back_reasons(self, job_id: str) -> list[str]:
        """Why the job was handed back, as the exchange's access log keeps it."""
        with self.api(OPERATOR_KEY) as api:
            audit = api.get("/audit", params={"limit": 5000}).json()
        said = [entry["detail"] for entry in audit if entry["object_id"] == job_id]
        return [detail for detail in said if detail.startswith("handed back: ")]


@contextmanager
def vendor_exchange(folder: Path) -> Iterator[Exchange]:
    settings = ExchangeSettings(data_dir=folder / "exchange", operator_key=OPERATOR_KEY)
    with ExchangeThread(settings) as exchange:
        keys = {}
        with httpx.Client(  # as patient as the worker: the suite loads every core
            base_url=exchange.url,
            headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
            timeout=60,
        ) as operator:
            for org, kind in ((HOSPITAL, "hospital"), (VENDOR, "vendor")):
                answer = operator.post(
                    "/organisations", json={"id": org, "name": org, "kind": kind}
                )
                answer.raise_for_status()
                keys[kind] = answer.json()["api_key"]
        with VendorClient(exchange.url, keys["vendor"]) as vendor:
            vendor.register_product({**tissue_volume.manifest(VENDOR), "id": PRODUCT})
        ours = Exchange(exchange.url, keys["hospital"], keys["vendor"], exchange)
        with ours.api() as hospital:
            hospital.post("/subscriptions", json={"product_id": PRODUCT}).raise_for_status()
        yield ours


Matches = Callable[[httpx.Request], bool]
Answer = Callable[[httpx.Request], httpx.Response]


class Interposed(httpx.HTTPTransport):
    """The real exchange behind something that, for `seconds` from the first request
    `matches` picks, answers those requests itself with `answer` (which may raise, as a
    connection refused does). When each picked request came is noted in `seen`; `answered`
    counts those it answered itself, and `passed` is set once one was answered by the
    exchange with a success."""

    def __init__(self, matches: Matches, answer: Answer, seconds: float) -> None:
        super().__init__()
        self._matches = matches
        self._answer = answer
        self._seconds = seconds
        self.seen: list[float] = []
        self.answered = 0
        self.passed = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._matches(request):
            return super().handle_request(request)
        self.seen.append(time.monotonic())
        if self.seen[-1] - self.seen[0] < self._seconds:
            request.read()
            self.answered += 1
            return self._answer(request)
        response = super().handle_request(request)
        if response.status_code < 300:
            self.passed.set()
        return response


class LosesAnswer(httpx.HTTPTransport):
    """The connection breaks off once, just after the exchange took the first request
    `matches` picks: its answer never arrives, and the client sends it again."""

    def __init__(self, matches: Matches) -> None:
        super().__init__()
        self._matches = matches
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if self._matches(request) and not self.lost:
            self.lost += 1
            response.read()
            response.close()
            raise httpx.ReadError("the connection broke off", request=request)
        return response


def is_claim(request: httpx.Request) -> bool:
    return request.url.path == "/jobs/claim"


def is_upload(request: httpx.Request) -> bool:
    return request.method == "PUT" and "/results/" in request.url.path


def is_heartbeat(request: httpx.Request) -> bool:
    return request.url.path.endswith("/heartbeat")


def refused(request: httpx.Request) -> httpx.Response:
    """Nothing listens: the exchange's host is up, its process is not."""
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def status(code: int, retry_after: str | None = None) -> Answer:
    """An answer with `code` and the exchange's kind of body (`Retry-After` if given)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}

    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, headers=headers, json={"detail": f"{code} in the way"})

    return answer


class WorkerThread:
    """`Worker.run` in a thread of its own, noting what, if anything, ended it."""

    def __init__(self, run: Callable[[threading.Event, float], None]) -> None:
        self.stop = threading.Event()
        self.ended_by: list[BaseException] = []
        self._run = run
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        try:
            self._run(self.stop, 1.0)
        except BaseException as exc:  # what ends the worker is what the test looks for
            self.ended_by.append(exc)

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=60)

    def is_alive(self) -> bool:
        return self._thread.is_alive()
