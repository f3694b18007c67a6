"""/jobs/{id}/inputs and /jobs/{id}/results: pseudonymised DICOM and results, streamed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from aifi.exchange.blobs import CHUNK
from aifi.exchange.deps import CallerDep, LeaseHeader, ServicesDep
from aifi.exchange.schemas import InputOut, ResultOut
from aifi.exchange.services import Services

router = APIRouter(prefix="/jobs/{job_id}", tags=["job data"])


#: Blobs up to this size are read whole on the worker thread that found them and sent in one
#: piece; a file response would open, stat, read and close them on four more thread hops.
#: Larger ones stream, so memory does not grow with what is downloaded.
INLINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Blob:
    """A blob the caller may read: its bytes when it is small, else its stream, begun."""

    media_type: str
    filename: str
    body: bytes | None
    #: A large blob: its stream (from the object store, its first chunk already fetched; from
    #: a file, opened), and its size when known before it is sent.
    chunks: Iterator[bytes] | None = None
    size: int | None = None


def _fetched(services: Services, key: str, size: int, media_type: str, filename: str) -> Blob:
    """Read a small blob now (on the caller's worker thread). A large one streams, but only
    once the store has shown it holds it: a stream cannot turn into a 404 after it began. A
    file is opened here (deleted afterwards, by retention or a newer copy, it is still read
    whole); an object store is asked for its first chunk, which the stream then starts with
    (a separate HEAD cost 70 % of a 2 MiB download from a loopback S3 server). A blob not in
    the store raises FileNotFoundError, for the read to say why (`Transfers._blob_gone`)."""
    path = services.blobs.local_path(key)
    if size <= INLINE_BYTES:
        body = path.read_bytes() if path is not None else b"".join(services.blobs.read(key))
        return Blob(media_type, filename, body)
    if path is not None:
        opened = path.open("rb")
        return Blob(media_type, filename, None, _read(opened), os.fstat(opened.fileno()).st_size)
    chunks = services.blobs.read(key)
    return Blob(media_type, filename, None, _begun(next(chunks, b""), chunks))


def _read(opened: BinaryIO) -> Iterator[bytes]:
    """An open file's bytes, a chunk at a time; closed when the stream ends or is closed."""
    with opened:
        while chunk := opened.read(CHUNK):
            yield chunk


def _begun(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """The stream again from its start; closing it closes `rest` (and the store's answer)."""
    yield first
    yield from rest


def _blob_response(services: Services, blob: Blob) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{blob.filename}"'}
    if blob.body is not None:
        return Response(blob.body, media_type=blob.media_type, headers=headers)
    assert blob.chunks is not None, "a large blob comes with its stream"
    if blob.size is not None:
        headers["Content-Length"] = str(blob.size)
    return StreamingResponse(
        services.transfers.threads.stream(blob.chunks),
        media_type=blob.media_type,
        headers=headers,
    )


def _announced_length(request: Request) -> int | None:
    """The body size the client announced (Content-Length), if it announced a valid one."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


@router.put("/inputs/{sop_instance_uid}", status_code=201, response_model=InputOut)
async def put_input(
    job_id: str, sop_instance_uid: str, request: Request, caller: CallerDep, services: ServicesDep
) -> InputOut:
    row = await services.transfers.put_input(
        caller, job_id, sop_instance_uid, request.stream(), _announced_length(request)
    )
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
    def fetch() -> Blob:
        return services.transfers.input_blob(
            caller,
            job_id,
            sop_instance_uid,
            lease,
            lambda row: _fetched(
                services, row.blob_key, row.size, "application/dicom", f"{sop_instance_uid}.dcm"
            ),
        )

    return _blob_response(services, await run_in_threadpool(fetch))


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
        caller,
        job_id,
        name,
        lease,
        media_type,
        request.stream(),
        complete=complete,
        length=_announced_length(request),
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
    def fetch() -> Blob:
        return services.transfers.result_blob(
            caller,
            job_id,
            name,
            lease,
            lambda row: _fetched(services, row.blob_key, row.size, row.media_type, name),
        )

    return _blob_response(services, await run_in_threadpool(fetch))
