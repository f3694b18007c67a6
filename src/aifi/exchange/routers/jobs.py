"""/jobs: create, watch, claim, heartbeat, complete, fail, release, cancel, acknowledge."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from aifi.exchange.audit import Actor
from aifi.exchange.deps import CallerDep, ServicesDep
from aifi.exchange.errors import Forbidden
from aifi.exchange.jobs import job_out, watched_by
from aifi.exchange.models import Job
from aifi.exchange.schemas import (
    AcknowledgeIn,
    CancelIn,
    Claim,
    ClaimIn,
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    InputOut,
    JobIn,
    JobOut,
    JobReady,
    JobState,
    OrganisationKind,
    ReleaseIn,
    ResultOut,
)
from aifi.exchange.services import Services
from aifi.results.delivery import Delivery

router = APIRouter(prefix="/jobs", tags=["jobs"])

#: Long-polls re-check this often, for changes made by other replicas.
RECHECK_SECONDS = 1.0


@router.post("", status_code=201, response_model=JobOut)
def create_job(body: JobIn, caller: CallerDep, services: ServicesDep, response: Response) -> JobOut:
    job, created = services.jobs.create(caller, body)
    if not created:
        response.status_code = 200
    return job_out(job, caller)


@router.get("", response_model=list[JobOut])
async def list_jobs(
    caller: CallerDep,
    services: ServicesDep,
    state: Annotated[list[JobState] | None, Query()] = None,
    acknowledged: Annotated[
        bool | None,
        Query(description="only jobs the hospital has (true) or has not (false) acknowledged"),
    ] = None,
    product_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        str | None,
        Query(description="the next page: jobs listed after this job (the last of a page)"),
    ] = None,
    wait: Annotated[float, Query(ge=0, description="long-poll: seconds to wait for a match")] = 0,
    with_results: Annotated[
        bool,
        Query(description="hospitals: give each completed job's results with it"),
    ] = False,
    idempotency_key: Annotated[
        str | None,
        Query(
            max_length=128,
            description="hospitals: the job created with this key, if any (a gateway whose "
            "create had no answer finds out whether it made the job, without making it)",
        ),
    ] = None,
) -> list[JobOut]:
    if with_results and caller.role != OrganisationKind.hospital:
        raise Forbidden("only hospitals list jobs with their results")
    if idempotency_key is not None and caller.role != OrganisationKind.hospital:
        raise Forbidden("only hospitals look their jobs up by idempotency key")
    deadline = time.monotonic() + min(wait, services.settings.max_wait_seconds)
    states = [s.value for s in state] if state else None
    watched = watched_by(caller)
    while True:
        jobs = await run_in_threadpool(
            services.jobs.list,
            caller,
            states=states,
            acknowledged=acknowledged,
            product_id=product_id,
            limit=limit,
            after=after,
            idempotency_key=idempotency_key,
        )
        remaining = deadline - time.monotonic()
        if jobs and with_results:
            return await run_in_threadpool(_with_results, services, caller, jobs)
        if jobs or remaining <= 0:
            return [job_out(j, caller) for j in jobs]
        await services.notifier.wait(min(remaining, RECHECK_SECONDS), watched)


def _with_results(services: Services, caller: Actor, jobs: list[Job]) -> list[JobOut]:
    results = services.transfers.results_of(caller, jobs)
    listed = []
    for job in jobs:
        out = job_out(job, caller)
        if job.id in results:
            out.results = [ResultOut.model_validate(row) for row in results[job.id]]
        listed.append(out)
    return listed


@router.post("/claim", response_model=Claim, responses={204: {"description": "no job to claim"}})
async def claim_job(
    body: ClaimIn, request: Request, caller: CallerDep, services: ServicesDep
) -> Claim | Response:
    deadline = time.monotonic() + min(body.wait_seconds, services.settings.max_wait_seconds)
    waited = False
    while True:
        # A worker killed or cut off while it waited leaves its request waiting here: a job
        # claimed for it would be held by nobody until its lease ran out (a STAT study a
        # minute late), one of its attempts spent.
        if waited and await request.is_disconnected():
            return Response(status_code=204)
        claimed = await run_in_threadpool(services.jobs.claim, caller, body)
        if claimed is not None:
            job, token, inputs = claimed
            return Claim(
                job=job_out(job, caller),
                lease_token=token,
                inputs=[InputOut.model_validate(row) for row in inputs],
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Response(status_code=204)
        await services.notifier.wait_claimable(
            min(remaining, RECHECK_SECONDS), caller.organisation_id, body.product_ids
        )
        waited = True


@router.post("/acknowledge", response_model=list[JobOut])
def acknowledge_jobs(
    body: AcknowledgeIn, request: Request, caller: CallerDep, services: ServicesDep
) -> list[JobOut]:
    """Acknowledge several ended jobs at once: all of them, or none (the first refusal says why).
    Given `not_delivered`, a completed job's results count as delivered to the PACS unless it
    says why they were not; without it, nothing is known of them."""
    acknowledged = services.jobs.acknowledge_many(caller, body.job_ids, body.not_delivered)
    undelivered = request.app.state.metrics.undelivered
    for job in acknowledged.fresh:
        if job.delivery not in (None, Delivery.delivered):
            undelivered.labels(job.product_id, job.delivery).inc()
    return [job_out(job, caller) for job in acknowledged.jobs]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, caller: CallerDep, services: ServicesDep) -> JobOut:
    return job_out(services.jobs.get(caller, job_id), caller)


@router.post("/{job_id}/ready", response_model=JobOut)
def mark_ready(job_id: str, body: JobReady, caller: CallerDep, services: ServicesDep) -> JobOut:
    return job_out(services.jobs.mark_ready(caller, job_id, body.instances), caller)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, body: CancelIn, caller: CallerDep, services: ServicesDep) -> JobOut:
    cancelled = services.jobs.cancel(caller, job_id, body.reason, unopened_only=body.unopened_only)
    return job_out(cancelled, caller)


@router.post("/{job_id}/acknowledge", response_model=JobOut)
def acknowledge_job(job_id: str, caller: CallerDep, services: ServicesDep) -> JobOut:
    return job_out(services.jobs.acknowledge(caller, job_id), caller)


@router.post("/{job_id}/heartbeat", response_model=HeartbeatOut)
def heartbeat(
    job_id: str, body: HeartbeatIn, caller: CallerDep, services: ServicesDep
) -> HeartbeatOut:
    job = services.jobs.heartbeat(caller, job_id, body.lease_token, body.lease_seconds)
    out = job_out(job, caller)
    assert out.lease_expires_at is not None
    granted = services.jobs.lease_length(body.lease_seconds)
    return HeartbeatOut(
        lease_expires_at=out.lease_expires_at,
        state=out.state,
        lease_seconds=granted.total_seconds(),
    )


@router.post("/{job_id}/complete", response_model=JobOut)
def complete_job(job_id: str, body: CompleteIn, caller: CallerDep, services: ServicesDep) -> JobOut:
    return job_out(services.jobs.complete(caller, job_id, body.lease_token, body.summary), caller)


@router.post("/{job_id}/fail", response_model=JobOut)
def fail_job(job_id: str, body: FailIn, caller: CallerDep, services: ServicesDep) -> JobOut:
    job = services.jobs.fail(
        caller, job_id, body.lease_token, body.reason, version=body.product_version
    )
    return job_out(job, caller)


@router.post("/{job_id}/release", response_model=JobOut)
def release_job(
    job_id: str, body: ReleaseIn, request: Request, caller: CallerDep, services: ServicesDep
) -> JobOut:
    job = services.jobs.release(caller, job_id, body.lease_token, body.reason)
    if job.state == JobState.requested.value:  # not one that ended for a lost input
        request.app.state.metrics.handed_back.labels(job.product_id).inc()
    return job_out(job, caller)
