"""What the gateway's jobs are doing, for the hospital's engineer: which wait, for what, and
why; what reached the PACS and which notices went out. Read from the gateway's state on a
connection of its own, beside a running gateway, and never written.

An alert says that something waits (`GatewayBacklog`, `GatewayNoticeReceiverDown`); this says
which jobs, without reading the journal.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aifi.gateway.state import MAX_NOTICE_ATTEMPTS, UNACKNOWLEDGED

#: Jobs not done with: to be sent, at the exchange, or brought home and not yet in every PACS
#: (by the state's index); and any job whose notice is still queued (by the queue's index of
#: notices still to send, however many were sent before), with whether it is STAT.
_UNDER_WAY = (
    "SELECT *, priority = 'stat' AS urgent FROM jobs WHERE state IN ('pending', 'submitted')"
)
_NOTICE_QUEUED = (
    "SELECT j.*, MAX(q.urgent) AS urgent FROM queued_notices q JOIN jobs j ON j.id = q.job_id "
    "WHERE q.done_at IS NULL GROUP BY j.id"
)
#: Jobs ended here whose acknowledgement the exchange has not taken, as far as the gateway
#: knows (by the index of those): it failed, or waits for the job's refusal to go on record or
#: for its notice that no result will come to be queued. The gateway's next complete listing
#: of the exchange's ended jobs settles one the exchange took after all (`match_listing`).
_UNACKNOWLEDGED = UNACKNOWLEDGED.format(columns="*, priority = 'stat' AS urgent")


@dataclass(frozen=True)
class NoticeStatus:
    """One channel's notice of a job: `outcome` is sent, retrying, not tried (held off a
    receiver that is down), or failed (for good)."""

    channel: str
    kind: str
    outcome: str
    tries: int
    detail: str


@dataclass(frozen=True)
class JobStatus:
    """One job as the engineer needs it; `waiting_for` is empty for a job done with."""

    id: int
    exchange_job_id: str | None
    study_uid: str
    product_id: str
    priority: str
    state: str
    created_at: float
    attempts: int
    reason: str
    waiting_for: str
    pacs: list[str]
    notices: list[NoticeStatus]
    notices_queued: int
    #: The id the RIS knows the job's order by, when its STAT result was told late: the
    #: exchange job's, or one the gateway made for a job not sent then (None: not told).
    delay_announced_as: str | None = None


def job_statuses(
    state: Path,
    *,
    everything: bool = False,
    study_uid: str | None = None,
    limit: int = 50,
    now: float | None = None,
) -> list[JobStatus]:
    """The jobs not done with (STAT first, then oldest first); with `everything`, the latest
    jobs whatever their state; with `study_uid`, that study's jobs. At most `limit`."""
    now = time.time() if now is None else now
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        queued = _in_schema(conn, "table", "queued_notices")
        if study_uid is not None:
            select = "SELECT * FROM jobs WHERE study_uid = ? ORDER BY created_at, id LIMIT ?"
            jobs = [dict(row) for row in conn.execute(select, (study_uid, limit))]
        elif everything:
            select = "SELECT * FROM jobs ORDER BY id DESC LIMIT ?"  # ids grow with time
            jobs = [dict(row) for row in conn.execute(select, (limit,))]
        else:
            found: dict[int, dict[str, Any]] = {}
            selects = [_UNDER_WAY]
            if queued:
                selects.append(_NOTICE_QUEUED)
            if _in_schema(conn, "index", "ix_jobs_unacknowledged"):  # a gateway of this version ran
                selects.append(_UNACKNOWLEDGED)
            for select in selects:
                for row in conn.execute(select):
                    job = dict(row)
                    held = found.setdefault(int(job["id"]), job)
                    held["urgent"] = bool(held["urgent"]) or bool(job["urgent"])
            jobs = sorted(
                found.values(), key=lambda job: (not job["urgent"], job["created_at"], job["id"])
            )[:limit]
        ids = [int(job["id"]) for job in jobs]
        notices = _by_job(conn, "SELECT * FROM notifications", ids)
        deliveries = _by_job(conn, "SELECT * FROM deliveries", ids)
        waiting = (
            _by_job(conn, "SELECT job_id FROM queued_notices", ids, "done_at IS NULL")
            if queued
            else defaultdict(list)
        )
    finally:
        conn.close()
    return [
        _status(job, notices[job["id"]], deliveries[job["id"]], len(waiting[job["id"]]), now)
        for job in jobs
    ]


