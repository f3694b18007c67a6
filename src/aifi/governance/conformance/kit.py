"""Run a product against the reference studies through a real exchange, over HTTP only.

The kit starts its own exchange on a temporary folder and plays every other party: the
operator, a hospital (that pseudonymises phantoms and uploads them as jobs) and a second vendor
whose job the product must never reach. The product runs either in the kit (a handler in an
:class:`aifi.vendor.Worker`) or in the vendor's own worker, in any language, pointed at the
kit's URL with the key the kit prints. Then the kit collects the results as the hospital would
and checks them (see :mod:`aifi.governance.conformance.checks`).

Order of the run: the corrupt study's job is created first, then the valid ones; once all have
ended, one more valid study (the sentinel) shows that the worker survived the corrupt one.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydantic import ValidationError

import aifi
from aifi.dicom.dciodvfy import dciodvfy_path, verify_iod
from aifi.exchange.schemas import ENDED_STATES, ProductManifest
from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.governance.conformance.checks import STUDY_RULES, Evidence, Probe, run_checks
from aifi.governance.conformance.reference_set import ReferenceStudy, StudyMaker
from aifi.governance.conformance.report import ConformanceReport, JobEvidence, ResultEvidence
from aifi.governance.conformance.traffic import PROBE_HEADER, TrafficJournal, VendorTraffic
from aifi.governance.evaluation import JobRecord, turnaround_seconds
from aifi.http import ApiClient, ExchangeHTTPError
from aifi.results import ResultRejected, ResultSummary, check_result
from aifi.vendor import Handler, JobContext, ProductError, ProductResult, VendorClient, Worker

log = logging.getLogger(__name__)

HOSPITAL_ID = "conformance-hospital"
OTHER_VENDOR_ID = "conformance-other-vendor"
OTHER_PRODUCT_ID = "conformance-other-product"


class KitError(RuntimeError):
    """The kit could not set up its run (not a verdict on the product)."""


@dataclass(frozen=True)
class KitEnvironment:
    """What a product's worker needs to reach the kit's exchange (printed for external ones)."""

    url: str
    vendor_id: str
    vendor_key: str
    product_id: str
    other_job_id: str = ""


#: Builds the product's handler once the kit's exchange is up (a test may use the environment).
HandlerFactory = Callable[[KitEnvironment], Handler]


@dataclass(frozen=True)
class KitProgress:
    stage: str
    done: int
    total: int


ProgressSink = Callable[[KitProgress], None]


@dataclass(frozen=True)
class KitOptions:
    #: Phantom size preset: "small" (fast, coarse) or "default" (realistic).
    size: str = "default"
    #: Studies per accepted phantom kind, alternating normal and with a finding.
    per_kind: int = 2
    #: How long the kit waits for all jobs to end, in total.
    timeout_seconds: float = 600.0
    #: Lease the in-kit worker asks for.
    lease_seconds: float = 60.0


def run_conformance(
    manifest: ProductManifest | dict[str, Any],
    handler: HandlerFactory | None,
    *,
    workdir: Path,
    options: KitOptions | None = None,
    on_ready: Callable[[KitEnvironment], None] | None = None,
    progress: ProgressSink | None = None,
) -> ConformanceReport:
    """Run the kit on `manifest`'s product and return its report.

    With `handler`, the kit runs the product itself; with None, it calls `on_ready` with the
    environment and waits for the vendor's own worker.

    Raises
    ------
    KitError
        When the kit cannot set up the run (e.g. the exchange would not take the product).
    NoReferenceStudies
        When no phantom matches what the product accepts.
    """
    product = ProductManifest.model_validate(manifest)
    run = _Run(product, workdir, options or KitOptions(), progress or (lambda _p: None))
    return run.execute(handler, on_ready)


class _InKitWorker:
    """The product's handler in an SDK Worker on a thread, noting crashes and refused uploads."""

    def __init__(
        self, client: VendorClient, handler: Handler, product_id: str, lease: float, folder: Path
    ) -> None:
        self.client = client
        self.product_id = product_id
        self.lease = lease
        self.crashes: dict[str, str] = {}
        self.wake = threading.Event()
        folder.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._worker = Worker(
            client,
            self._observed(handler),
            product_ids=[product_id],
            lease_seconds=lease,
            workdir=folder,
        )
        self._thread = threading.Thread(target=self._loop, name="conformance-worker", daemon=True)

    def _observed(self, handler: Handler) -> Handler:
        def observed(context: JobContext) -> ProductResult:
            try:
                return handler(context)
            except ProductError:
                raise
            except Exception as exc:
                self.crashes[str(context.job["id"])] = type(exc).__name__
                raise

        return observed

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                lease = self.client.claim(
                    [self.product_id], lease_seconds=self.lease, wait_seconds=1.0
                )
            except (ExchangeHTTPError, httpx.HTTPError) as exc:
                log.warning("conformance worker: claim failed: %s", exc)
                self._stop.wait(0.5)
                continue
            if lease is None:
                continue
            try:
                self._worker.process(lease)
            except ExchangeHTTPError as exc:  # a result the exchange refused: end the job
                with suppress(ExchangeHTTPError, httpx.HTTPError):
                    self.client.fail(lease, f"the exchange refused a result: {exc.detail}")
            except Exception:  # the kit's worker must outlive anything one job does
                log.exception("conformance worker: job %s", lease.job_id)
            finally:
                self.wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@dataclass(frozen=True)
