"""What a refused change was, read from its request, for the access log.

A refusal that a service stores itself says the most (the job's patient pseudonym, the rule a
file broke). Every other refused change — a hospital writing to another's job, a worker
heartbeating a lease it lost, an operator's change that does not hold — is stored by the app
from the request's route, so that probes through the write endpoints are on record too; so is
a read refused outside `AuditLog.reading` (a role the route asks for, a query only hospitals
may use), as a refused `read`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Methods that change something (a refused read is stored as a `read`).
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: The object a route's first segment names, as the access log calls it.
_OBJECTS = {
    "jobs": "job",
    "organisations": "organisation",
    "products": "product",
    "subscriptions": "subscription",
    "users": "user",
}


@dataclass(frozen=True)
class RefusedChange:
    action: str
    object_type: str
    object_id: str
    detail: str


def refused_change(
    method: str, route: str, path_params: Mapping[str, object], message: str
) -> RefusedChange:
    """The access-log entry for a change refused with `message` on `route`, a route's path
    template such as ``/jobs/{job_id}/results/{name}`` (or for a read refused outside
    `AuditLog.reading`, which stores its own)."""
    segments = [segment for segment in route.split("/") if segment]
    if segments[:1] == ["ui"]:  # a web page names its object as the API does
        segments = segments[1:]
    first = segments[0] if segments else ""
    if "inputs" in segments or "results" in segments:
        object_type = "input" if "inputs" in segments else "result"
    else:
        object_type = _OBJECTS.get(first, first)
    if method not in CHANGES:  # a read refused outside `AuditLog.reading` (its role, a query)
        action = "read"
    elif method == "DELETE":
        action = "delete"
    elif object_type in ("input", "result") or (method == "POST" and segments == [first]):
        action = "create"
    else:
        action = "update"
    object_id = "/".join(str(value) for value in path_params.values())
    return RefusedChange(action, object_type, object_id, f"{method} {route}: {message}")
