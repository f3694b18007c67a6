"""Database engine, sessions and schema migrations for the exchange.

The same SQLAlchemy models run on an embedded SQLite file (one machine) and on PostgreSQL
(replicas behind a load balancer); `AIFI_DATABASE_URL` picks the backend and nothing else
changes. The few places where the two differ ask :attr:`Database.is_postgresql`.
"""

from __future__ import annotations

import functools
import logging
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Executable,
    Insert,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    text,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from aifi.file_lock import held_alone

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"

# PostgreSQL advisory-lock keys, all in one place so that no two share a number.
#: Serialises schema upgrades when several replicas start at once.
MIGRATION_LOCK = 0x41494649_0001
#: Makes linking rounds of the audit chain one at a time across replicas.
CHAIN_LOCK = 0x41494649_0002
#: Lets only one replica sweep for retention at a time.
RETENTION_LOCK = 0x41494649_0003
#: Held while a starting replica makes sure the operator exists.
START_LOCK = 0x41494649_0004
#: Lets only one replica move old audit entries to the archive at a time.
ARCHIVE_LOCK = 0x41494649_0005


def normalised_url(url: str) -> str:
    """`postgres://` and `postgresql://` mean psycopg 3, the driver the exchange ships with."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


#: Connections kept open when no settings say otherwise: twice the worker threads (4 for
#: requests and 16 for large transfers by default, see `threads`). A replica's settings derive
#: theirs from its thread counts, or take `AIFI_DATABASE_POOL_SIZE`.
POOL_SIZE = 40
#: PostgreSQL connections opened beyond the pool for a burst, and closed when it has passed.
POSTGRES_OVERFLOW = 10


def make_engine(url: str, pool_size: int = POOL_SIZE) -> Engine:
    """An engine tuned for the backend: SQLite gets WAL and a busy timeout for many threads.

    PostgreSQL connections are checked before use (:func:`_closed_by_server`) so that a
    database restart costs the requests in flight at that moment, not every pooled connection
    afterwards. The pool keeps `pool_size` of them open: a connection opened for a burst is
    closed again, and opening one costs both the replica and PostgreSQL (a new server process)
    far more than a request's statements.
    """
    url = normalised_url(url)
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # One pooled connection per request thread: opening one (and its PRAGMAs) per
            # request cost more than the request's own statements.
            pool_size=pool_size,
            max_overflow=10,
        )

        _one_writer_at_a_time(engine)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=POSTGRES_OVERFLOW,
        pool_timeout=10,
        pool_recycle=1800,
        connect_args=(
            {"connect_timeout": 5} if make_url(url).get_backend_name() == "postgresql" else {}
        ),
    )
    event.listen(engine, "checkout", _closed_by_server)
    return engine


def _closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection the server has spoken on since it went idle; the pool then
    opens a fresh one (SQLAlchemy retries a checkout that raises `DisconnectionError`).

    An idle connection hears from the server only when something happened to it: a restart
    or `pg_terminate_backend` sends a last message and closes the socket. Asking the socket
    whether it has anything to read costs one system call, where `pool_pre_ping` sent a
    `SELECT 1` per checkout — about seven round trips per small job, each costing PostgreSQL
    and the replica. A connection lost without a word (a cut cable) is found by its first
    statement, as it would be mid-transaction; the request fails with 503 and the pool is
    renewed.
    """
    if getattr(dbapi_connection, "closed", False):
        raise DisconnectionError("the pooled connection was closed")
    fileno = getattr(dbapi_connection, "fileno", None)
    if fileno is None:  # a driver without a socket to ask
        return
    poller = select.poll()
    poller.register(fileno(), select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        raise DisconnectionError("the database spoke on an idle pooled connection: closed")


#: A thread waits this long for the writer's turn before it falls back to SQLite's own retry.
WRITER_TURN_SECONDS = 5.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _one_writer_at_a_time(engine: Engine) -> None:
    """Let the threads of this process take turns at SQLite's single write lock.

    A thread that finds the database locked sleeps in SQLite's busy handler for 1, 2, 5 … ms
    however soon the lock is free; under load most writes waited there. A Python lock taken at
    a transaction's first write and released at its end hands the turn over at once. Should a
    turn not come within a few seconds (a holder waiting on another thread), the writer goes
    ahead and SQLite's busy timeout decides, as before.
    """
    turn = threading.Lock()
    holder: list[int | None] = [None]

    @event.listens_for(engine, "before_cursor_execute")
    def _take_turn(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "writer" in conn.info or not statement.lstrip()[:7].upper().startswith(_WRITES):
            return
        me = threading.get_ident()
        if holder[0] == me:  # a second session of the thread holding the turn: no waiting
            conn.info["writer"] = False
            return
        conn.info["writer"] = turn.acquire(timeout=WRITER_TURN_SECONDS)
        if conn.info["writer"]:
            holder[0] = me

    def _end_turn(info: dict[str, Any]) -> None:
        if info.pop("writer", None):
            holder[0] = None
            turn.release()

    event.listen(engine, "commit", lambda conn: _end_turn(conn.info))
    event.listen(engine, "rollback", lambda conn: _end_turn(conn.info))
    # A connection going back to the pool never keeps the turn, however its transaction ended.
    event.listen(engine, "checkin", lambda _dbapi, record: _end_turn(record.info))


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to the newest migration (idempotent; safe on every start).

    On PostgreSQL the upgrade holds a transaction-scoped advisory lock, so replicas that start
    together migrate one after the other instead of racing to create the same tables.
    """
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def execute_core(session: Session, statement: Executable, params: Any = None) -> CursorResult:  # type: ignore[type-arg]
    """Run a statement that loads no mapped objects on `session`'s connection, in its
    transaction.

    Through `Session.execute`, an UPDATE or DELETE of a mapped class is annotated anew and its
    cache key worked out again on every call, and a SELECT of columns goes through the ORM's
    compile step: about 55 µs and 25 µs a statement on the reference machine, several times
    a job. On the connection, a statement built once (a module constant) is compiled once and
    costs only its execution. Objects added to the session are flushed first, as
    `Session.execute` would.
    """
    session.flush()
    return session.connection().execute(statement, params)


def insert_new(session: Session, row: Any) -> None:
    """Insert a new mapped object with one INSERT in `session`'s transaction, now.

    On the busiest paths (a job, an input, a result) the unit of work's bookkeeping costs more
    than the statement; the object stays outside the session, holding the values sent. As on
    a flush, the attributes that were set are sent (None as NULL) and the others get their
    column's default.
    """
    execute_core(session, _insert(row.__table__), _given_values(row))


@functools.cache
def _insert(table: Table) -> Insert:
    """A table's plain INSERT, built once so that its cache key is worked out once."""
    return insert(table)


def insert_unless_taken(session: Session, row: Any) -> bool:
    """Insert a new mapped object as :func:`insert_new` does, unless a row already holds one
    of its unique keys (`INSERT … ON CONFLICT DO NOTHING`); whether it was inserted.

    On PostgreSQL a concurrent insert of the same key is waited for, and then wins: the caller
    reads the winner instead of catching an error that would end its transaction.
    """
    statement = _insert_or_nothing(row.__table__, session.get_bind().dialect.name)
    return execute_core(session, statement, _given_values(row)).first() is not None


@functools.cache
def _insert_or_nothing(table: Table, dialect: str) -> Insert:
    """The insert that yields, answering with the key of a row it stored (the row count of
    an insert that stored nothing is not reported alike by every driver)."""
    make = postgresql_insert if dialect == "postgresql" else sqlite_insert
    return make(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def _given_values(row: Any) -> dict[str, Any]:
    """A new object's column values as set: None is sent as NULL, unset columns take their
    default."""
    given = inspect(row).dict
    columns = row.__table__.columns
    return {column.key: given[column.key] for column in columns if column.key in given}


class Database:
    """The engine and a session factory, built once per app and handed to services."""

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self.url = normalised_url(url)
        self.engine = make_engine(url, pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgresql(self) -> bool:
        """Row locks (`FOR UPDATE SKIP LOCKED`) and advisory locks are available."""
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    def answers(self) -> bool:
        """Whether the database answers a statement now: what tells a background round that
        failed because the database is down (its own alert) from one that failed for a
        fault of its own."""
        try:
            with self.session() as session:
                session.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for statements that change nothing but their own audit entries.

        On PostgreSQL it runs in autocommit: each statement is its own transaction, so a read
        costs its statements and no `BEGIN` and `COMMIT` round trips (two of a read's four).
        Under READ COMMITTED every statement of a transaction sees a snapshot of its own
        anyway, so a read sees nothing it would not have seen in one; and its audit entries
        are stored, one statement, before the read is answered. SQLite keeps its deferred
        transaction, which costs no round trip. Nothing but the audit entry may be written
        here: on PostgreSQL a write would commit on its own, apart from what records it.
        """
        with self.sessions() as session, session.begin():
            if self.is_postgresql:
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session

    @contextmanager
    def one_replica_at_a_time(self) -> Iterator[None]:
        """Hold PostgreSQL's start-up lock: replicas started together set up one after another.

        Creating the operator on an empty database is check-then-insert; without the lock a
        second replica fails on the first one's row. SQLite is one process and needs none.
        """
        if not self.is_postgresql:
            yield
            return
        with self.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": START_LOCK})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": START_LOCK})
                connection.commit()

    @contextmanager
    def turn(self, key: int) -> Iterator[bool]:
        """True when this process may do the background work `key` names now, held until
        the block ends: on PostgreSQL when no other replica holds its advisory lock; on
        SQLite when no other process on the host (an `aifi audit archive` beside the
        running exchange) holds the lock file beside the database. One that finds it taken
        skips the round rather than wait: the holder does the work."""
        if not self.is_postgresql:
            with self._sqlite_turn(key) as mine:
                yield mine
            return
        with self.engine.connect() as connection:
            mine = bool(connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
            connection.commit()
            try:
                yield mine
            finally:
                if mine:
                    _unlock(connection, key)

    @contextmanager
    def _sqlite_turn(self, key: int) -> Iterator[bool]:
        database = self.engine.url.database
        if not database or database == ":memory:":
            yield True  # a database no other process can open
            return
        with held_alone(f"{database}.turn-{key:x}") as mine:
            yield mine

    def dispose(self) -> None:
        """Close pooled connections (a replica shutting down, a test tearing down)."""
        self.engine.dispose()


def _unlock(connection: Connection, key: int) -> None:
    """Let go of a turn's advisory lock. A connection the server closed meanwhile (a restart)
    took the lock with it: nothing is left to let go of, and the round's work stands."""
    try:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        connection.commit()
    except DBAPIError as exc:
        log.info("turn %x: its lock went with its connection (%s)", key, exc.orig)