class _Studies:
    reference: list[ReferenceStudy]
    corrupt: ReferenceStudy
    sentinel: ReferenceStudy
    other: ReferenceStudy  # for the other vendor's product


@dataclass
class _Parties:
    """The kit's clients, one per organisation it plays or registers."""

    url: str
    operator: ApiClient
    hospital: ApiClient
    vendor: VendorClient
    vendor_key: str
    other_vendor: VendorClient

    def close(self) -> None:
        for client in (self.operator, self.hospital, self.vendor, self.other_vendor):
            client.close()


class _Run:
    def __init__(
        self, manifest: ProductManifest, workdir: Path, options: KitOptions, progress: ProgressSink
    ) -> None:
        self.manifest = manifest
        self.workdir = workdir
        self.options = options
        self.progress = progress
        self.journal = TrafficJournal()
        self.studies: dict[str, ReferenceStudy] = {}  # job id -> study
        self.deadline = 0.0
        self._operator_key = "aifi_" + secrets.token_urlsafe(32)
        self._handler_name = ""

    # the run -------------------------------------------------------------------------------

    def execute(
        self, handler: HandlerFactory | None, on_ready: Callable[[KitEnvironment], None] | None
    ) -> ConformanceReport:
        studies = self._make_studies()
        exchange = ExchangeThread(self._settings())
        exchange.app.add_middleware(VendorTraffic, journal=self.journal)
        with exchange:
            parties = self._parties(exchange.url)
            try:
                evidence = self._run_on(parties, studies, handler, on_ready)
            finally:
                parties.close()
        self.progress(KitProgress("checking results", 1, 1))
        return self._report(evidence, handler is not None, exchange.url)

    def _make_studies(self) -> _Studies:
        maker = StudyMaker(self.manifest, self.workdir / "studies", self.options.size)
        studies = _Studies(
            reference=maker.reference(self.options.per_kind),
            corrupt=maker.corrupt(),
            sentinel=maker.study(maker.kinds[0], "sentinel"),
            other=maker.study(maker.kinds[0], "other"),
        )
        self.progress(KitProgress("reference studies ready", 1, 1))
        return studies

    def _run_on(
        self,
        parties: _Parties,
        studies: _Studies,
        handler: HandlerFactory | None,
        on_ready: Callable[[KitEnvironment], None] | None,
    ) -> Evidence:
        self._register(parties.vendor, self.manifest)
        self._register(parties.other_vendor, self._other_manifest())
        for product_id in (self.manifest.id, OTHER_PRODUCT_ID):
            parties.hospital.request("POST", "/subscriptions", json={"product_id": product_id})
        other_job = self._submit(parties.hospital, OTHER_PRODUCT_ID, studies.other, track=False)
        self.journal.watch(parties.vendor_key)
        environment = KitEnvironment(
            parties.url, self.manifest.vendor, parties.vendor_key, self.manifest.id, other_job
        )
        self.deadline = time.monotonic() + self.options.timeout_seconds
        worker = None
        if handler is not None:
            product_handler = handler(environment)
            self._handler_name = _name(product_handler)
            worker = _InKitWorker(
                parties.vendor,
                product_handler,
                self.manifest.id,
                self.options.lease_seconds,
                self.workdir / "worker",
            )
            worker.start()
        elif on_ready is not None:
            on_ready(environment)
        try:
            jobs = self._process(parties.hospital, studies, worker.wake if worker else None)
        finally:
            if worker is not None:
                worker.stop()
        self.progress(KitProgress("checking results", 0, 1))
        state = parties.hospital.request("GET", f"/jobs/{other_job}").json()["state"]
        return Evidence(
            manifest=self.manifest,
            jobs=[
                self._job_evidence(parties.hospital, jobs[i], s) for i, s in self.studies.items()
            ],
            traffic=self.journal.records(),
            probes=self._probe(parties.url, parties.vendor_key, other_job),
            crashes=dict(worker.crashes) if worker else {},
            other_job_id=other_job,
            other_job_state=str(state),
            dciodvfy_available=dciodvfy_path() is not None,
        )

    def _process(
        self, hospital: ApiClient, studies: _Studies, wake: threading.Event | None
    ) -> dict[str, dict[str, Any]]:
        """The corrupt study first, then the valid ones; after they end, the sentinel."""
        wake = wake or threading.Event()
        for study in [studies.corrupt, *studies.reference]:
            self._submit(hospital, self.manifest.id, study)
        self._wait(hospital, wake)
        self._submit(hospital, self.manifest.id, studies.sentinel)
        return self._wait(hospital, wake)

    # set-up --------------------------------------------------------------------------------

    def _settings(self) -> ExchangeSettings:
        folder = (self.workdir / "exchange").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        # Named explicitly so that AIFI_* variables never point the kit at a real exchange's
        # database or blob store.
        return ExchangeSettings(
            data_dir=folder,
            database_url=f"sqlite:///{folder / 'exchange.db'}",
            blob_url=f"file://{folder / 'blobs'}",
            operator_key=self._operator_key,
            # The kit's own exchange: the product under test takes jobs as soon as it is in.
            admit_on_register=True,
        )

    def _parties(self, url: str) -> _Parties:
        operator = ApiClient(url, self._operator_key)
        hospital_key = self._organisation(operator, HOSPITAL_ID, "hospital")
        vendor_key = self._organisation(operator, self.manifest.vendor, "vendor")
        other_key = self._organisation(operator, OTHER_VENDOR_ID, "vendor")
        return _Parties(
            url=url,
            operator=operator,
            hospital=ApiClient(url, hospital_key),
            vendor=VendorClient(url, vendor_key),
            vendor_key=vendor_key,
            other_vendor=VendorClient(url, other_key),
        )

    @staticmethod
    def _organisation(operator: ApiClient, org_id: str, kind: str) -> str:
        body = {"id": org_id, "name": f"{org_id} (conformance kit)", "kind": kind}
        return str(operator.request("POST", "/organisations", json=body).json()["api_key"])

    @staticmethod
    def _register(vendor: VendorClient, manifest: ProductManifest) -> None:
        product = vendor.register_product(manifest.model_dump(mode="json"))
        if product.get("status") != "admitted":
            raise KitError(
                f"the kit's exchange registered product {manifest.id!r} as "
                f"{product.get('status')!r}; it must be admitted there to take jobs"
            )

    def _other_manifest(self) -> ProductManifest:
        return self.manifest.model_copy(
            update={
                "id": OTHER_PRODUCT_ID,
                "vendor": OTHER_VENDOR_ID,
                "name": "Another vendor's product (conformance kit)",
            }
        )

    def _submit(
        self, hospital: ApiClient, product_id: str, study: ReferenceStudy, *, track: bool = True
    ) -> str:
        """Create the job, upload the study, mark it ready; returns the job id."""
        body = {
            "product_id": product_id,
            "study_uid": study.study_uid,
            "patient_pseudonym": study.patient_pseudonym,
            "idempotency_key": f"{product_id}:{study.study_uid}",
        }
        job_id = str(hospital.request("POST", "/jobs", json=body).json()["id"])
        for path in study.files:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            hospital.request(
                "PUT",
                f"/jobs/{job_id}/inputs/{uid}",
                content=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
        hospital.request("POST", f"/jobs/{job_id}/ready", json={"instances": len(study.files)})
        if track:
            self.studies[job_id] = study
        return job_id

    def _wait(self, hospital: ApiClient, wake: threading.Event) -> dict[str, dict[str, Any]]:
        """Every job of the hospital once the product's jobs have all ended (or time is up)."""
        while True:
            listed = hospital.request("GET", "/jobs", params={"limit": 1000}).json()
            jobs = {str(j["id"]): j for j in listed}
            ended = sum(1 for i in self.studies if jobs[i]["state"] in ENDED_STATES)
            self.progress(KitProgress("processing", ended, len(self.studies)))
            remaining = self.deadline - time.monotonic()
            if ended == len(self.studies) or remaining <= 0:
                return jobs
            wake.wait(min(0.5, remaining))
            wake.clear()

    # evidence ------------------------------------------------------------------------------

    def _job_evidence(
        self, hospital: ApiClient, job: dict[str, Any], study: ReferenceStudy
    ) -> JobEvidence:
        evidence = JobEvidence(
            job_id=str(job["id"]),
            label=study.label,
            role=study.role,
            study_uid=study.study_uid,
            state=str(job["state"]),
            reason=job.get("reason"),
            turnaround_seconds=turnaround_seconds(JobRecord.from_job(job)),
        )
        if job["state"] != "completed":
            return evidence
        folder = self.workdir / "results" / evidence.job_id
        folder.mkdir(parents=True, exist_ok=True)
        for item in hospital.request("GET", f"/jobs/{evidence.job_id}/results").json():
            target = folder / str(item["name"])
            hospital.download(f"/jobs/{evidence.job_id}/results/{item['name']}", target)
            evidence.results.append(_examine(item, target, study.study_uid))
        return evidence

    def _probe(self, url: str, vendor_key: str, other_job: str) -> list[Probe]:
        """Try the product's key on another vendor's job; every attempt must be refused."""
        headers = {"Authorization": f"Bearer {vendor_key}", PROBE_HEADER: "1"}
        attempts: list[tuple[str, str, str, dict[str, Any]]] = [
            ("read the job", "GET", f"/jobs/{other_job}", {}),
            ("list its inputs", "GET", f"/jobs/{other_job}/inputs", {}),
            ("list its results", "GET", f"/jobs/{other_job}/results", {}),
            (
                "heartbeat it",
                "POST",
                f"/jobs/{other_job}/heartbeat",
                {"json": {"lease_token": "conformance-probe"}},
            ),
            (
                "upload a result to it",
                "PUT",
                f"/jobs/{other_job}/results/probe.json",
                {
                    "content": b"{}",
                    "headers": {
                        "Content-Type": "application/json",
                        "X-Lease-Token": "conformance-probe",
                    },
                },
            ),
        ]
        probes = []
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            for description, method, path, extra in attempts:
                status = http.request(method, path, **extra).status_code
                probes.append(Probe(f"{description} ({method} {path})", status, status >= 400))
            claim = http.post(
                "/jobs/claim", json={"product_ids": [OTHER_PRODUCT_ID], "wait_seconds": 0}
            )
            probes.append(
                Probe(
                    "claim the other vendor's product",
                    claim.status_code,
                    claim.status_code == 204 or claim.status_code >= 400,
                )
            )
            listed = http.get("/jobs", params={"limit": 1000})
            seen = listed.status_code < 400 and any(j["id"] == other_job for j in listed.json())
            probes.append(Probe("find the job in its job list", listed.status_code, not seen))
        return probes

    def _report(self, evidence: Evidence, in_kit: bool, url: str) -> ConformanceReport:
        if in_kit:
            worker = f"in the kit: {self._handler_name} in an aifi.vendor.Worker"
        else:
            worker = f"the vendor's own worker, against the kit's exchange at {url}"
        labels = [s.label for s in self.studies.values()]
        return ConformanceReport(
            product_id=self.manifest.id,
            product_name=self.manifest.name,
            vendor=self.manifest.vendor,
            version=self.manifest.version,
            manifest=self.manifest,
            generated_at=datetime.now(UTC),
            aifi_version=aifi.__version__,
            worker=worker,
            reference_set=labels + [f"size preset: {self.options.size}"],
            checks=run_checks(evidence),
            jobs=evidence.jobs,
        )


def _name(handler: object) -> str:
    """`module.function` of a handler, for the report."""
    module = getattr(handler, "__module__", None) or ""
    name = getattr(handler, "__qualname__", None) or type(handler).__name__
    return f"{module}.{name}" if module else str(name)


def _examine(item: dict[str, Any], path: Path, study_uid: str) -> ResultEvidence:
    """What the kit finds in one downloaded result, beside what the exchange said about it."""
    evidence = ResultEvidence(
        name=str(item["name"]),
        kind=str(item["kind"]),
        media_type=str(item["media_type"]),
        air_conformant=bool(item["air_conformant"]),
        notes=list(item.get("notes") or []),
    )
    if evidence.media_type.startswith("application/json"):
        try:
            summary = ResultSummary.from_json(path.read_bytes())
        except ValidationError as exc:
            evidence.notes.append(f"summary does not fit aifi.results.ResultSummary: {exc}")
            return evidence
        if summary.study_instance_uid not in (None, study_uid):
            evidence.problems.append("the summary names another study than the job's")
        return evidence
    if dciodvfy_path() is not None:
        iod = verify_iod(path)
        evidence.dciodvfy_errors = list(iod.errors)
        evidence.dciodvfy_warnings = len(iod.warnings)
    try:
        check = check_result(path, study_instance_uid=study_uid)
    except ResultRejected as exc:
        if exc.rule in STUDY_RULES:
            evidence.problems.append(str(exc))
        else:
            evidence.notes.append(str(exc))
        return evidence
    algorithm = check.algorithm
    evidence.algorithm = f"{algorithm.name} {algorithm.version} ({algorithm.manufacturer})"
    return evidence
