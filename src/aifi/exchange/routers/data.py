"""/jobs/{id}/inputs and /jobs/{id}/results: pseudonymised DICOM and results, streamed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from aifi.exchange.deps import CallerDep, LeaseHeader, ServicesDep
from aifi.exchange.schemas import InputOut, ResultOut

router = APIRouter(prefix="/jobs/{job_id}", tags=["job data"])


def _blob_response(services: ServicesDep, key: str, media_type: str, filename: str) -> Response:
    path = services.blobs.local_path(key)
    if path is not None:
        return FileResponse(path, media_type=media_type, filename=filename)
    return StreamingResponse(services.blobs.read(key), media_type=media_type)


@router.put("/inputs/{sop_instance_uid}", status_code=201, response_model=InputOut)
async def put_input(
    job_id: str, sop_instance_uid: str, request: Request, caller: CallerDep, services: ServicesDep
) -> InputOut:
    row = await services.transfers.put_input(caller, job_id, sop_instance_uid, request.stream())
    return InputOut.model_validate(row)


@router.get("/inputs", response_model=list[InputOut])
def list_inputs(
    job_id: str, caller: CallerDep, services: ServicesDep, lease: LeaseHeader = None
) -> list[InputOut]:
    return [
        InputOut.model_validate(r) for r in services.transfers.list_inputs(caller, job_id, lease)
    ]


@router.get("/inputs/{sop_instance_uid}", response_class=Response)
async def get_input(
    job_id: str,
    sop_instance_uid: str,
    caller: CallerDep,
    services: ServicesDep,
    lease: LeaseHeader = None,
) -> Response:
    row = await run_in_threadpool(
        services.transfers.input_blob, caller, job_id, sop_instance_uid, lease
    )
    return _blob_response(services, row.blob_key, "application/dicom", f"{sop_instance_uid}.dcm")


@router.put("/results/{name}", status_code=201, response_model=ResultOut)
async def put_result(
    job_id: str,
    name: str,
    request: Request,
    caller: CallerDep,
    services: ServicesDep,
    lease: LeaseHeader = None,
    complete: Annotated[
        bool,
        Query(
            description="this is the job's last result: end the job completed with it, in one "
            "transaction (a JSON summary uploaded this way becomes the job's summary)"
        ),
    ] = False,
) -> ResultOut:
    media_type = request.headers.get("content-type", "application/dicom")
    row = await services.transfers.put_result(
        caller, job_id, name, lease, media_type, request.stream(), complete=complete
    )
    return ResultOut.model_validate(row)


@router.get("/results", response_model=list[ResultOut])
def list_results(
    job_id: str, caller: CallerDep, services: ServicesDep, lease: LeaseHeader = None
) -> list[ResultOut]:
    return [
        ResultOut.model_validate(r) for r in services.transfers.list_results(caller, job_id, lease)
    ]


@router.get("/results/{name}", response_class=Response)
async def get_result(
    job_id: str, name: str, caller: CallerDep, services: ServicesDep, lease: LeaseHeader = None
) -> Response:
    row = await run_in_threadpool(services.transfers.result_blob, caller, job_id, name, lease)
    return _blob_response(services, row.blob_key, row.media_type, name)
