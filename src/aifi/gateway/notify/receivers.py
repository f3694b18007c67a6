"""Loopback receivers for the three channels: try a configuration, run the demo, test, measure.

Each is a real peer, not a mock: :class:`Hl7Listener` is hl7apy's own MLLP server, parsing what
arrives against the ORU_R01 structure and answering an ACK built with hl7apy;
:class:`FhirReceiver` is a FastAPI app under uvicorn that validates each transaction Bundle with
fhir.resources R4B, resolves its references and stores it as a FHIR server would (with
conditional create); :class:`WebhookReceiver` checks the HMAC signature before it accepts.
Each records what it received, with the monotonic time of arrival, on a queue to wait on.
They listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, Response
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPServer
from hl7apy.parser import parse_message
from pydantic import ValidationError

from aifi.app_thread import AppThread
from aifi.gateway.notify.mllp import frame
from aifi.gateway.notify.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

HOST = "127.0.0.1"
FHIR_JSON = "application/fhir+json"
#: Required-binding statuses fhir.resources does not check by itself.
REPORT_STATUSES = frozenset(
    {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
     "cancelled", "entered-in-error", "unknown"}
)  # fmt: skip
OBSERVATION_STATUSES = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled",
     "entered-in-error", "unknown"}
)  # fmt: skip


# HL7 v2 over MLLP -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedHl7:
    """One message as the listener got it: ER7 text, hl7apy's parse, monotonic arrival."""

    text: str
    message: Message
    received_at: float


class _OruHandler(AbstractHandler):  # type: ignore[misc]
    def __init__(self, message: str, listener: Hl7Listener) -> None:
        super().__init__(message)
        self.listener = listener

    def reply(self) -> str:
        arrived = time.monotonic()
        parsed = parse_message(
            self.incoming_message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
        )
        parsed.validate()
        self.listener.received.put(ReceivedHl7(self.incoming_message, parsed, arrived))
        code, text = self.listener.ack_code, self.listener.ack_text
        return self.listener.ack_for(parsed, code, text)


class _ErrorHandler(AbstractErrorHandler):  # type: ignore[misc]
    def __init__(self, exc: Exception, message: str, listener: Hl7Listener) -> None:
        super().__init__(exc, message)
        self.listener = listener

    def reply(self) -> str:
        self.listener.errors.put(f"{type(self.exc).__name__}: {self.exc}")
        try:
            parsed = parse_message(
                self.incoming_message, validation_level=VALIDATION_LEVEL.TOLERANT
            )
        except HL7apyException:
            return ""
        return self.listener.ack_for(parsed, "AR", f"cannot process: {type(self.exc).__name__}")


class Hl7Listener:
    """An MLLP receiver (hl7apy's :class:`~hl7apy.mllp.MLLPServer`) that files ORU^R01.

    It parses each message against the v2.5 ORU_R01 structure with strict validation; a
    message that fails is answered AR and its error put on :attr:`errors`. Set
    :attr:`ack_code` (AA, AE, AR) and :attr:`ack_text` to choose what valid messages get.
    """

    def __init__(self, ack_code: str = "AA", ack_text: str = "") -> None:
        self.ack_code = ack_code
        self.ack_text = ack_text
        self.received: queue.Queue[ReceivedHl7] = queue.Queue()
        self.errors: queue.Queue[str] = queue.Queue()
        handlers = {
            "ORU^R01^ORU_R01": (_OruHandler, self),
            "ORU^R01": (_OruHandler, self),
            "ERR": (_ErrorHandler, self),
        }
        self._server = MLLPServer(HOST, 0, handlers, timeout=10)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="hl7-listener", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Hl7Listener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Hl7Listener:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def ack_for(incoming: Message, code: str, text: str = "") -> str:
        """The framed ACK (v2.5, built with hl7apy) answering `incoming` with `code`."""
        ack = Message("ACK", version="2.5", validation_level=VALIDATION_LEVEL.TOLERANT)
        msh = incoming.msh
        ack.msh.msh_3 = msh.msh_5.to_er7()
        ack.msh.msh_4 = msh.msh_6.to_er7()
        ack.msh.msh_5 = msh.msh_3.to_er7()
        ack.msh.msh_6 = msh.msh_4.to_er7()
        ack.msh.msh_7 = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        ack.msh.msh_9 = "ACK^R01^ACK"
        ack.msh.msh_10 = "ACK" + msh.msh_10.to_er7()[-16:]
        ack.msh.msh_11 = msh.msh_11.to_er7() or "P"
        ack.msh.msh_12 = "2.5"
        ack.msa.msa_1 = code
        ack.msa.msa_2 = msh.msh_10.to_er7()
        if text:
            ack.msa.msa_3 = text
        return frame(str(ack.to_er7()) + "\r").decode()