def _in_schema(conn: sqlite3.Connection, kind: str, name: str) -> bool:
    """Whether the state has this table or index: one written by an earlier version may not."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", (kind, name)
    ).fetchone()
    return found is not None


def _by_job(
    conn: sqlite3.Connection, select: str, ids: list[int], condition: str = ""
) -> defaultdict[int, list[dict[str, Any]]]:
    """`select`'s rows of these jobs (those meeting `condition`, too), by job."""
    rows: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
    also = f" AND {condition}" if condition else ""
    for start in range(0, len(ids), 500):  # SQLite's limit on bound values, kept well under
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"{select} WHERE job_id IN ({marks}){also}", chunk):
            rows[int(row["job_id"])].append(dict(row))
    return rows


def _status(
    job: dict[str, Any],
    notices: list[dict[str, Any]],
    deliveries: list[dict[str, Any]],
    queued: int,
    now: float,
) -> JobStatus:
    stat = job["priority"] == "stat" or bool(job.get("urgent"))
    return JobStatus(
        id=int(job["id"]),
        exchange_job_id=job["exchange_job_id"],
        study_uid=str(job["study_uid"]),
        product_id=str(job["product_id"]),
        priority="stat" if stat else "routine",
        state=str(job["state"]),
        created_at=float(job["created_at"]),
        attempts=int(job["attempts"]),
        reason=str(job["reason"] or ""),
        waiting_for=_waiting_for(job, queued, now),
        pacs=_pacs(deliveries),
        notices=[_notice(row) for row in sorted(notices, key=lambda row: row["channel"])],
        notices_queued=queued,
        delay_announced_as=job.get("delay_announced_as") if job.get("delay_told_at") else None,
    )


def _waiting_for(job: dict[str, Any], queued: int, now: float) -> str:
    """What the job waits for, in words; empty when it is done with."""
    state, attempts = job["state"], int(job["attempts"])
    if state == "pending":
        if attempts == 0:
            return "to be sent to the exchange"
        due = float(job["next_attempt_at"])
        when = "now" if due <= now else f"at {clock(due)}"
        return f"sending to the exchange again {when} (try {attempts + 1})"
    if state == "submitted":
        if job["result_seen_at"] is None:
            return f"the product's outcome (sent {ago(now - float(job['submitted_at'] or now))})"
        if attempts == 0:
            return "bringing its results home"
        return f"bringing its results home again (try {attempts + 1})"
    if queued:
        if job.get("acknowledged_at") is not None:  # none to wait: the exchange lost the job
            return "its notice"
        return "its notice (its acknowledgement at the exchange waits for it)"
    # A state of an older version, its gateway still running, has no column: nothing said.
    if "acknowledged_at" in job and job["acknowledged_at"] is None and job["exchange_job_id"]:
        if state == "refused":
            return "its refusal to go on record at the exchange, then its acknowledgement"
        if state in ("ended", "delivered"):
            # The acknowledgement failed, or an ended job's notice that no result will come
            # could not be queued yet: both are tried again, and the log says which.
            return "its acknowledgement at the exchange (tried again; the gateway's log says why)"
    return ""


def _pacs(deliveries: list[dict[str, Any]]) -> list[str]:
    """Per PACS: how many results it stored, and what it refused, with the last error."""
    by_destination: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in deliveries:
        by_destination[str(row["destination"])].append(row)
    said = []
    for destination, rows in sorted(by_destination.items()):
        stored = sum(1 for row in rows if row["state"] == "delivered")
        failed = [row for row in rows if row["state"] != "delivered"]
        text = f"{destination}: {stored} stored"
        if failed:
            text += f", {len(failed)} failed ({failed[-1]['last_error'] or 'no reason given'})"
        said.append(text)
    return said


def _notice(row: dict[str, Any]) -> NoticeStatus:
    attempts, detail = int(row["attempts"]), str(row["detail"] or "")
    if row["ok"]:
        outcome = "sent"
    elif row["retryable"] and attempts < MAX_NOTICE_ATTEMPTS:
        outcome = "not tried" if detail.startswith("not tried") else "retrying"
    else:
        outcome = "failed"
    return NoticeStatus(
        channel=str(row["channel"]),
        kind=str(row.get("kind") or "result"),
        outcome=outcome,
        tries=attempts,
        detail=detail,
    )


def clock(moment: float) -> str:
    """A moment in the host's local time, as the hospital's engineer reads it."""
    return datetime.fromtimestamp(moment).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
