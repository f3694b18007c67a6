"""STOW-RS into the gateway (DICOMweb Store, PS3.18 10.5), for a PACS, VNA or router that
sends by HTTP rather than by C-STORE.

Each part of a `multipart/related; type="application/dicom"` body is streamed to a file of its
own as it arrives (memory does not grow with the study), then taken in exactly as a C-STORE
instance is: durable in the spool and indexed before the answer says "stored". A request is a
sender's association: its studies' quiet timers start when it ends.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import anyio.to_thread
from pydicom import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aifi.gateway.config import StowSender
from aifi.gateway.receipt import CANNOT_UNDERSTAND, UID, Receipt, Refusals

log = logging.getLogger(__name__)

#: Where the service lives: senders are configured with `<scheme>://host:port/dicom-web`.
BASE = "/dicom-web"
DICOM_JSON = "application/dicom+json"


class Receiver(Protocol):
    """The gateway, as the listener sees it (`Gateway.receive`, `Gateway.sending_ended`)."""

    refusals: Refusals

    def receive(
        self, received: Path, sender: str, sending: int, study_uid: str | None = None
    ) -> Receipt: ...

    def sending_ended(self, sending: int, sender: str) -> None: ...


#: Request numbers, negative so that they never meet an association's `id()`.
_requests = itertools.count(-1, -1)


@dataclass
class _Parts:
    """The parser's callbacks: each part's headers, and its bytes into a file of its own."""

    folder: Path
    finished: list[tuple[Path, str]] = field(default_factory=list)
    ended: bool = False
    _file: IO[bytes] | None = None
    _path: Path | None = None
    _field: bytes = b""
    _value: bytes = b""
    _content_type: str = ""

    def on_part_begin(self) -> None:
        handle, name = tempfile.mkstemp(prefix="stow-", suffix=".dcm", dir=self.folder)
        self._file, self._path, self._content_type = os.fdopen(handle, "wb"), Path(name), ""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._field.strip().lower() == b"content-type":
            self._content_type = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._file is not None
        self._file.write(data[start:end])

    def on_part_end(self) -> None:
        assert self._file is not None and self._path is not None
        self._file.close()
        self.finished.append((self._path, self._content_type))
        self._file = self._path = None

    def on_end(self) -> None:
        self.ended = True

    def take(self) -> list[tuple[Path, str]]:
        finished, self.finished = self.finished, []
        return finished

    def discard(self) -> None:
        """Remove what was never taken in: a part cut off, or parts after a failure."""
        if self._file is not None:
            self._file.close()
        for path in [self._path, *(path for path, _ in self.finished)]:
            if path is not None:
                path.unlink(missing_ok=True)


def stow_app(gateway: Receiver, senders: Sequence[StowSender], incoming: Path) -> Starlette:
    """The STOW-RS service: `POST /dicom-web/studies` and `POST /dicom-web/studies/{uid}`."""
    incoming.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def store(request: Request) -> Response:
        answer = await _store(request)
        if answer.status_code >= 400 and answer.status_code != 409:  # 409: each part counted
            gateway.refusals.request(answer.status_code)
        return answer

    async def _store(request: Request) -> Response:
        sender = _sender(request, senders)
        if sender is None:
            return _refusal(
                401,
                "unknown sender or wrong password (HTTP Basic, as in the gateway's "
                "dicomweb.senders)",
                {"WWW-Authenticate": 'Basic realm="AIFI gateway"'},
            )
        study_uid = request.path_params.get("study")
        if study_uid is not None and not UID.match(study_uid):
            return _refusal(400, f"{study_uid!r} is not a Study Instance UID")
        problem = _acceptable(request)
        if problem is not None:
            return problem
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        if kind != b"multipart/related":
            return _refusal(
                415,
                'STOW-RS takes multipart/related; type="application/dicom" (DICOM files), '
                f"not {kind.decode('latin-1') or 'a body without a content type'}",
            )
        declared = options.get(b"type", b"application/dicom").lower()
        if declared != b"application/dicom":
            return _refusal(
                415,
                f"parts of type {declared.decode('latin-1')} are not taken: send DICOM files "
                '(type="application/dicom"), not metadata and bulk data',
            )
        boundary = options.get(b"boundary")
        if not boundary:
            return _refusal(400, "the multipart/related content type names no boundary")
        return await _receive(request, gateway, sender, study_uid, boundary, incoming)

    routes = [
        Route(f"{BASE}/studies", store, methods=["POST"]),
        Route(f"{BASE}/studies/{{study}}", store, methods=["POST"]),
    ]
    return Starlette(routes=routes)


async def _receive(
    request: Request,
    gateway: Receiver,
    sender: str,
    study_uid: str | None,
    boundary: bytes,
    incoming: Path,
) -> Response:
    sending = next(_requests)
    parts = _Parts(incoming)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": parts.on_part_begin,
            "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value,
            "on_header_end": parts.on_header_end,
            "on_part_data": parts.on_part_data,
            "on_part_end": parts.on_part_end,
            "on_end": parts.on_end,
        },
    )
    offered: list[Receipt] = []
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            for path, content_type in parts.take():
                offered.append(
                    await _take_in(gateway, path, content_type, sender, sending, study_uid)
                )
        parser.finalize()
    except ClientDisconnect:
        log.warning("STOW-RS from %s: the sender went away mid-request", sender)
        return Response(status_code=400)
    except MultipartParseError as exc:
        log.warning("STOW-RS from %s: malformed body (%s)", sender, exc)
        return _refusal(400, f"the multipart body cannot be read: {exc}", stored=offered)
    except OSError as exc:  # a part could not be written down: the disk is full, or gone
        log.error("STOW-RS from %s: cannot keep a part (%s)", sender, exc)
        return _refusal(507, f"the gateway cannot store what it receives: {exc}", stored=offered)
    finally:
        parts.discard()
        await anyio.to_thread.run_sync(gateway.sending_ended, sending, sender)
    if not parts.ended:
        return _refusal(400, "the body ended before its closing boundary", stored=offered)
    if not offered:
        return _refusal(400, "the request holds no instance")
    return _answer(offered)


async def _take_in(
    gateway: Receiver,
    path: Path,
    content_type: str,
    sender: str,
    sending: int,
    study_uid: str | None,
) -> Receipt:
    kind = content_type.split(";")[0].strip().lower()
    if kind not in ("", "application/dicom"):
        path.unlink(missing_ok=True)
        receipt = Receipt(CANNOT_UNDERSTAND, reason=f"a part of type {kind}, not application/dicom")
    else:
        receipt = await anyio.to_thread.run_sync(gateway.receive, path, sender, sending, study_uid)
    if not receipt.stored:
        gateway.refusals.instance("stow", sender, receipt.status)
    return receipt


def _answer(offered: list[Receipt]) -> Response:
    """The Store Instances response: 200 when every instance was stored, 202 when some were,
    409 when none; the failures' reasons also in a `Warning` header, for a person to read."""
    stored = [o for o in offered if o.stored]
    failed = [o for o in offered if not o.stored]
    status = 200 if not failed else 202 if stored else 409
    headers = {}
    if failed:
        first = failed[0]
        name = first.sop_instance_uid or "a part"
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        text = f"{name}: {first.reason}{more}".replace('"', "'")
        headers["Warning"] = f'299 aifi-gateway "{text}"'
    return JSONResponse(_response_dataset(stored, failed), status, headers, DICOM_JSON)