# HTTP receivers (FHIR, webhook) ---------------------------------------------------------------


class _HttpReceiver:
    """Start, stop and `with` for a receiver served by an :class:`AppThread`."""

    _served: AppThread

    def start(self) -> Self:
        self._served.start()
        return self

    def stop(self) -> None:
        self._served.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class _FhirStore:
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    by_identifier: dict[tuple[str, str, str], str] = field(default_factory=dict)
    next_id: int = 1


class FhirReceiver(_HttpReceiver):
    """A minimal FHIR R4 server for transaction Bundles POSTed to its base URL.

    It refuses (400, with an OperationOutcome) a body that is not a valid R4B Bundle of type
    transaction, an entry without fullUrl or with a request other than a POST or a conditional
    PUT, a status outside its value set, and a ``urn:uuid`` reference that no entry of the
    Bundle defines. It honours ``ifNoneExist=identifier=system|value`` and the conditional
    update ``PUT <type>?identifier=system|value`` (replaces the match, or creates), replaces
    ``urn:uuid`` references by the ids it assigns, and answers a transaction-response Bundle.
    With `bearer_token` it answers 401 to a request without that token. Put HTTP statuses on
    :attr:`fail_with` to answer the next requests with them instead.
    """

    def __init__(self, bearer_token: str | None = None) -> None:
        self.bearer_token = bearer_token
        self.store = _FhirStore()
        self.received: queue.Queue[float] = queue.Queue()
        self.fail_with: list[int] = []
        self._lock = threading.Lock()
        app = FastAPI()
        app.add_api_route("/fhir", self._transaction, methods=["POST"])
        app.add_api_route("/fhir/metadata", self._capabilities, methods=["GET"])
        self._served = AppThread(app, HOST, 0, name="FHIR receiver")

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self._served.port}/fhir"

    def resources(self, resource_type: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.store.resources.get(resource_type, {}).values())

    async def _capabilities(self) -> Response:
        """What every FHIR server answers at `metadata`, without authentication: its
        CapabilityStatement (a server that takes transactions)."""
        statement = CapabilityStatement.model_validate(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2026-01-01",
                "kind": "instance",
                "software": {"name": "AIFI FHIR receiver"},
                "fhirVersion": "4.0.1",
                "format": ["json"],
                "rest": [{"mode": "server", "interaction": [{"code": "transaction"}]}],
            }
        )
        return Response(statement.model_dump_json(exclude_none=True), 200, media_type=FHIR_JSON)

    async def _transaction(self, request: Request) -> Response:
        body = await request.body()
        if self.fail_with:
            status = self.fail_with.pop(0)
            return _outcome(status, f"injected failure {status}")
        if self.bearer_token is not None:
            expected = f"Bearer {self.bearer_token}"
            if request.headers.get("authorization") != expected:
                return _outcome(401, "missing or wrong bearer token")
        try:
            bundle = Bundle.model_validate_json(body)
        except (ValidationError, ValueError) as exc:
            return _outcome(400, f"not a valid FHIR R4 Bundle: {exc}")
        problem = _transaction_problem(bundle)
        if problem:
            return _outcome(400, problem)
        with self._lock:
            answer = self._store(bundle)
        self.received.put(time.monotonic())
        checked = Bundle.model_validate(answer)
        return Response(checked.model_dump_json(exclude_none=True), 200, media_type=FHIR_JSON)

    def _store(self, bundle: Bundle) -> dict[str, Any]:
        assigned: dict[str, str] = {}
        responses: list[dict[str, Any]] = []
        created: list[tuple[str, str, dict[str, Any]]] = []
        for entry in bundle.entry or []:
            assert entry.resource is not None and entry.request is not None  # checked before
            resource = entry.resource.model_dump(mode="json", exclude_none=True)
            kind = str(resource["resourceType"])
            update = entry.request.method == "PUT"  # conditional: the match, or a new one
            condition = str(entry.request.url).partition("?")[2] if update else None
            existing = self._existing(kind, condition or entry.request.ifNoneExist)
            if existing is not None:
                assigned[str(entry.fullUrl)] = f"{kind}/{existing}"
                responses.append(
                    {"response": {"status": "200 OK", "location": f"{kind}/{existing}"}}
                )
                if update:
                    resource["id"] = existing
                    created.append((kind, existing, resource))
                continue
            new_id = str(self.store.next_id)
            self.store.next_id += 1
            resource["id"] = new_id
            assigned[str(entry.fullUrl)] = f"{kind}/{new_id}"
            created.append((kind, new_id, resource))
            for identifier in resource.get("identifier", []):
                if "system" in identifier and "value" in identifier:
                    key = (kind, identifier["system"], identifier["value"])
                    self.store.by_identifier[key] = new_id
            responses.append(
                {"response": {"status": "201 Created", "location": f"{kind}/{new_id}/_history/1"}}
            )
        for kind, new_id, resource in created:
            for reference in _references(resource):
                if reference.get("reference") in assigned:
                    reference["reference"] = assigned[reference["reference"]]
            self.store.resources.setdefault(kind, {})[new_id] = resource
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}

    def _existing(self, kind: str, condition: str | None) -> str | None:
        if not condition:
            return None
        values = parse_qs(condition).get("identifier", [])
        for value in values:
            system, _, code = value.partition("|")
            found = self.store.by_identifier.get((kind, system, code))
            if found is not None:
                return found
        return None


