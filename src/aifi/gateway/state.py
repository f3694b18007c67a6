"""The gateway's durable state (SQLite): instances received, studies, jobs and deliveries.

Everything the gateway acknowledges is written here first, so a restart resumes where it
stopped: a half-received study completes, an unsent job is sent, an undelivered result is
delivered — each exactly once, because every step is keyed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aifi.durable import fsync_path
from aifi.gateway import tallies
from aifi.gateway.tallies import Tally

log = logging.getLogger(__name__)

UNKNOWN_JOBS_SCHEMA = """
-- ended exchange jobs of this hospital that this gateway has no record of (made by a disk a
-- restore replaced, say), and what the hospital decided for each (`aifi gateway-unknown-jobs`):
-- the gateway does it when it next meets the job (`aifi.gateway.adoption`)
CREATE TABLE IF NOT EXISTS unknown_jobs (
    exchange_job_id TEXT PRIMARY KEY,
    decision TEXT NOT NULL,   -- adopt | let_go
    decided_at REAL NOT NULL,
    decided_by TEXT NOT NULL,
    taken_at REAL,            -- when the gateway began to do it: no longer to be changed
    disclosed_at REAL,        -- when its disclosure entry was written (`Adoptions._disclose`)
    study_uid TEXT,           -- the hospital's, as the vault knew it when the decision was taken
                              -- (else the pseudonymised one); NULL: taken by an older version
    settled_at REAL,          -- when the gateway did it
    note TEXT NOT NULL DEFAULT ''  -- why it has not yet
);
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    body_part TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL
);
-- a study's instances; with their sizes, so that the bytes of the spool's studies are
-- summed from the index alone
CREATE INDEX IF NOT EXISTS ix_instances_study_size ON instances(study_uid, size);
DROP INDEX IF EXISTS ix_instances_study;
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    state TEXT NOT NULL,              -- receiving | routed | unrouted | purged
    round INTEGER NOT NULL DEFAULT 1, -- a late instance after routing opens a new round
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    due_at REAL NOT NULL,
    routed_at REAL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ix_studies_due ON studies(state, due_at);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    round INTEGER NOT NULL,
    product_id TEXT NOT NULL,
    priority TEXT,
    series_uids TEXT NOT NULL DEFAULT '[]',  -- JSON: the series the routing rule selected
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,     -- pending | submitted | ended | delivered | refused | skipped
    exchange_job_id TEXT,
    exchange_state TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    study_last_at REAL NOT NULL,
    created_at REAL NOT NULL,
    submitted_at REAL,
    ended_at REAL,
    delivered_at REAL,
    exchange_ended_at REAL,  -- when the exchange says the job ended (its clock)
    result_seen_at REAL,     -- when this gateway first saw the ended job
    results_delivered INTEGER NOT NULL DEFAULT 0,
    inputs_digest TEXT,      -- what it was sent with (`inputs_digest`); NULL: not known
    -- 1 once a request to open it may have reached the exchange (`skip_if_sent_before`)
    may_be_open INTEGER NOT NULL DEFAULT 0,
    -- when the exchange took its acknowledgement (brought home, or settled)
    acknowledged_at REAL,
    delivery TEXT,  -- why its results did not reach the PACS (aifi.results.delivery);
    -- said with its acknowledgement; NULL: delivered, or not brought home
    -- the exchange job it was last sent again in place of (`send_again_anew`): that job's
    -- listing, its acknowledgement not through, is known as this job's
    replaced_exchange_job_id TEXT,
    replaced_for TEXT,  -- what the exchange's store lost of that job: images | results
    -- the job ran STAT and its result was late: the id its delay notice went under
    -- (`announce_delay`); NULL: no delay was queued
    delay_announced_as TEXT,
    -- when the delay notice first went to a receiver: the job's later notice then goes under
    -- `delay_announced_as`, replacing it (`delay_told`); NULL: no receiver heard of a delay
    delay_told_at REAL,
    -- when a notice to follow the delay was queued (or, after a restore, the exchange said a
    -- lost disk brought the job home): its order is not left in process (`told_and_left`)
    delay_followed_at REAL
);
CREATE INDEX IF NOT EXISTS ix_jobs_state ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS ix_jobs_study ON jobs(study_uid);  -- a study's jobs: retention, re-sends
-- the last hour's deliveries (turnaround), without reading every job ever delivered
CREATE INDEX IF NOT EXISTS ix_jobs_delivered ON jobs(state, delivered_at);
-- a result coming home finds its job by the exchange's id: one lookup, not a scan of every job
CREATE INDEX IF NOT EXISTS ix_jobs_exchange ON jobs(exchange_job_id)
    WHERE exchange_job_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS eligibility (
    study_uid TEXT NOT NULL,
    round INTEGER NOT NULL,
    month TEXT NOT NULL,         -- YYYY-MM the study's round was routed in
    counted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_uid, round)
);
-- the studies still to count for uptake, found without reading those counted long ago
CREATE INDEX IF NOT EXISTS ix_eligibility_uncounted ON eligibility(counted) WHERE counted = 0;
CREATE TABLE IF NOT EXISTS eligible_counts (
    product_id TEXT NOT NULL,
    month TEXT NOT NULL,
    studies INTEGER NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (product_id, month)
);
-- the studies counted in eligible_counts: a study counts once a month for a product, however
-- many rounds it takes (the exchange's volume counts it once, too); kept for the months still
-- being counted, so it holds about a month of studies
CREATE TABLE IF NOT EXISTS eligible_studies (
    month TEXT NOT NULL,
    product_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    PRIMARY KEY (month, product_id, study_uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notifications (
    job_id INTEGER NOT NULL,
    channel TEXT NOT NULL,   -- hl7 | fhir | webhook
    ok INTEGER NOT NULL,
    retryable INTEGER NOT NULL,
    stat INTEGER NOT NULL,
    detail TEXT,
    seconds REAL,
    attempts INTEGER NOT NULL DEFAULT 1,
    at REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'result',  -- result | no-result: which notice the row is of
    PRIMARY KEY (job_id, channel)
);
-- what the gateway last read of each product's catalogue entry that a late STAT job needs
-- (priority, turnaround, name, version): a gateway restarted while the exchange is out of
-- reach still knows which products run STAT (`aifi.gateway.delays`)
CREATE TABLE IF NOT EXISTS products_seen (
    product_id TEXT PRIMARY KEY,
    entry TEXT NOT NULL,  -- JSON
    read_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,   -- purged_studies | purged_instances | purged_bytes | ...
    value REAL NOT NULL      -- ... purged_uploaded_bytes: what purged rows no longer count
);
-- a restore from a backup (`aifi gateway-restore`): the jobs it holds as submitted are checked
-- against the exchange at the next start (`Gateway.reconcile_restore`), for those brought home
-- between the backup and the restore
CREATE TABLE IF NOT EXISTS restores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    backup_taken_at REAL NOT NULL,
    restored_at REAL NOT NULL,
    reconciled_at REAL
);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id INTEGER NOT NULL,
    result_name TEXT NOT NULL,
    destination TEXT NOT NULL,
    sop_instance_uid TEXT,
    state TEXT NOT NULL,     -- delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (job_id, result_name, destination)
);
-- notices to send (`aifi.gateway.notice_queue`): queued as a job's results come home, sent on
-- threads of their own, `done_at` set once every channel is done with the notice, and the
-- notice itself blanked (the row stays, so that the job brought home again does not queue it
-- again; what the notice said, its UIDs among it, does not)
CREATE TABLE IF NOT EXISTS queued_notices (
    job_id INTEGER NOT NULL,
    kind TEXT NOT NULL,       -- result | no-result | delayed
    notice TEXT NOT NULL,     -- JSON (QueuedNotice): all but the patient's identity
    urgent INTEGER NOT NULL,  -- STAT: sent on a thread of its own, its first try never held off
    passes INTEGER NOT NULL DEFAULT 0,  -- passes that left a channel to try again
    -- of those, passes that asked the receivers they tried: not cut short by the gateway's
    -- stop, nor kept from one by a key or token file mid-rotation (0: a STAT notice's first
    -- pass is still to come, which tries its receivers even when all are held off)
    tries INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    done_at REAL,
    PRIMARY KEY (job_id, kind)
);
-- the notices still to send: a few, however many were sent before
CREATE INDEX IF NOT EXISTS ix_queued_notices_due ON queued_notices(urgent, due_at)
    WHERE done_at IS NULL;
"""
    + UNKNOWN_JOBS_SCHEMA
)


#: Indexes on columns that `COLUMNS` may have had to add first, one statement each.
AFTER_COLUMNS = (
    # the jobs the exchange still waits on this gateway to acknowledge: a few, however many
    # ended
    "CREATE INDEX IF NOT EXISTS ix_jobs_unacknowledged ON jobs(created_at)"
    " WHERE acknowledged_at IS NULL AND exchange_job_id IS NOT NULL"
    " AND state IN ('ended', 'delivered', 'refused')",
    "CREATE INDEX IF NOT EXISTS ix_jobs_replaced ON jobs(replaced_exchange_job_id)"
    " WHERE replaced_exchange_job_id IS NOT NULL",
    # the jobs told late and not yet followed (`told_and_left`, at every look for late jobs):
    # a few, however many the gateway made
    "CREATE INDEX IF NOT EXISTS ix_jobs_told_unfollowed ON jobs(state)"
    " WHERE delay_told_at IS NOT NULL AND delay_followed_at IS NULL",
)


#: The jobs of `ix_jobs_unacknowledged`, read by it: a few rows, however many jobs ended (left
#: to itself, SQLite would read every delivered job by `ix_jobs_delivered`).
UNACKNOWLEDGED = (
    "SELECT {columns} FROM jobs INDEXED BY ix_jobs_unacknowledged WHERE acknowledged_at IS NULL"
    " AND exchange_job_id IS NOT NULL AND state IN ('ended', 'delivered', 'refused')"
)


#: Columns added since a table was first created, by table: `CREATE TABLE IF NOT EXISTS` leaves
#: an existing table as it is, so a state of an older version gets them at start: each column
#: with its definition, and what its rows hold then (None: the default). A gateway of the older
#: version, run after a rollback, names the columns it writes and so leaves them alone.
COLUMNS: dict[str, dict[str, tuple[str, str | None]]] = {
    "jobs": {
        "inputs_digest": ("TEXT", None),  # not known: nothing is skipped for the job
        "delay_announced_as": ("TEXT", None),  # no delay was told before
        "delay_told_at": ("REAL", None),
        "delay_followed_at": ("REAL", None),
        "replaced_exchange_job_id": ("TEXT", None),
        # A job sent again before this column came was sent again for lost images.
        "replaced_for": (
            "TEXT",
            "UPDATE jobs SET replaced_for = 'images' WHERE replaced_exchange_job_id IS NOT NULL",
        ),
        # A job an older version may have begun to send (stopped mid-request, its attempts
        # still 0) may be open at the exchange: none still to send is ever skipped.
        "may_be_open": (
            "INTEGER NOT NULL DEFAULT 0",
            "UPDATE jobs SET may_be_open = 1 WHERE state = 'pending'",
        ),
        # A completed job an older version ended undelivered: its reason, read from the words
        # it ended with (`Gateway.collect`'s own), so that it is said as it ended and never
        # found anew (its study may have left the vault since). Anything else stays NULL.
        "delivery": (
            "TEXT",
            "UPDATE jobs SET delivery = CASE"
            " WHEN reason LIKE '%cannot be filed in the PACS%' THEN 'unfileable'"
            " WHEN reason LIKE '%not the study this gateway sent it for%' THEN 'unmapped'"
            " WHEN reason LIKE '%was purged at the exchange%' THEN 'purged' END"
            " WHERE state = 'ended' AND exchange_state = 'completed'"
            " AND result_seen_at IS NOT NULL",
        ),
        # An older version did not record its acknowledgements: a job it brought home, or
        # ended, is taken as acknowledged when it ended (as it mostly was). One the exchange
        # still lists is taken as not acknowledged at the next poll (`match_listing`).
        "acknowledged_at": (
            "REAL",
            "UPDATE jobs SET acknowledged_at = COALESCE(delivered_at, ended_at, created_at)"
            " WHERE state IN ('ended', 'delivered', 'refused', 'skipped')",
        ),
    },
    # Which notice a channel's row is of: an older version sent result notices only.
    "notifications": {"kind": ("TEXT NOT NULL DEFAULT 'result'", None)},
    # A queue from before these: nothing was done with yet; each pass it had was a try.
    "queued_notices": {
        "done_at": ("REAL", None),
        "tries": ("INTEGER NOT NULL DEFAULT 0", "UPDATE queued_notices SET tries = passes"),
    },
    "unknown_jobs": {
        column: ("TEXT" if column == "study_uid" else "REAL", None)
        for column in ("taken_at", "disclosed_at", "study_uid")
    },
}


#: A job's idempotency key: its round's (`<study>:<product>:<round>`, then `:lost` once sent
#: again for images the exchange lost), and `:again<N>` once started over N times.
_AGAIN = re.compile(r"(.*?)(?::again(\d+))?")


def _started_over(key: str) -> tuple[str, int]:
    """A job's key without its `:again<N>`, and N (0 when it was not started over)."""
    match = _AGAIN.fullmatch(key)
    assert match is not None  # every string matches
    return match[1], int(match[2] or 0)


def started_over_key(key: str) -> str:
    """The key a job goes under once started over (`GatewayState.start_over`): `:again<N+1>`
    in place of its `:again<N>`."""
    base, again = _started_over(key)
    return f"{base}:again{again + 1}"


def sent_again_for_store_loss(key: str) -> bool:
    """Whether a job's key says it was sent again for what the exchange's store lost
    (`lost_by_store_key`), started over since or not: it is never sent again for that twice."""
    return _started_over(key)[0].endswith(":lost")


#: What the exchange's store lost of a job that the gateway sends again in its place.
LostByStore = Literal["images", "results"]


def lost_by_store_key(key: str) -> str:
    """The key a job goes under once sent again because the exchange's store lost images of
    its study, or the product's results (`GatewayState.send_again_anew`): its round's, `:lost`
    after it, never had before."""
    return f"{_started_over(key)[0]}:lost"


def _add_columns(db: sqlite3.Connection, tables: Iterable[str] = COLUMNS) -> list[str]:
    """Add the columns of `COLUMNS` the `tables` lack; returns those added (table.column)."""
    added = []
    for table in tables:
        columns = COLUMNS[table]
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column, (definition, backfill) in columns.items():
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                if backfill:
                    db.execute(backfill)
                added.append(f"{table}.{column}")
    return added


def inputs_digest(instances: Iterable[Mapping[str, Any]]) -> str:
    """What a job is sent with, as one value: a SHA-256 over its instances' SOP Instance UIDs
    and sizes, in UID order (the hospital's own UIDs: it never leaves the gateway). The same
    instance sent again unchanged (a sender's retry) is nothing new; DICOM gives an image
    whose pixels change a new UID, and a header corrected under its UID mostly changes its
    size."""
    keys = sorted(f"{row['sop_instance_uid']} {row['size']}" for row in instances)
    return hashlib.sha256("\n".join([str(len(keys)), *keys]).encode()).hexdigest()


#: Another job of `{job}`'s study and product sent with the same instances, whose send went
#: through and did not fail: its results are delivered, or on their way. Ended or refused
#: jobs are not such a job: a round opened again after a failure is sent again.
_TOOK_THE_SAME = """
    c.study_uid = {job}.study_uid AND c.product_id = {job}.product_id AND c.id != {job}.id
    AND c.inputs_digest = {digest} AND c.state IN ('submitted', 'delivered')
"""

_TAKE_NEW_INSTANCE = ", ".join(
    f"{column} = excluded.{column}"
    for column in (
        "study_uid", "series_uid", "sop_class_uid", "modality", "body_part",
        "study_description", "series_description", "path", "size", "calling_ae", "received_at",
    )
)  # fmt: skip


@dataclass(frozen=True)
class ReceivedInstance:
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str
    body_part: str
    study_description: str
    series_description: str
    path: Path
    size: int
    calling_ae: str


@dataclass(frozen=True)
class PurgedStudy:
    """What one study's purge removed: its instances' spool files, and the local ids of its
    jobs, whose results folders go too."""

    study_uid: str
    instances: int
    bytes: int
    job_ids: list[int]


#: A study whose instances and results may go: routed (or matched no route), no job of any of
#: its rounds still to send or under way, and its last job ended — or, unrouted, its routing
#: happened — at or before the one parameter (now − the retention time).
_SETTLED = """
    s.state IN ('routed', 'unrouted')
    AND NOT EXISTS (
        SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid AND j.state IN ('pending', 'submitted')
    )
"""
#: When a settled study was done with: its last job's end, or its routing.
_DONE_AT = """
    MAX(
        COALESCE(s.routed_at, s.last_at),
        COALESCE((SELECT MAX(j.ended_at) FROM jobs j WHERE j.study_uid = s.study_uid), 0)
    )
"""
_PURGEABLE = f"{_SETTLED} AND {_DONE_AT} <= ?"


@dataclass(frozen=True)
class RoutedJob:
    """A product a study goes to, with the series its routing rule selected."""

    product_id: str
    priority: str | None
    series_uids: frozenset[str]


def _round_failed(db: sqlite3.Connection, study_uid: str) -> bool:
    """Whether a job of the study's latest round ended without its results (failed,
    expired or cancelled at the exchange, or refused), or was skipped for another job that
    took the same instances and has since failed so."""
    took_the_same = _TOOK_THE_SAME.format(job="j", digest="j.inputs_digest")
    return (
        db.execute(
            "SELECT 1 FROM jobs j JOIN studies s ON s.study_uid = j.study_uid "
            "WHERE j.study_uid = ? AND j.round = s.round AND (j.state IN ('ended', 'refused') "
            "OR (j.state = 'skipped' AND NOT EXISTS "
            f"(SELECT 1 FROM jobs c WHERE {took_the_same})))",
            (study_uid,),
        ).fetchone()
        is not None
    )


#: A restore not yet checked with the exchange: its jobs may have been brought home since.
_RESTORE_UNCHECKED = "EXISTS (SELECT 1 FROM restores WHERE reconciled_at IS NULL)"
#: A job whose delay may be told (`GatewayState.announce_delay`): made here (not adopted,
#: round 0: ended at the exchange already), under way (to be sent, or at the exchange), not
#: told before, and no notice of its result or of none queued (a delay after the result
#: would undo it at the receiver); no restore still to be checked.
_DELAY_TO_TELL = (
    "{job}.state IN ('pending', 'submitted') AND {job}.round > 0 "
    "AND {job}.delay_announced_as IS NULL AND NOT EXISTS (SELECT 1 FROM queued_notices q "
    f"WHERE q.job_id = {{job}}.id) AND NOT {_RESTORE_UNCHECKED}"
)
#: A job told late that left without a notice to follow (refused, skipped as sent before, or
#: settled with nothing to tell): its order would stay in process at the RIS.
_TOLD_AND_LEFT = (
    "delay_told_at IS NOT NULL AND delay_followed_at IS NULL AND (state IN ('refused', "
    "'skipped') OR (state = 'ended' AND acknowledged_at IS NOT NULL)) "
    f"AND NOT {_RESTORE_UNCHECKED}"
)

#: Tries per notice channel before its failure is left on record and the job moves on.
MAX_NOTICE_ATTEMPTS = 5


def notice_settled(outcome: dict[str, Any]) -> bool:
    """Whether a channel's notice needs no more tries: sent, refused for good (resending
    cannot help), or tried MAX_NOTICE_ATTEMPTS times."""
    return (
        bool(outcome["ok"])
        or not outcome["retryable"]
        or (outcome["attempts"] >= MAX_NOTICE_ATTEMPTS)
    )


#: A notice's outcome, from its row: sent, still to be tried again, or failed for good.
_NOTICE_OUTCOME = (
    "CASE WHEN {row}.ok THEN 'sent' "
    f"WHEN {{row}}.retryable AND {{row}}.attempts < {MAX_NOTICE_ATTEMPTS} THEN 'retrying' "
    "ELSE 'failed' END"
)
#: Counted afresh at every start, as it is cheap (the spool, not the history): a gateway of
#: an earlier version, run after a rollback, replaced a re-sent instance's row, which fires
#: no trigger, and the tallies' digest would not tell.
_SPOOL_TALLY = Tally("spool_bytes", "instances", "''", "{row}.size")
#: What the exporter reports by state, kept by triggers (see `aifi.gateway.tallies`).
TALLIES = (
    Tally("jobs", "jobs", "{row}.state"),
    # Completed by the product, but its results not delivered: refused, or purged unfetched.
    Tally(
        "undelivered",
        "jobs",
        "''",
        "({row}.state = 'ended' AND {row}.exchange_state IS 'completed')",
    ),
    Tally("studies", "studies", "{row}.state"),
    Tally("deliveries", "deliveries", "{row}.state"),
    # channel/stat|routine/outcome
    Tally(
        "notices",
        "notifications",
        "{row}.channel || '/' || CASE WHEN {row}.stat THEN 'stat' ELSE 'routine' END "
        f"|| '/' || {_NOTICE_OUTCOME}",
    ),
    _SPOOL_TALLY,
)


#: The reason an adopted job carries (`GatewayState.adopt`).
ADOPTED = "adopted: an exchange job this gateway had no record of (`aifi gateway-unknown-jobs`)"
#: An exchange job (the parameter) the hospital let go, or whose let-go the gateway began.
_LET_GO = (
    "exchange_job_id = ? AND decision = 'let_go' "
    "AND (taken_at IS NOT NULL OR settled_at IS NOT NULL)"
)
#: What the hospital may decide for an exchange job its gateway has no record of.
DECISIONS = ("adopt", "let_go")


def _link(
    db: sqlite3.Connection, job_id: int, exchange_job_id: str, key: str | None
) -> dict[str, Any] | Literal["let_go"] | None:
    """`GatewayState.link_exchange_job` in the caller's transaction."""
    linked = db.execute(
        "UPDATE jobs SET exchange_job_id = ?, idempotency_key = COALESCE(?, idempotency_key), "
        "may_be_open = CASE WHEN ? IS NULL THEN may_be_open ELSE 1 END "
        "WHERE id = ? AND NOT EXISTS (SELECT 1 FROM jobs WHERE exchange_job_id = ? AND id != ?) "
        f"AND NOT EXISTS (SELECT 1 FROM unknown_jobs WHERE {_LET_GO})",
        (exchange_job_id, key, key, job_id, exchange_job_id, job_id, exchange_job_id),
    ).rowcount
    if linked:
        return None
    row = db.execute(
        "SELECT * FROM jobs WHERE exchange_job_id = ? AND id != ?", (exchange_job_id, job_id)
    ).fetchone()
    return dict(row) if row is not None else "let_go"


class DecidedAlready(Exception):
    """A decision for an unknown exchange job that the gateway has begun to do, or done:
    it is no longer to be changed."""


def decide_unknown_jobs(path: Path, decisions: Mapping[str, str], by: str) -> None:
    """Record what the hospital decided for exchange jobs its gateway has no record of
    (`DECISIONS`, by exchange job), for the gateway to do when it next meets each.

    Written by the command, beside a gateway that may be running: on a connection of its
    own, in one transaction, waiting for the gateway's writes (SQLite's busy timeout). A
    decision may be changed until the gateway begins to do it (`take_unknown_decision`);
    after that, one changed refuses them all (`DecidedAlready`), recording nothing; one made
    again is left as it is.
    """
    conn = _connect(path)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.executescript(UNKNOWN_JOBS_SCHEMA)  # a gateway of this version not started yet
        conn.execute("BEGIN IMMEDIATE")
        try:
            _add_columns(conn, ["unknown_jobs"])  # nor since an upgrade
            for exchange_job_id, decision in decisions.items():
                if decision not in DECISIONS:
                    raise ValueError(f"no such decision: {decision!r}")
                held = conn.execute(
                    "SELECT decision, decided_by, settled_at FROM unknown_jobs WHERE "
                    "exchange_job_id = ? AND (taken_at IS NOT NULL OR settled_at IS NOT NULL)",
                    (exchange_job_id,),
                ).fetchone()
                if held is not None and held["decision"] == decision:
                    continue  # as decided already: it stands
                if held is not None:
                    raise DecidedAlready(
                        f"exchange job {exchange_job_id}: {held['decision'].replace('_', ' ')} "
                        f"(decided by {held['decided_by']}) is "
                        + ("done" if held["settled_at"] is not None else "being done")
                        + " by the gateway, and stands"
                    )
                conn.execute(
                    "INSERT INTO unknown_jobs (exchange_job_id, decision, decided_at, "
                    "decided_by) VALUES (?, ?, ?, ?) ON CONFLICT (exchange_job_id) DO UPDATE "
                    "SET decision = excluded.decision, decided_at = excluded.decided_at, "
                    "decided_by = excluded.decided_by, note = ''",
                    (exchange_job_id, decision, time.time(), by),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def unknown_job_records(
    path: Path, exchange_job_ids: Iterable[str]
) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """Of these exchange jobs, those the gateway's state at `path` knows, and the hospital's
    decisions for the others: read on a connection of its own, beside a running gateway."""
    ids = list(exchange_job_ids)
    marks = ",".join("?" * len(ids))
    conn = _connect(path)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        known = {
            str(row[0])
            for row in conn.execute(
                f"SELECT exchange_job_id FROM jobs WHERE exchange_job_id IN ({marks})", ids
            )
        }
        have = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'unknown_jobs'"
        ).fetchone()
        decided = (
            {
                str(row["exchange_job_id"]): dict(row)
                for row in conn.execute(
                    f"SELECT * FROM unknown_jobs WHERE exchange_job_id IN ({marks})", ids
                )
            }
            if have
            else {}
        )
    finally:
        conn.close()
    return known, decided


def _insert_notice(
    db: sqlite3.Connection, job_id: int, kind: str, notice: str, *, urgent: bool, now: float
) -> bool:
    """`GatewayState.queue_notice` within a transaction of the caller's; whether the notice
    is on the STAT lane."""
    if kind != "delayed":
        # The job's delay notice, not yet sent, would now tell of a result that has come (or
        # will not): it is not sent. What follows a delay told goes on the STAT lane, behind
        # it, so that a RIS never gets the delay after the result.
        replaced = "('result', 'delayed')" if kind == "no-result" else "('delayed')"
        db.execute(
            "UPDATE queued_notices SET done_at = ?, notice = '' "
            f"WHERE job_id = ? AND kind IN {replaced} AND done_at IS NULL",
            (now, job_id),
        )
        announced = db.execute(
            "SELECT 1 FROM jobs WHERE id = ? AND delay_announced_as IS NOT NULL", (job_id,)
        ).fetchone()
        urgent = urgent or announced is not None
        db.execute(
            "UPDATE jobs SET delay_followed_at = ? WHERE id = ? AND delay_followed_at IS NULL "
            "AND delay_announced_as IS NOT NULL",
            (now, job_id),
        )
    db.execute(
        "INSERT OR IGNORE INTO queued_notices (job_id, kind, notice, urgent, due_at, "
        "queued_at) VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, kind, notice, int(urgent), now, now),
    )
    return urgent


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


class StateReads:
    """Reads both the gateway's own connection and the exporter's snapshot answer."""

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def tally(self, name: str) -> dict[str, float]:
        """A count kept by triggers (`TALLIES`), by key: one lookup, however long the
        gateway's history."""
        rows = self.query("SELECT key, value FROM tallies WHERE name = ?", (name,))
        return {row["key"]: float(row["value"]) for row in rows}

    def queued_notices(self) -> dict[bool, tuple[int, float | None]]:
        """By lane (urgent or not): how many notices are queued, and since when the oldest."""
        rows = self.query(
            "SELECT urgent, COUNT(*) AS n, MIN(queued_at) AS oldest FROM queued_notices "
            "WHERE done_at IS NULL GROUP BY urgent"
        )
        return {bool(row["urgent"]): (int(row["n"]), row["oldest"]) for row in rows}

    def totals(self) -> dict[str, float]:
        return {row["name"]: float(row["value"]) for row in self.query("SELECT * FROM totals")}

    def longest_done_at(self) -> float | None:
        """When the study held longest after it was done with was done with (retention
        purges it `retain_hours` after that); None when the spool holds none."""
        rows = self.query(f"SELECT MIN({_DONE_AT}) AS done FROM studies s WHERE {_SETTLED}")
        return float(rows[0]["done"]) if rows and rows[0]["done"] is not None else None


class Snapshot(StateReads):
    """One consistent, read-only view of the state, on a connection of the reader's own."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self._conn.execute(sql, params)]


class GatewayState(StateReads):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.RLock()
        self._conn = _connect(path)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        started = time.monotonic()
        self._conn.executescript(SCHEMA + tallies.SCHEMA)
        with self.transaction() as db:
            if added := _add_columns(db):
                log.info("state of an earlier version: added %s", ", ".join(added))
            for statement in AFTER_COLUMNS:
                db.execute(statement)
            if not tallies.install(db, TALLIES):
                tallies.refresh(db, _SPOOL_TALLY)
            else:
                log.info(
                    "brought the state up to this version in %.1f s: its indexes built and "
                    "its rows counted for the exporter (once, on a first start or after an "
                    "upgrade)",
                    time.monotonic() - started,
                )
        #: The exporter's connection, opened at its first scrape (`snapshot`).
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._closed = False

    def close(self) -> None:
        with self._read_lock:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
        with self._lock:
            self._conn.close()

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A read-only view for the exporter, consistent across its queries.

        It reads on a connection of its own, outside the state's lock: in WAL mode it never
        waits for, nor holds up, receipt, assembly or delivery, so a scrape costs the
        gateway's work nothing but CPU.
        """
        with self._read_lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the gateway's state is closed")
            if self._reader is None:
                self._reader = _connect(self._path)
                self._reader.execute("PRAGMA query_only = ON")
            self._reader.execute("BEGIN")
            try:
                yield Snapshot(self._reader)
            finally:
                if self._reader.in_transaction:  # SQLite may have ended it on an error
                    self._reader.execute("ROLLBACK")

    def make_durable(self) -> None:
        """Put every commit so far on the disk.

        The state runs in WAL mode with `synchronous=NORMAL`: a commit survives the gateway
        being killed, but only a checkpoint syncs the log, so a power cut could take back the
        last commits. Before the exchange is told what follows from them and cannot be taken
        back (a job brought home), the log is synced: else a job marked delivered, and
        acknowledged, could wake up submitted, waiting for ever for a job the exchange no
        longer lists, its identifiable spool never purged.
        """
        # Without the state's lock: what was committed before this call is in the log's file,
        # and instances arriving meanwhile need not wait for the disk.
        log_file = self._path.with_name(self._path.name + "-wal")
        if log_file.exists():
            fsync_path(log_file)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._conn.execute(sql, params)]

    # receipt -------------------------------------------------------------------------------

    def record_instance(self, item: ReceivedInstance, quiet_seconds: float) -> None:
        """Index a stored instance and restart its study's quiet timer.

        A new instance for a study already routed opens a new round: the study is assembled
        again and sent as a follow-up job, never silently dropped. An instance the study already
        holds (same SOP Instance UID: the PACS or the modality sending the study again) opens
        one only if the round's jobs did not all succeed, or the study matched no route: a
        re-send then tries again. A re-send of a study whose results were delivered, or are on
        their way, changes nothing — one study, one result in the PACS.
        """
        now = time.time()
        with self.transaction() as db:
            if not item.path.exists():
                # A purge of its study removed the file between its receipt and now (the purge
                # deletes under this lock): refuse it, so the sender sends it again.
                raise FileNotFoundError(f"spool file {item.path} vanished before it was indexed")
            before = db.execute(
                "SELECT study_uid, path FROM instances WHERE sop_instance_uid = ?",
                (item.sop_instance_uid,),
            ).fetchone()
            known = before is not None and before["study_uid"] == item.study_uid
            # An upsert, not INSERT OR REPLACE: a replaced row would leave the spool's
            # tallies without their DELETE trigger (SQLite fires it only if recursive).
            db.execute(
                "INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                f"ON CONFLICT (sop_instance_uid) DO UPDATE SET {_TAKE_NEW_INSTANCE}",
                (
                    item.sop_instance_uid, item.study_uid, item.series_uid, item.sop_class_uid,
                    item.modality, item.body_part, item.study_description,
                    item.series_description, str(item.path), item.size, item.calling_ae, now,
                ),
            )  # fmt: skip
            row = db.execute(
                "SELECT state, round, calling_ae FROM studies WHERE study_uid = ?",
                (item.study_uid,),
            ).fetchone()
            sender_found = row is not None and bool(item.calling_ae) and not row["calling_ae"]
            if sender_found:
                # A study indexed from the spool after a crash or a restore has no sender on
                # record: routes by sender (`calling_aes`) take the one that sends it again.
                db.execute(
                    "UPDATE studies SET calling_ae = ? WHERE study_uid = ?",
                    (item.calling_ae, item.study_uid),
                )
            if sender_found and row["state"] == "unrouted":
                # Routed again as the same round, which made no job for want of a sender: its
                # jobs take the round's keys, by which the exchange knows a job a lost disk
                # sent for it (the state restored from a backup, the spool after it). A round
                # that made jobs is not reopened: its jobs hold the instances they read. An
                # instance it holds, sent again, is nothing new (below), whatever its sender;
                # one it does not hold opens a new round, as any late instance does.
                db.execute(
                    "UPDATE studies SET state = 'receiving', last_at = ?, due_at = ?, "
                    "note = 'its sender known now: routed again' WHERE study_uid = ?",
                    (now, now + quiet_seconds, item.study_uid),
                )
            elif row is None:
                db.execute(
                    "INSERT INTO studies (study_uid, calling_ae, state, round, first_at, last_at, "
                    "due_at) VALUES (?, ?, 'receiving', 1, ?, ?, ?)",
                    (item.study_uid, item.calling_ae, now, now, now + quiet_seconds),
                )
            elif row["state"] == "receiving":
                db.execute(
                    "UPDATE studies SET last_at = ?, due_at = ? WHERE study_uid = ?",
                    (now, now + quiet_seconds, item.study_uid),
                )
            elif known and row["state"] == "routed" and not _round_failed(db, item.study_uid):
                db.execute(
                    "UPDATE studies SET note = ? WHERE study_uid = ?",
                    (f"sent again: already in round {row['round']}, nothing new", item.study_uid),
                )
            else:
                note = (
                    "instance after the study was purged: a new round with what arrives now"
                    if row["state"] == "purged"
                    else "late instance after routing: follow-up round"
                )
                db.execute(
                    "UPDATE studies SET state = 'receiving', round = round + 1, last_at = ?, "
                    "due_at = ?, note = ? WHERE study_uid = ?",
                    (now, now + quiet_seconds, note, item.study_uid),
                )
        if before is not None and before["path"] != str(item.path):
            # The instance moved to another study (the PACS corrected it): its file under the
            # old one belongs to no row now, and would outlive the study's retention, or be
            # taken back to it by the next start's recovery. Deleted once the move committed,
            # under the lock receipt checks its file under, unless a row names it again by then
            # (the instance sent under its old study once more); a file written but not yet
            # indexed is then refused at its indexing, and sent again.
            self.drop_unindexed(Path(before["path"]), item.sop_instance_uid, before["study_uid"])

    def study_of_instance(self, sop_instance_uid: str) -> str | None:
        rows = self.query(
            "SELECT study_uid FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        )
        return str(rows[0]["study_uid"]) if rows else None

    def drop_unindexed(self, path: Path, sop_instance_uid: str, study_uid: str) -> None:
        """Delete the spool file of an instance that could not be indexed, unless an index row
        names it after all.

        Under the lock `record_instance` checks its file under: the same instance received at
        once by another sender is either indexed first (and its file stays) or finds the file
        gone and is refused, to be sent again. An index that cannot be read keeps the file.
        """
        with self._lock:
            try:
                indexed = self._conn.execute(
                    "SELECT 1 FROM instances WHERE sop_instance_uid = ? AND study_uid = ?",
                    (sop_instance_uid, study_uid),
                ).fetchone()
            except sqlite3.Error:
                return
            if indexed is None:
                path.unlink(missing_ok=True)

    # retention -----------------------------------------------------------------------------

    def purgeable_studies(self, now: float, retain_seconds: float) -> list[str]:
        """Studies whose instances and results may go: see :data:`_PURGEABLE`."""
        rows = self.query(
            f"SELECT study_uid FROM studies s WHERE {_PURGEABLE} ORDER BY routed_at",
            (now - retain_seconds,),
        )
        return [row["study_uid"] for row in rows]

    def purge_study(
        self,
        study_uid: str,
        now: float,
        retain_seconds: float,
        forget: Callable[[str], object] | None = None,
    ) -> PurgedStudy | None:
        """Forget a study's instances and delete their spool files, if it is still purgeable.

        The files go while this holds the state's lock, and `record_instance` checks under the
        same lock that its file is there: an instance received meanwhile either reopens the
        study first (and nothing is purged) or finds its file gone and is refused, so that
        its sender sends it again. Nothing acknowledged is lost. `forget(study_uid)` (the
        vault's) runs under the same lock once the study is found purgeable, so it never
        drops what a new round of the study has remembered. Returns what went, with the
        study's local job ids (their results folders are the caller's), or None.
        """
        with self.transaction() as db:
            row = db.execute(
                f"SELECT study_uid FROM studies s WHERE s.study_uid = ? AND {_PURGEABLE}",
                (study_uid, now - retain_seconds),
            ).fetchone()
            if row is None:
                return None
            if forget is not None:
                # Before the files and rows: a crash after it leaves the study purgeable, and
                # the next sweep purges it again, with nothing re-identifiable left behind.
                forget(study_uid)
            paths = [
                Path(r["path"])
                for r in db.execute("SELECT path FROM instances WHERE study_uid = ?", (study_uid,))
            ]
            jobs = [
                int(r["id"])
                for r in db.execute("SELECT id FROM jobs WHERE study_uid = ?", (study_uid,))
            ]
            sent = db.execute(
                "SELECT 1 FROM jobs WHERE study_uid = ? AND state IN ('ended', 'delivered')",
                (study_uid,),
            ).fetchone()
            held = db.execute(
                "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM instances "
                "WHERE study_uid = ?",
                (study_uid,),
            ).fetchone()
            # The byte counts the metrics export stay totals since the gateway began.
            for name, value in (
                ("purged_studies", 1),
                ("purged_instances", held["n"]),
                ("purged_bytes", held["bytes"]),
                ("purged_uploaded_bytes", held["bytes"] if sent else 0),
            ):
                db.execute(
                    "INSERT INTO totals (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (name, value),
                )
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            db.execute(
                "UPDATE studies SET state = 'purged', note = ? WHERE study_uid = ?",
                (f"instances and results removed {when}", study_uid),
            )
            removed = 0
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    removed += path.stat().st_size
                    path.unlink()
            folders = {path.parent for path in paths}
        for folder in folders:
            with contextlib.suppress(OSError):  # not empty: an instance arrived meanwhile
                folder.rmdir()
        return PurgedStudy(study_uid, len(paths), removed, jobs)

    def known_paths(self) -> set[str]:
        return {row["path"] for row in self.query("SELECT path FROM instances")}

    # assembly ------------------------------------------------------------------------------

    def due_studies(self, now: float) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM studies WHERE state = 'receiving' AND due_at <= ? ORDER BY due_at",
            (now,),
        )

    def restart_quiet_timer(self, study_uid: str, quiet_seconds: float) -> None:
        """The sender let go of the study: its quiet time counts from now."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE studies SET due_at = ? WHERE study_uid = ? AND state = 'receiving'",
                (now + quiet_seconds, study_uid),
            )

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM instances WHERE study_uid = ? ORDER BY series_uid, sop_instance_uid",
            (study_uid,),
        )

    def route_study(
        self,
        study_uid: str,
        round_: int,
        due_at: float,
        jobs: list[RoutedJob],
        *,
        study_pseudonym: str,
    ) -> int:
        """Close the study's round and create its jobs (product, priority) in one transaction.

        Returns how many jobs were created; 0 when the study changed meanwhile (a new instance
        arrived), in which case it stays open. A job's idempotency key, which the exchange
        keeps, names the study by `study_pseudonym`: the hospital's own Study Instance UID
        never leaves it.
        """
        now = time.time()
        with self.transaction() as db:
            row = db.execute(
                "SELECT state, round, due_at, last_at FROM studies WHERE study_uid = ?",
                (study_uid,),
            ).fetchone()
            if row is None or row["state"] != "receiving" or row["round"] != round_:
                return 0
            if row["due_at"] != due_at:
                return 0
            db.execute(
                "INSERT OR IGNORE INTO eligibility (study_uid, round, month) VALUES (?, ?, ?)",
                (study_uid, round_, time.strftime("%Y-%m", time.gmtime(now))),
            )
            state = "routed" if jobs else "unrouted"
            note = "" if jobs else "no routing rule matched"
            db.execute(
                "UPDATE studies SET state = ?, routed_at = ?, note = ? WHERE study_uid = ?",
                (state, now, note, study_uid),
            )
            for job in jobs:
                db.execute(
                    "INSERT OR IGNORE INTO jobs (study_uid, round, product_id, priority, "
                    "series_uids, idempotency_key, state, study_last_at, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (
                        study_uid, round_, job.product_id, job.priority,
                        json.dumps(sorted(job.series_uids)),
                        f"{study_pseudonym}:{job.product_id}:{round_}", row["last_at"], now,
                    ),
                )  # fmt: skip
        return len(jobs)

    # jobs ----------------------------------------------------------------------------------

    def pending_jobs(self, now: float) -> list[dict[str, Any]]:
        return self.query(
            # A job the exchange holds already before one it does not: after a restore, a
            # later round the lost disk sent must be on record before an earlier round with
            # the same instances is weighed (`skip_if_sent_before`).
            "SELECT * FROM jobs WHERE state = 'pending' AND next_attempt_at <= ? "
            "ORDER BY CASE priority WHEN 'stat' THEN 0 ELSE 1 END, exchange_job_id IS NULL, id",
            (now,),
        )

    def next_pending_at(self) -> float | None:
        rows = self.query("SELECT MIN(next_attempt_at) AS due FROM jobs WHERE state = 'pending'")
        return rows[0]["due"] if rows and rows[0]["due"] is not None else None

    def job(self, job_id: int) -> dict[str, Any]:
        found = self.job_or_none(job_id)
        if found is None:
            raise IndexError(f"no job {job_id} in the state")
        return found

    def job_or_none(self, job_id: int) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def job_by_exchange_id(self, exchange_job_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM jobs WHERE exchange_job_id = ?", (exchange_job_id,))
        return rows[0] if rows else None

    def job_replacing(self, exchange_job_id: str) -> dict[str, Any] | None:
        """The job sent again in place of this exchange job (`send_again_anew`), if any."""
        rows = self.query(
            "SELECT * FROM jobs WHERE replaced_exchange_job_id = ?", (exchange_job_id,)
        )
        return rows[0] if rows else None

    def update_job(self, job_id: int, **values: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in values)
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))

    def acknowledged(self, exchange_job_ids: Sequence[str], at: float | None = None) -> None:
        """The exchange took these jobs' acknowledgement (at `at`, now by default): it no
        longer lists them to this gateway, and `aifi gateway-jobs` no longer does either."""
        moment = time.time() if at is None else at
        with self.transaction() as db:
            db.executemany(
                "UPDATE jobs SET acknowledged_at = ? WHERE exchange_job_id = ?"
                " AND acknowledged_at IS NULL",
                [(moment, exchange_job_id) for exchange_job_id in exchange_job_ids],
            )

    def match_listing(self, listed: set[str], asked_at: float) -> tuple[int, int]:
        """Bring what this state says of acknowledgements in line with the exchange's whole
        listing of ended jobs not acknowledged (`listed`, asked for at `asked_at`); how many
        jobs it took as acknowledged, and how many as not.

        A job ended here that the listing no longer holds is acknowledged there, or gone: its
        acknowledgement's answer was lost, or a restore put back a state that did not know it
        yet. A job brought home was listed as ended; a job refused here counts once it was
        refused before the listing was asked for, as its exchange job had ended by then
        (`Gateway._refuse_sent` refuses it after ending it). A job the listing holds is not
        acknowledged, whatever this state says of it from before the listing was asked for:
        the upgrade from an older version took every ended job as acknowledged.
        """
        waiting = self.query(UNACKNOWLEDGED.format(columns="id, state, exchange_job_id, ended_at"))
        gone = [
            int(row["id"])
            for row in waiting
            if row["exchange_job_id"] not in listed
            and (row["state"] != "refused" or float(row["ended_at"] or asked_at) < asked_at)
        ]
        ids = sorted(listed)
        still_listed: list[int] = []
        for start in range(0, len(ids), 500):  # by `ix_jobs_exchange`; SQLite's bound values
            chunk = ids[start : start + 500]
            rows = self.query(
                f"SELECT id FROM jobs WHERE exchange_job_id IN ({','.join('?' * len(chunk))})"
                " AND acknowledged_at < ? AND state IN ('ended', 'delivered', 'refused')",
                (*chunk, asked_at),
            )
            still_listed += [int(row["id"]) for row in rows]
        if gone or still_listed:
            now = time.time()
            with self.transaction() as db:
                db.executemany(
                    "UPDATE jobs SET acknowledged_at = ? WHERE id = ? AND acknowledged_at IS NULL",
                    [(now, job_id) for job_id in gone],
                )
                db.executemany(
                    "UPDATE jobs SET acknowledged_at = NULL WHERE id = ? AND acknowledged_at < ?",
                    [(job_id, asked_at) for job_id in still_listed],
                )
        return len(gone), len(still_listed)

    def record_restore(self, backup_taken_at: float) -> None:
        """This state was put back from a backup taken at `backup_taken_at`: its jobs are to
        be checked with the exchange before any is sent or brought home
        (`Gateway.reconcile_restore`)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO restores (backup_taken_at, restored_at) VALUES (?, ?)",
                (backup_taken_at, time.time()),
            )

    def restored_after(self, at: float) -> bool:
        """Whether this state was put back from a backup after `at` (a job made then was on
        the disk the restore replaced)."""
        return bool(self.query("SELECT 1 FROM restores WHERE restored_at > ? LIMIT 1", (at,)))

    def restore_to_reconcile(self) -> dict[str, Any] | None:
        """The oldest restore whose submitted jobs were not checked yet, if any."""
        rows = self.query("SELECT * FROM restores WHERE reconciled_at IS NULL ORDER BY id LIMIT 1")
        return rows[0] if rows else None

    def restore_reconciled(self, restore_id: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE restores SET reconciled_at = ? WHERE id = ?", (time.time(), restore_id)
            )

    # exchange jobs this gateway has no record of ----------------------------------------------

    def unknown_decision(self, exchange_job_id: str) -> dict[str, Any] | None:
        """What the hospital decided for an exchange job this gateway does not know, if it
        decided: done (`settled_at`) or not."""
        rows = self.query(
            "SELECT * FROM unknown_jobs WHERE exchange_job_id = ?", (exchange_job_id,)
        )
        return rows[0] if rows else None

    def decided_since(self, met: Mapping[str, float]) -> list[str]:
        """Of the unknown exchange jobs met (by when they were last met), those the hospital
        decided for since: to be done now, not when their retry comes round. Decisions not
        done are few; the jobs met may be many (another gateway's, on the hospital's
        account), so they are not named in the query."""
        rows = self.query(
            "SELECT exchange_job_id, decided_at FROM unknown_jobs "
            "WHERE settled_at IS NULL AND decided_at >= ?",
            (min(met.values()),),
        )
        return [
            row["exchange_job_id"]
            for row in rows
            if row["exchange_job_id"] in met and row["decided_at"] >= met[row["exchange_job_id"]]
        ]

    def take_unknown_decision(self, exchange_job_id: str, decision: str, study_uid: str) -> bool:
        """Begin to do a decision for an unknown exchange job: from now on the command cannot
        change it (`decide_unknown_jobs`), and a job of this gateway's sent meanwhile does not
        take that exchange job (`was_let_go`). False when it is no longer `decision` (changed
        since it was read), is done, or a job of this gateway's took the exchange job first:
        in one transaction, so that one of the two wins. `study_uid`: the hospital's, as the
        vault knows it now (else the pseudonymised one), which names the decision's disclosure
        entry however long it takes to finish."""
        with self.transaction() as db:
            return bool(
                db.execute(
                    "UPDATE unknown_jobs SET taken_at = ?, study_uid = ? WHERE exchange_job_id = ? "
                    "AND decision = ? AND settled_at IS NULL AND NOT EXISTS "
                    "(SELECT 1 FROM jobs WHERE exchange_job_id = ?)",
                    (time.time(), study_uid, exchange_job_id, decision, exchange_job_id),
                ).rowcount
            )

    def unknown_not_yet(self, exchange_job_id: str, note: str, *, release: bool = False) -> None:
        """A decision for an unknown exchange job could not be done yet (`note`, shown by
        the command); `release`: given back after it was begun, to be changed if need be
        (only before anything named it)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE unknown_jobs SET note = ?"
                + (", taken_at = NULL" if release else "")
                + " WHERE exchange_job_id = ? AND settled_at IS NULL",
                (note, exchange_job_id),
            )

    def adopt(
        self,
        exchange_job_id: str,
        study_uid: str,
        product_id: str,
        priority: str | None,
        made_at: float,
    ) -> dict[str, Any]:
        """Make an exchange job this gateway had no record of one of its jobs, submitted, and
        the decision done: in one transaction, so that it is adopted once.

        Its round is 0, outside the study's rounds: it was made by a round this state does
        not know, and no round of the study is weighed against it (`skip_if_sent_before`)
        or reopened for it. `made_at` (when the exchange made it) stands for when its study
        was complete, for the turnaround.
        """
        now = time.time()
        with self.transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE exchange_job_id = ?", (exchange_job_id,)
            ).fetchone()
            if row is None:
                cursor = db.execute(
                    "INSERT INTO jobs (study_uid, round, product_id, priority, idempotency_key, "
                    "state, exchange_job_id, exchange_state, reason, study_last_at, created_at, "
                    "submitted_at) VALUES (?, 0, ?, ?, ?, 'submitted', ?, 'requested', ?, ?, ?, ?)",
                    (
                        study_uid, product_id, priority, f"adopted:{exchange_job_id}",
                        exchange_job_id, ADOPTED, made_at, now, now,
                    ),
                )  # fmt: skip
                row = db.execute("SELECT * FROM jobs WHERE id = ?", (cursor.lastrowid,)).fetchone()
            db.execute(
                "UPDATE unknown_jobs SET settled_at = ?, note = '' WHERE exchange_job_id = ?",
                (now, exchange_job_id),
            )
        return dict(row)

    def unknown_disclosed(self, exchange_job_id: str) -> None:
        """The disclosure entry of an unknown exchange job's decision is written: from now on
        the decision is never given back (the entry names it)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE unknown_jobs SET disclosed_at = ? WHERE exchange_job_id = ?",
                (time.time(), exchange_job_id),
            )

    def let_go(self, exchange_job_id: str, note: str = "") -> None:
        """The hospital let an exchange job it has no record of go: done. With a `note`, an
        adoption begun that could not be finished, let go instead (the note says why)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE unknown_jobs SET decision = 'let_go', settled_at = ?, note = ? "
                "WHERE exchange_job_id = ?",
                (time.time(), note, exchange_job_id),
            )

    def link_exchange_job(
        self, job_id: int, exchange_job_id: str, key: str | None = None
    ) -> dict[str, Any] | Literal["let_go"] | None:
        """Link a job to the exchange job its key found (None), unless it is not the job's to
        take: another job of this gateway's has it (one adopted, `adopt`: that job is
        returned), or the hospital let it go ("let_go", `was_let_go`); then nothing changes.
        In one statement, so that an exchange job is never linked twice, and a let-go taken
        (`take_unknown_decision`, which checks for a link) and a link exclude each other.
        With `key`, the job goes under that key from now on, open at the exchange (a job a
        lost disk made, found by the key, `Gateway._found_by_key`)."""
        with self.transaction() as db:
            return _link(db, job_id, exchange_job_id, key)

    def was_let_go(self, exchange_job_id: str) -> bool:
        """Whether the hospital let this exchange job go unbrought (`let_go`), or the gateway
        has begun to (its acknowledgement may not be through yet): no job of this gateway's
        is to take it (`link_exchange_job`)."""
        return bool(self.query(f"SELECT 1 FROM unknown_jobs WHERE {_LET_GO}", (exchange_job_id,)))

    def skip_taken(self, job_id: int, owner_id: int, digest: str, reason: str) -> None:
        """End a pending job as 'skipped': the exchange job its key finds is another job's
        of this gateway (`owner_id`, one adopted), which took the same instances (`digest`)
        and brings them home. The owner takes the digest, so that the study sent again
        unchanged is nothing new, as after any round whose job succeeded (`_round_failed`)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET inputs_digest = ? WHERE id = ? AND inputs_digest IS NULL",
                (digest, owner_id),
            )
            db.execute(
                "UPDATE jobs SET state = 'skipped', reason = ?, inputs_digest = ?, ended_at = ? "
                "WHERE id = ? AND state = 'pending'",
                (reason, digest, time.time(), job_id),
            )

    def mark_submitted(self, job_id: int, note: str | None, digest: str | None = None) -> bool:
        """A pending job is sent and on record; False when it moved on meanwhile.

        `digest`: what it was sent with (`inputs_digest`), for `skip_if_sent_before`; None
        when that is not known (the job was opened by an earlier attempt), and nothing is
        ever skipped for it.

        A job sent by an attempt that then failed (its disclosure could not be written, the
        exchange's answer was lost) may end, and be brought home, before the retry that
        records it: that retry must not take it back to 'submitted'. Its attempts start again
        from 0: from now on they count tries to bring its results home, whose back-off must
        not begin where the upload's left off. A job sent again (`send_again`) keeps when it
        was first sent: the hospital has waited for its outcome since then.
        """
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'submitted', submitted_at = COALESCE(submitted_at, ?), "
                "reason = ?, "
                "exchange_state = 'requested', attempts = 0, inputs_digest = ? "
                "WHERE id = ? AND state = 'pending'",
                (time.time(), note, digest, job_id),
            ).rowcount
        return bool(changed)

    def skip_if_sent_before(self, job_id: int, digest: str, count: int) -> str | None:
        """End a pending job as 'skipped' if another job of its study and product took the
        same instances (`digest`, of `count` instances) and its send went through and did not
        fail; returns the reason then, else None and the job is left as it is.

        A job sent at last after a late instance opened its study's next round takes the late
        instance too (it reads the spool when it is sent): the next round's job then holds
        exactly the same instances, and sent it would run the product on them twice and bring
        two results to the PACS. Whichever of the two is sent second is skipped.

        Never a job an earlier attempt may have opened at the exchange: its id on record, or
        a request to open it sent and its answer lost, or the gateway stopped meanwhile
        (`may_be_open`). That job is the exchange's already; skipped, it would wait there,
        empty, until it expired, counted against the product. Sent, it is completed. Checked
        and written in one transaction; the one sender thread sends jobs one at a time (see
        `Gateway.submit`), so no job of the same study is being sent meanwhile.
        """
        took_the_same = _TOOK_THE_SAME.format(job="j", digest="?")
        with self.transaction() as db:
            row = db.execute(
                "SELECT j.product_id, c.id, c.round FROM jobs j JOIN jobs c "
                f"ON {took_the_same} WHERE j.id = ? AND j.state = 'pending' "
                "AND j.exchange_job_id IS NULL AND j.may_be_open = 0 ORDER BY c.id LIMIT 1",
                (digest, job_id),
            ).fetchone()
            if row is None:
                return None
            reason = (
                f"nothing new for {row['product_id']}: job {row['id']} (round {row['round']}) "
                f"took these same {count} instance(s)"
            )
            db.execute(
                "UPDATE jobs SET state = 'skipped', reason = ?, inputs_digest = ?, ended_at = ? "
                "WHERE id = ?",
                (reason, digest, time.time(), job_id),
            )
        return reason

    def start_over(self, job_id: int, reason: str) -> None:
        """Send a pending job again as a new job at the exchange: the one it had was cancelled
        (see `Gateway.submit`). A new idempotency key (`<key>:again<N>`, within the exchange's
        128 characters), so that the exchange does not answer with the cancelled job; no
        exchange job on record; due now."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT idempotency_key FROM jobs WHERE id = ? AND state = 'pending'", (job_id,)
            ).fetchone()
            if row is None:
                return
            key = started_over_key(str(row["idempotency_key"]))
            db.execute(
                "UPDATE jobs SET idempotency_key = ?, exchange_job_id = NULL, may_be_open = 0, "
                "reason = ?, next_attempt_at = 0 WHERE id = ?",
                (key, reason, job_id),
            )

    def send_again_anew(
        self,
        job_id: int,
        exchange_job_id: str,
        reason: str,
        lost: LostByStore,
        found: tuple[str, str] | None = None,
    ) -> bool:
        """Take a sent job whose exchange job ended because the exchange's store `lost` images
        of its study (the job failed or expired) or the product's results (it completed)
        back to 'pending', due now, to be sent as a new exchange job: under a new
        idempotency key (its round's, `:lost`: one it never had, its `:again<N>` dropped), so
        that the exchange does not answer with the ended job, and with the instances its study
        has now, as `send_again` sends a forgotten one.

        Once: a job sent again for either before (its key says so, started over since or not)
        is not, and neither is one that moved on meanwhile (no longer sent, or linked to
        another exchange job); False then, and the caller ends it as the exchange did.

        `found`: the key and exchange job a lost disk already sent it again under (after a
        restore; the key `:lost`, or one of its `:again<N>`); the job goes under that key,
        linked to that job, in the same transaction, so its send never meets it unlinked and
        starts it over. Unless it is not the job's to take (`link_exchange_job`: another job
        has it, or the hospital let it go): then it stays pending under `:lost`, unlinked, and
        its send finds that.
        """
        with self.transaction() as db:
            row = db.execute("SELECT idempotency_key FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            key = lost_by_store_key(str(row["idempotency_key"]))
            changed = db.execute(
                "UPDATE jobs SET state = 'pending', idempotency_key = :key, "
                "exchange_job_id = NULL, replaced_exchange_job_id = :exchange, "
                "replaced_for = :lost, "
                "may_be_open = 0, result_seen_at = NULL, "
                "exchange_ended_at = NULL, exchange_state = NULL, inputs_digest = NULL, "
                "attempts = 0, next_attempt_at = 0, reason = :reason "
                "WHERE id = :id AND state = 'submitted' AND exchange_job_id = :exchange "
                "AND idempotency_key NOT LIKE '%:lost' "
                "AND idempotency_key NOT LIKE '%:lost:again%'",
                {
                    "key": key,
                    "reason": reason,
                    "id": job_id,
                    "exchange": exchange_job_id,
                    "lost": lost,
                },
            ).rowcount
            if changed and found is not None:
                key, exchange_job = found
                _link(db, job_id, exchange_job_id=exchange_job, key=key)
        return bool(changed)

    def send_again(
        self, job_id: int, exchange_job_id: str, reason: str, *, forgotten: bool
    ) -> bool:
        """Take a sent job back to 'pending', due now: the exchange lost it (`forgotten`: it
        does not know the job, whose send makes it again under the same key) or lost inputs
        of it (the job is still its own and takes the rest). False when the job moved on
        meanwhile (it is no longer sent, or linked to another exchange job).

        A forgotten job is sent as any job not at the exchange is: with the instances its
        study has now, skipped if another job of the study took the same and was sent
        (`skip_if_sent_before`: its next round, lost with it and sent again first, say). What
        it was sent with goes until it is sent again (`mark_submitted`), and what was fetched
        of its results (`result_seen_at`: they are not the results the product makes now,
        whose first fetch clears the folder). A job that takes the rest of its inputs is the
        exchange's already, and never skipped (`may_be_open`).
        """
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'pending', exchange_job_id = CASE WHEN :forgotten "
                "THEN NULL ELSE exchange_job_id END, may_be_open = NOT :forgotten, "
                "result_seen_at = NULL, "
                "exchange_state = NULL, inputs_digest = NULL, "
                "attempts = 0, next_attempt_at = 0, reason = :reason "
                "WHERE id = :id AND state = 'submitted' AND exchange_job_id = :exchange",
                {
                    "forgotten": forgotten,
                    "reason": reason,
                    "id": job_id,
                    "exchange": exchange_job_id,
                },
            ).rowcount
        return bool(changed)

    def covering_job(self, job_id: int) -> dict[str, Any] | None:
        """Another job of the job's study and product that brings the product's result home,
        or brought it: to be sent, under way, or delivered; the newest. None when none does."""
        rows = self.query(
            "SELECT other.* FROM jobs AS job JOIN jobs AS other "
            "ON other.study_uid = job.study_uid AND other.product_id = job.product_id "
            "AND other.id != job.id WHERE job.id = ? "
            "AND other.state IN ('pending', 'submitted', 'delivered') "
            "ORDER BY other.id DESC LIMIT 1",
            (job_id,),
        )
        return rows[0] if rows else None

    def end_forgotten(
        self,
        job_id: int,
        exchange_job_id: str,
        reason: str,
        notice: str | None = None,
        *,
        urgent: bool = False,
    ) -> bool:
        """End a sent job the exchange no longer knows and that cannot be sent again (one
        adopted), and queue its `notice` that no result will come (`queue_notice`) in the
        same transaction: a crash between the two neither leaves the radiologist untold nor
        tells them twice. False when it moved on meanwhile (and nothing is queued)."""
        now = time.time()
        with self.transaction() as db:
            # Nothing is left at the exchange to acknowledge: settled, as `match_listing`
            # settles a job gone from the exchange's listing.
            changed = db.execute(
                "UPDATE jobs SET state = 'ended', reason = ?, ended_at = ?, acknowledged_at = ? "
                "WHERE id = ? AND state = 'submitted' AND exchange_job_id = ?",
                (reason, now, now, job_id, exchange_job_id),
            ).rowcount
            if changed and notice is not None:
                _insert_notice(db, job_id, "no-result", notice, urgent=urgent, now=now)
        return bool(changed)

    def refuse(
        self, job_id: int, reason: str, notice: str | None = None, *, urgent: bool = False
    ) -> None:
        """End a job unsent ('refused'), with its `notice` that no result will come queued in
        the same transaction, if it has one."""
        now = time.time()
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'refused', reason = ?, ended_at = ? WHERE id = ?",
                (reason, now, job_id),
            ).rowcount
            if changed and notice is not None:
                _insert_notice(db, job_id, "no-result", notice, urgent=urgent, now=now)

    def retry_job_later(self, job_id: int, reason: str, delay: float) -> None:
        """Try a pending job again after `delay` seconds (one that moved on is left as is)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET attempts = attempts + 1, next_attempt_at = ?, reason = ? "
                "WHERE id = ? AND state = 'pending'",
                (time.time() + delay, reason, job_id),
            )

    # eligibility (uptake: studies a product could have read, routed or not) ---------------

    def uncounted_studies(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM eligibility WHERE counted = 0 ORDER BY rowid LIMIT 200")

    def count_eligible(self, study_uid: str, round_: int, month: str, products: list[str]) -> None:
        """Count the study's round as eligible for each of `products` in `month`: once a month
        for a product, however many rounds the study takes (more images came after it was
        sent), as the exchange's volume counts the studies routed, so that uptake compares
        studies with studies.

        What was counted in months before `month` is forgotten: a round is counted in the
        month it was routed in, and rounds are counted in the order they were routed, so no
        earlier month is counted again (a range of the key, not a scan of what waits)."""
        with self.transaction() as db:
            db.execute("DELETE FROM eligible_studies WHERE month < ?", (month,))
            for product_id in products:
                first = db.execute(
                    "INSERT OR IGNORE INTO eligible_studies (month, product_id, study_uid) "
                    "VALUES (?, ?, ?)",
                    (month, product_id, study_uid),
                ).rowcount
                if not first:
                    continue
                db.execute(
                    "INSERT INTO eligible_counts (product_id, month, studies) VALUES (?, ?, 1) "
                    "ON CONFLICT (product_id, month) DO UPDATE SET studies = studies + 1, "
                    "reported = 0",
                    (product_id, month),
                )
            db.execute(
                "UPDATE eligibility SET counted = 1 WHERE study_uid = ? AND round = ?",
                (study_uid, round_),
            )

    def unreported_counts(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM eligible_counts WHERE reported = 0")

    def mark_reported(self, product_id: str, month: str, studies: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE eligible_counts SET reported = 1 "
                "WHERE product_id = ? AND month = ? AND studies = ?",
                (product_id, month, studies),
            )

    # notifications -------------------------------------------------------------------------

    def notification_outcomes(
        self, job_id: int, kind: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Each channel's last outcome for the job, by channel; `kind`: of that notice only."""
        rows = self.query("SELECT * FROM notifications WHERE job_id = ?", (job_id,))
        return {row["channel"]: row for row in rows if kind is None or row["kind"] == kind}

    def give_up_notifications(
        self, job_id: int, keep: Iterable[str], why: str, kind: str | None = None
    ) -> None:
        """End, as failed, the job's notices (of `kind`, or any) still to be retried on any
        channel but `keep`: nobody will retry them (the channel left the configuration, such
        notices were turned off, or a delay's job ended before it could be told), and a
        notice left `retrying` would page for ever."""
        kept = sorted(keep)
        pending = (
            f"job_id = ? AND NOT ok AND retryable AND attempts < ? "
            f"AND channel NOT IN ({', '.join('?' for _ in kept)})"
            + ("" if kind is None else " AND kind = ?")
        )
        values = (job_id, MAX_NOTICE_ATTEMPTS, *kept, *(() if kind is None else (kind,)))
        if not self.query(f"SELECT 1 FROM notifications WHERE {pending} LIMIT 1", values):
            return  # the usual case: a read, no write
        with self.transaction() as db:
            db.execute(
                f"UPDATE notifications SET retryable = 0, detail = ? WHERE {pending}",
                (why, *values),
            )

    def record_notification(
        self,
        job_id: int,
        channel: str,
        *,
        ok: bool,
        retryable: bool,
        stat: bool,
        detail: str | None,
        seconds: float,
        kind: str = "result",
        counted: bool = True,
    ) -> None:
        """Record a try; one that does not count towards the notice's `MAX_NOTICE_ATTEMPTS`
        (`counted` False: held off a receiver that is down, tried on one known down, cut
        short by the gateway's stop, or not prepared for a key or token file it could not
        read) says
        where the notice stands all the same. A notice of another `kind` than the row's (no
        result, after a result notice went out) takes the row over, its tries counted
        afresh."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO notifications (job_id, channel, ok, retryable, stat, detail, seconds, "
                "attempts, at, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, channel) DO UPDATE SET ok = excluded.ok, "
                "retryable = excluded.retryable, detail = excluded.detail, stat = excluded.stat, "
                "seconds = excluded.seconds, at = excluded.at, kind = excluded.kind, "
                "attempts = CASE WHEN kind = excluded.kind THEN attempts + excluded.attempts "
                "ELSE excluded.attempts END",
                (
                    job_id, channel, int(ok), int(retryable), int(stat), detail, seconds,
                    int(counted), time.time(), kind,
                ),
            )  # fmt: skip

    def queue_notice(self, job_id: int, kind: str, notice: str, *, urgent: bool) -> bool:
        """Queue the job's notice (`kind`), due now; a notice queued before, still to send or
        done with, stays as it is. A notice that there is no result takes the place of a
        result notice still to send: both would take over the job's rows on each channel in
        turn, sending each other again; either takes the place of a delay notice still to
        send. Whether it is on the STAT lane: `urgent`, or a delay of the job was queued."""
        with self.transaction() as db:
            return _insert_notice(db, job_id, kind, notice, urgent=urgent, now=time.time())

    def delays_to_tell(self, created_before: float) -> list[dict[str, Any]]:
        """Jobs made before `created_before` whose delay may be told (`_DELAY_TO_TELL`) and
        that may run STAT (their route says so, or leaves it to the product)."""
        return self.query(
            "SELECT id, study_uid, product_id, priority, created_at, submitted_at, "
            "exchange_job_id, replaced_exchange_job_id, idempotency_key, result_seen_at "
            "FROM jobs WHERE "
            + _DELAY_TO_TELL.format(job="jobs")
            + " AND created_at < ? AND (priority = 'stat' OR priority IS NULL) "
            "ORDER BY created_at",
            (created_before,),
        )

    def announce_delay(self, job_id: int, announced_as: str, notice: str) -> bool:
        """Queue the job's delay notice (on the STAT lane) and keep the id it goes under, in
        one transaction. Once a job, and only while its delay may be told: False when it was
        told before, or the job's notice was queued meanwhile."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET delay_announced_as = ? WHERE id = ? AND "
                + _DELAY_TO_TELL.format(job="jobs"),
                (announced_as, job_id),
            ).rowcount
            if changed:
                _insert_notice(db, job_id, "delayed", notice, urgent=True, now=time.time())
        return bool(changed)

    def delay_still_to_tell(self, job_id: int) -> bool | None:
        """Whether the job's queued delay notice may still go: its job under way and no
        notice of its result or of none queued (sent or not). None: not yet, a restore is
        still to be checked (the backup may have held it queued while the lost disk sent the
        result; the check settles which)."""
        if self.query(f"SELECT 1 WHERE {_RESTORE_UNCHECKED}"):
            return None
        return bool(
            self.query(
                "SELECT 1 FROM jobs WHERE id = ? AND state IN ('pending', 'submitted') "
                "AND NOT EXISTS (SELECT 1 FROM queued_notices q "
                "WHERE q.job_id = jobs.id AND q.kind != 'delayed')",
                (job_id,),
            )
        )

    def spooled(self, study_uid: str) -> bool:
        """Whether the spool holds any instance of the study (retention has not taken it)."""
        return bool(self.query("SELECT 1 FROM instances WHERE study_uid = ? LIMIT 1", (study_uid,)))

    def covered_by_another(self, job_id: int) -> bool:
        """Another job of the job's study and product, of its round or a later one (an
        earlier round's result is of other images), brings the product's result: sent, or
        delivered (one still to be sent may be refused in its turn)."""
        return bool(
            self.query(
                "SELECT 1 FROM jobs AS job JOIN jobs AS other "
                "ON other.study_uid = job.study_uid AND other.product_id = job.product_id "
                "AND other.id != job.id AND other.round >= job.round WHERE job.id = ? "
                "AND other.state IN ('submitted', 'delivered') LIMIT 1",
                (job_id,),
            )
        )

    def remember_product(self, product_id: str, entry: Mapping[str, Any]) -> None:
        """Keep what a late STAT job needs of the product's catalogue entry, as just read."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO products_seen (product_id, entry, read_at) VALUES (?, ?, ?) "
                "ON CONFLICT (product_id) DO UPDATE SET entry = excluded.entry, "
                "read_at = excluded.read_at",
                (product_id, json.dumps(dict(entry), sort_keys=True), time.time()),
            )

    def remembered_product(self, product_id: str) -> dict[str, Any] | None:
        """The product's entry as `remember_product` kept it, however long ago (None: never)."""
        rows = self.query("SELECT entry FROM products_seen WHERE product_id = ?", (product_id,))
        return dict(json.loads(rows[0]["entry"])) if rows else None

    def delay_told(self, job_id: int) -> None:
        """The job's delay notice was sent to a receiver: what follows goes under its id."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET delay_told_at = COALESCE(delay_told_at, ?) WHERE id = ?",
                (time.time(), job_id),
            )

    def delay_announced_as(self, job_id: int) -> str | None:
        """The id the job's delay notice went under, once it was sent to a receiver (None:
        never sent, and the job's notices go under its own id)."""
        rows = self.query(
            "SELECT delay_announced_as AS id FROM jobs WHERE id = ? AND delay_told_at IS NOT NULL",
            (job_id,),
        )
        return str(rows[0]["id"]) if rows and rows[0]["id"] else None

    def told_and_left(self) -> list[dict[str, Any]]:
        """Jobs whose delay a receiver heard of that then left without a notice to follow it
        (`_TOLD_AND_LEFT`): the radiologist would wait on. By the index of those: a few."""
        return self.query(
            f"SELECT * FROM jobs INDEXED BY ix_jobs_told_unfollowed WHERE {_TOLD_AND_LEFT}"
        )

    def close_told(self, job_id: int, notice: str) -> bool:
        """Queue the notice that no result will come for a job told late that left without
        one (`told_and_left`), on the STAT lane, in one transaction with the check that it
        still did: False when a notice to follow was queued meanwhile."""
        with self.transaction() as db:
            if not db.execute(
                f"SELECT 1 FROM jobs WHERE id = ? AND {_TOLD_AND_LEFT}", (job_id,)
            ).fetchone():
                return False
            _insert_notice(db, job_id, "no-result", notice, urgent=True, now=time.time())
        return True

    def delay_followed(self, job_id: int) -> None:
        """The job's delay is followed elsewhere (a lost disk brought the job home and told
        the RIS, as the exchange's acknowledgement says): nothing is to close it here."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET delay_followed_at = COALESCE(delay_followed_at, ?) WHERE id = ?",
                (time.time(), job_id),
            )

    def due_notices(self, urgent: bool, now: float, limit: int = 50) -> list[dict[str, Any]]:
        """The queued notices of one lane due by `now`: those never tried on a receiver first
        (a new alert never waits behind retries to one that is down), then the longest due."""
        return self.query(
            "SELECT * FROM queued_notices WHERE urgent = ? AND done_at IS NULL AND due_at <= ? "
            "ORDER BY tries > 0, due_at, queued_at LIMIT ?",
            (int(urgent), now, limit),
        )

    def queued_notices_of(self, job_id: int) -> list[dict[str, Any]]:
        """The job's notices still to send."""
        return self.query(
            "SELECT * FROM queued_notices WHERE job_id = ? AND done_at IS NULL", (job_id,)
        )

    def next_notice_due(self, urgent: bool) -> float | None:
        rows = self.query(
            "SELECT MIN(due_at) AS due FROM queued_notices WHERE urgent = ? AND done_at IS NULL",
            (int(urgent),),
        )
        return float(rows[0]["due"]) if rows and rows[0]["due"] is not None else None

    def notice_later(
        self, job_id: int, kind: str, passes: int, due_at: float, *, tried: bool = True
    ) -> None:
        """Try the notice again at `due_at`; `tried`: this pass counts as a try (it asked the
        receivers it tried: the gateway's stop did not cut it short, nor did a key or token
        file keep it from one)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE queued_notices SET passes = ?, due_at = ?, tries = tries + ? "
                "WHERE job_id = ? AND kind = ?",
                (passes, due_at, int(tried), job_id, kind),
            )

    def notice_done(self, job_id: int, kind: str | None = None) -> None:
        """The job's notice of `kind` (or every notice of the job) is done with."""
        kinds = ("result", "no-result", "delayed") if kind is None else (kind,)
        with self.transaction() as db:
            db.execute(
                f"UPDATE queued_notices SET done_at = ?, notice = '' WHERE job_id = ? "
                f"AND done_at IS NULL AND kind IN ({', '.join('?' for _ in kinds)})",
                (time.time(), job_id, *kinds),
            )

    def notices_due_now(self) -> None:
        """Every queued notice is due (a receiver that was down takes notices again)."""
        with self.transaction() as db:
            db.execute("UPDATE queued_notices SET due_at = 0 WHERE done_at IS NULL AND due_at > 0")

    # deliveries ----------------------------------------------------------------------------

    def delivered(self, job_id: int, result_name: str, destination: str) -> bool:
        rows = self.query(
            "SELECT state FROM deliveries WHERE job_id = ? AND result_name = ? AND destination = ?",
            (job_id, result_name, destination),
        )
        return bool(rows) and rows[0]["state"] == "delivered"

    def record_delivery(
        self,
        job_id: int,
        result_name: str,
        destination: str,
        sop_instance_uid: str | None,
        error: str | None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO deliveries (job_id, result_name, destination, sop_instance_uid, "
                "state, attempts, last_error, at) VALUES (?, ?, ?, ?, ?, 1, ?, ?) "
                "ON CONFLICT (job_id, result_name, destination) DO UPDATE SET "
                "state = excluded.state, attempts = attempts + 1, "
                "last_error = excluded.last_error, "
                "sop_instance_uid = excluded.sop_instance_uid, at = excluded.at",
                (
                    job_id, result_name, destination, sop_instance_uid,
                    "failed" if error else "delivered", error, time.time(),
                ),
            )  # fmt: skip
