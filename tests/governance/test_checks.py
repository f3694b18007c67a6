"""The kit's checks on evidence made by hand: verdicts the end-to-end runs cannot provoke."""

from __future__ import annotations

from aifi.exchange.schemas import ProductManifest
from aifi.governance.conformance import Evidence, JobEvidence, Probe
from aifi.governance.conformance.checks import (
    corrupt_study_fails_cleanly,
    references_own_study,
    stays_within_own_jobs,
    turnaround_within_sla,
)
from aifi.governance.conformance.traffic import RequestRecord

MANIFEST = ProductManifest(
    id="p", vendor="v", name="P", version="1", clinical_area="triage", turnaround_sla_seconds=10
)


def job(
    job_id: str, role: str, state: str, seconds: float | None = None, reason: str = ""
) -> JobEvidence:
    return JobEvidence(
        job_id=job_id,
        label=f"{role} study",
        role=role,
        study_uid="2.25.1",
        state=state,
        reason=reason or None,
        turnaround_seconds=seconds,
    )


def evidence(jobs: list[JobEvidence], **extra: object) -> Evidence:
    fields: dict[str, object] = {"traffic": [], "probes": [], **extra}
    return Evidence(manifest=MANIFEST, jobs=jobs, **fields)  # type: ignore[arg-type]


def test_turnaround_p95_over_the_sla_fails() -> None:
    jobs = [
        job("a", "reference", "completed", 1),
        job("b", "reference", "completed", 2),
        job("c", "sentinel", "completed", 100),
    ]
    check = turnaround_within_sla(evidence(jobs))
    assert not check.passed
    # p95 of 1, 2, 100 by linear interpolation: 2 + 0.9 * 98
    assert check.details == ["ready → completed over 3 jobs: p50 2.00 s, p95 90.20 s (SLA 10 s)"]
    fast = turnaround_within_sla(evidence(jobs[:2]))
    assert fast.passed
    waiting = turnaround_within_sla(evidence([*jobs[:2], job("d", "reference", "in-progress")]))
    assert not waiting.passed and "1 jobs had not ended" in waiting.details[-1]


def test_a_corrupt_study_that_completes_fails_the_check() -> None:
    jobs = [job("x", "corrupt", "completed"), job("s", "sentinel", "completed", 1)]
    check = corrupt_study_fails_cleanly(evidence(jobs))
    assert not check.passed
    assert "ended completed without a reason" in check.details[0]


def test_no_result_is_no_evidence_of_own_study_references() -> None:
    check = references_own_study(evidence([job("a", "reference", "failed", reason="x")]))
    assert not check.passed and check.details == ["no result was returned to check"]


def test_a_request_the_exchange_answered_on_another_job_is_a_breach() -> None:
    own = [job("mine", "reference", "completed", 1)]
    traffic = [
        RequestRecord("POST", "/jobs/claim", 200),
        RequestRecord("GET", "/jobs/mine/inputs", 200),
        RequestRecord("GET", "/jobs/theirs/inputs/1.2.3", 200),
    ]
    probes = [Probe("read the job", 404, True), Probe("list its inputs", 200, False)]
    check = stays_within_own_jobs(
        evidence(
            own,
            traffic=traffic,
            probes=probes,
            other_job_id="theirs",
            other_job_state="in-progress",
        )
    )
    assert not check.passed
    assert check.details == [
        "3 requests by the product's key; 1 to jobs that are not its own",
        "GET /jobs/theirs/inputs/1.2.3 (another vendor's job): ANSWERED 200",
        "kit probes with the product's key: 1 of 2 refused",
        "probe not refused: list its inputs → 200",
        "the other vendor's job is in-progress",
    ]


def test_request_records_know_their_job() -> None:
    assert RequestRecord("POST", "/jobs/claim", 204).job_id is None
    assert RequestRecord("GET", "/jobs", 200).job_id is None
    assert RequestRecord("GET", "/jobs/abc", 404).job_id == "abc"
    assert RequestRecord("PUT", "/jobs/abc/results/sr.dcm", 201).job_id == "abc"