def _transaction_problem(bundle: Bundle) -> str | None:
    if bundle.type != "transaction":
        return f"Bundle.type must be 'transaction', not {bundle.type!r}"
    entries = bundle.entry or []
    full_urls = {str(entry.fullUrl) for entry in entries if entry.fullUrl}
    for index, entry in enumerate(entries):
        where = f"Bundle.entry[{index}]"
        if entry.resource is None or not entry.fullUrl:
            return f"{where}: a transaction entry needs a resource and a fullUrl"
        kind = entry.resource.get_resource_type()
        request = entry.request
        posted = request is not None and request.method == "POST" and request.url == kind
        replaced = (
            request is not None
            and request.method == "PUT"
            and str(request.url).startswith(f"{kind}?identifier=")
        )
        if not (posted or replaced):
            return f"{where}: request must be POST {kind} or PUT {kind}?identifier=…"
        status = getattr(entry.resource, "status", None)
        allowed = {"DiagnosticReport": REPORT_STATUSES, "Observation": OBSERVATION_STATUSES}
        if kind in allowed and status not in allowed[kind]:
            return f"{where}: {kind}.status {status!r} is not in its value set"
        resource = entry.resource.model_dump(mode="json", exclude_none=True)
        for reference in _references(resource):
            target = reference.get("reference")
            if target and target.startswith("urn:uuid:") and target not in full_urls:
                return f"{where}: reference {target} is not an entry of the Bundle"
    return None


def _references(node: Any) -> Iterator[dict[str, Any]]:
    """Every object with a 'reference' key (a FHIR Reference) anywhere in a resource tree."""
    if isinstance(node, dict):
        if "reference" in node:
            yield node
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _outcome(status: int, text: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}],
    }
    return Response(json.dumps(body), status, media_type=FHIR_JSON)


@dataclass(frozen=True)
class ReceivedWebhook:
    """An alert whose signature verified: headers, raw body, parsed JSON, monotonic arrival."""

    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]
    received_at: float


class WebhookReceiver(_HttpReceiver):
    """An alert receiver that verifies the HMAC signature (401 when it does not match) and
    records what it accepts; put HTTP statuses on :attr:`fail_with` to refuse the next ones."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.received: queue.Queue[ReceivedWebhook] = queue.Queue()
        self.refused: queue.Queue[str] = queue.Queue()
        self.fail_with: list[int] = []
        app = FastAPI()
        app.add_api_route("/alerts", self._alert, methods=["POST"])
        self._served = AppThread(app, HOST, 0, name="webhook receiver")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._served.port}/alerts"

    async def _alert(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        if self.fail_with:
            return Response(status_code=self.fail_with.pop(0))
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not verify_signature(self.key, timestamp, body, signature):
            self.refused.put("signature does not verify")
            return Response("signature does not verify", 401)
        payload = json.loads(body)
        headers = {key.lower(): value for key, value in request.headers.items()}
        self.received.put(ReceivedWebhook(headers, body, payload, arrived))
        return Response(status_code=204)