def _response_dataset(stored: list[Receipt], failed: list[Receipt]) -> dict[str, object]:
    ds = Dataset()
    if stored:
        ds.ReferencedSOPSequence = [_reference(o) for o in stored]
    if failed:
        items = []
        for o in failed:
            item = _reference(o)
            item.FailureReason = o.status
            items.append(item)
        ds.FailedSOPSequence = items
    return ds.to_json_dict()


def _reference(offered: Receipt) -> Dataset:
    item = Dataset()
    if offered.sop_class_uid:
        item.ReferencedSOPClassUID = offered.sop_class_uid
    if offered.sop_instance_uid:
        item.ReferencedSOPInstanceUID = offered.sop_instance_uid
    return item


def _refusal(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    stored: list[Receipt] | None = None,
) -> Response:
    """A whole request refused: the reason for a person to read, and which instances of it
    were already stored (a body cut off after some parts)."""
    body: dict[str, object] = {"error": message}
    if stored:
        body["stored"] = [o.sop_instance_uid for o in stored if o.stored]
    return JSONResponse(body, status, headers)


def _acceptable(request: Request) -> Response | None:
    accept = request.headers.get("accept", "")
    if not accept:
        return None
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if kinds & {DICOM_JSON, "application/json", "application/*", "*/*"}:
        return None
    return _refusal(406, f"the answer comes as {DICOM_JSON} only, not {accept}")


def _sender(request: Request, senders: Sequence[StowSender]) -> str | None:
    """The configured sender whose HTTP Basic credentials came, or None. The password file is
    read on each request, so a new password works without a restart."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    for sender in senders:
        if hmac.compare_digest(sender.name.encode(), name.encode()):
            try:
                expected = sender.password()
            except OSError as exc:
                log.error("STOW-RS sender %s: cannot read its password file (%s)", name, exc)
                return None
            if expected and hmac.compare_digest(expected.encode(), password.encode()):
                return sender.name
            return None
    return None
