"""The kit's requirements, each a pure function from the evidence gathered to a verdict.

Every check answers one question a hospital asks before admitting a product, and lists the
evidence (job ids, result names, rules, statuses) that a vendor needs to fix a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aifi.exchange.schemas import ENDED_STATES, JobState, ProductManifest
from aifi.governance.conformance.report import CheckResult, JobEvidence
from aifi.governance.conformance.traffic import RequestRecord
from aifi.governance.evaluation import percentile

#: Rules of the exchange's result check that concern which study a result belongs to.
STUDY_RULES = ("own-study", "reference-own-study")


@dataclass(frozen=True)
class Probe:
    """One request the kit made with the product's key to another vendor's job."""

    description: str
    status: int
    refused: bool


@dataclass
class Evidence:
    """What the kit gathered from a run, for the checks below."""

    manifest: ProductManifest
    jobs: list[JobEvidence]
    traffic: list[RequestRecord]
    probes: list[Probe]
    crashes: dict[str, str] = field(default_factory=dict)  # job id -> exception, in-process
    other_job_id: str = ""
    other_job_state: str = ""
    dciodvfy_available: bool = True

    def of_role(self, *roles: str) -> list[JobEvidence]:
        return [j for j in self.jobs if j.role in roles]

    @property
    def own_job_ids(self) -> set[str]:
        return {j.job_id for j in self.jobs}


def completes_reference_studies(evidence: Evidence) -> CheckResult:
    jobs = evidence.of_role("reference", "sentinel")
    failed = [j for j in jobs if j.state != JobState.completed.value]
    details = [f"{len(jobs) - len(failed)} of {len(jobs)} valid studies completed"]
    details += [
        f"job {j.job_id} ({j.label}): {j.state}" + (f" — {j.reason}" if j.reason else "")
        for j in failed
    ]
    return CheckResult(
        name="completes-valid-studies",
        question="Does the product complete every valid study it accepts?",
        passed=bool(jobs) and not failed,
        details=details,
    )


def _dicom_results(evidence: Evidence) -> list[tuple[JobEvidence, str, list[str], bool]]:
    rows = []
    for job in evidence.jobs:
        for result in job.results:
            if result.media_type.startswith("application/dicom"):
                rows.append((job, result.name, result.dciodvfy_errors, result.air_conformant))
    return rows


def outputs_valid_dicom(evidence: Evidence) -> CheckResult:
    question = "Is every DICOM result valid against its IOD (dicom3tools dciodvfy)?"
    if not evidence.dciodvfy_available:
        return CheckResult(
            name="dicom-valid",
            question=question,
            passed=False,
            details=["dciodvfy not found: install the Debian package 'dicom3tools'"],
        )
    rows = _dicom_results(evidence)
    if not rows:
        return CheckResult(
            name="dicom-valid",
            question=question,
            passed=False,
            details=["no DICOM result was returned to check"],
        )
    bad = [(job, name, errors) for job, name, errors, _air in rows if errors]
    details = [f"{len(rows) - len(bad)} of {len(rows)} DICOM results without IOD errors"]
    for job, name, errors in bad:
        shown = "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
        details.append(f"job {job.job_id} result {name}: {shown}")
    return CheckResult(name="dicom-valid", question=question, passed=not bad, details=details)


def air_conformance(evidence: Evidence) -> CheckResult:
    question = (
        "Are the results IHE AIR result objects: algorithm identification, tracking "
        "identifiers, references to the images they describe?"
    )
    findings: list[str] = []
    count = 0
    for job in evidence.jobs:
        for result in job.results:
            if not result.media_type.startswith("application/dicom"):
                continue
            count += 1
            if result.algorithm is None:
                findings.append(f"job {job.job_id} result {result.name}: names no algorithm")
            if not result.air_conformant:
                gaps = "; ".join(result.notes) or "not an AIR result object"
                findings.append(f"job {job.job_id} result {result.name} ({result.kind}): {gaps}")
    if not count:
        return CheckResult(
            name="air-conformance",
            question=question,
            passed=False,
            details=["no DICOM result was returned to check"],
        )
    algorithms = sorted(
        {r.algorithm for j in evidence.jobs for r in j.results if r.algorithm is not None}
    )
    details = [f"{count} DICOM results; algorithm identified as: {', '.join(algorithms) or '—'}"]
    return CheckResult(
        name="air-conformance", question=question, passed=not findings, details=details + findings
    )


def references_own_study(evidence: Evidence) -> CheckResult:
    question = "Do the results reference only the job's own (pseudonymised) study?"
    own = evidence.own_job_ids
    refused = [
        r
        for r in evidence.traffic
        if r.method == "PUT"
        and "/results/" in r.path
        and r.job_id in own
        and r.status == 422
        and any(f"'{rule}'" in r.detail for rule in STUDY_RULES)
    ]
    details = [f"refused by the exchange: {r.detail}" for r in refused]
    for job in evidence.jobs:
        for result in job.results:
            details += [f"job {job.job_id} result {result.name}: {p}" for p in result.problems]
    results = sum(len(j.results) for j in evidence.jobs)
    if details:
        return CheckResult(name="own-study-only", question=question, passed=False, details=details)
    if not results:
        return CheckResult(
            name="own-study-only",
            question=question,
            passed=False,
            details=["no result was returned to check"],
        )
    details = [f"{results} results checked; each concerns only its job's study"]
    return CheckResult(name="own-study-only", question=question, passed=True, details=details)


def declared_outputs(evidence: Evidence) -> CheckResult:
    question = "Does each completed job return the outputs the manifest declares?"
    declared = sorted({o.kind for o in evidence.manifest.outputs})
    if not declared:
        return CheckResult(
            name="declared-outputs",
            question=question,
            passed=False,
            details=["the manifest declares no output"],
        )
    completed = [j for j in evidence.jobs if j.state == JobState.completed.value]
    details = [f"declared: {', '.join(declared)}"]
    missing = []
    for job in completed:
        kinds = {r.kind for r in job.results}
        absent = [k for k in declared if k not in kinds]
        if absent:
            missing.append(f"job {job.job_id} ({job.label}) lacks {', '.join(absent)}")
        for result in job.results:
            if result.kind == "summary-json" and result.notes:
                missing.append(f"job {job.job_id} {result.name}: {'; '.join(result.notes)}")
    extra = sorted({r.kind for j in completed for r in j.results} - set(declared))
    if extra:
        details.append(f"returned but not declared: {', '.join(extra)}")
    return CheckResult(
        name="declared-outputs",
        question=question,
        passed=bool(completed) and not missing,
        details=details + missing + ([] if completed else ["no job completed"]),
    )


def turnaround_within_sla(evidence: Evidence) -> CheckResult:
    sla = evidence.manifest.turnaround_sla_seconds
    question = f"Is the 95th percentile of turnaround within the declared {sla:g} s?"
    jobs = evidence.of_role("reference", "sentinel")
    times = [j.turnaround_seconds for j in jobs if j.turnaround_seconds is not None]
    unfinished = [j for j in jobs if j.state not in ENDED_STATES]
    p50, p95 = percentile(times, 50), percentile(times, 95)
    if p95 is None or p50 is None:
        return CheckResult(
            name="turnaround",
            question=question,
            passed=False,
            details=["no job completed, so no turnaround could be measured"],
        )
    details = [
        f"ready → completed over {len(times)} jobs: p50 {p50:.2f} s, p95 {p95:.2f} s "
        f"(SLA {sla:g} s)"
    ]
    if unfinished:
        details.append(f"{len(unfinished)} jobs had not ended when the kit stopped waiting")
    return CheckResult(
        name="turnaround", question=question, passed=p95 <= sla and not unfinished, details=details
    )


def corrupt_study_fails_cleanly(evidence: Evidence) -> CheckResult:
    question = "Does a corrupt study fail its job with a reason, without crashing the worker?"
    corrupt = evidence.of_role("corrupt")
    sentinels = evidence.of_role("sentinel")
    details: list[str] = []
    passed = bool(corrupt)
    for job in corrupt:
        crash = evidence.crashes.get(job.job_id)
        if job.state == JobState.failed.value and job.reason:
            details.append(f"job {job.job_id} failed with reason: {job.reason}")
        else:
            passed = False
            details.append(
                f"job {job.job_id} ({job.label}) ended {job.state}"
                + (f" ({job.reason})" if job.reason else " without a reason")
                + ": a corrupt study must fail with a reason"
            )
        if crash is not None:
            passed = False
            details.append(
                f"the product raised {crash} instead of refusing the study (raise "
                "ProductError with a reason a radiologist can act on); the SDK caught it"
            )
    done = [s for s in sentinels if s.state == JobState.completed.value]
    if sentinels and len(done) == len(sentinels):
        details.append("the worker went on: the next study, sent after, completed")
    else:
        passed = False
        details.append("the study sent after the corrupt one did not complete")
    return CheckResult(name="corrupt-study", question=question, passed=passed, details=details)


def stays_within_own_jobs(evidence: Evidence) -> CheckResult:
    question = (
        "Does the product reach only its own jobs, and does the exchange refuse its key "
        "everywhere else?"
    )
    own = evidence.own_job_ids
    foreign = [r for r in evidence.traffic if r.job_id is not None and r.job_id not in own]
    details = [
        f"{len(evidence.traffic)} requests by the product's key; "
        f"{len(foreign)} to jobs that are not its own"
    ]
    for record in foreign[:20]:
        whose = "another vendor's job" if record.job_id == evidence.other_job_id else "a job"
        outcome = "refused" if record.status >= 400 else "ANSWERED"
        details.append(f"{record.method} {record.path} ({whose}): {outcome} {record.status}")
    breaches = [p for p in evidence.probes if not p.refused]
    details.append(
        f"kit probes with the product's key: {len(evidence.probes) - len(breaches)} of "
        f"{len(evidence.probes)} refused"
    )
    details += [f"probe not refused: {p.description} → {p.status}" for p in breaches]
    untouched = evidence.other_job_state == JobState.requested.value
    if not untouched:
        details.append(f"the other vendor's job is {evidence.other_job_state or 'unknown'}")
    return CheckResult(
        name="tenant-walls",
        question=question,
        passed=not foreign and not breaches and untouched,
        details=details,
    )


CHECKS = (
    completes_reference_studies,
    outputs_valid_dicom,
    air_conformance,
    references_own_study,
    declared_outputs,
    turnaround_within_sla,
    corrupt_study_fails_cleanly,
    stays_within_own_jobs,
)


def run_checks(evidence: Evidence) -> list[CheckResult]:
    """Every check on `evidence`, in the report's order."""
    return [check(evidence) for check in CHECKS]
