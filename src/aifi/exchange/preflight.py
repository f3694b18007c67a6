"""`aifi exchange --check`: what a replica needs, tried before it starts for real.

A replica that cannot reach its database or write to its bucket fails on its first request,
not at start; an operator bringing up a new site (credentials, bucket policy, connection
limits, a release older than the schema) sees everything here at once. Nothing is changed:
the schema is not migrated, no organisation or key is made, and the one object written to the
store, under `aifi-check-…/`, is deleted again. (What the first start would make anyway is
made: on the embedded defaults an empty SQLite file and the store's folder, on S3 a bucket that
does not exist yet.)
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from aifi.checks import Check
from aifi.exchange.blobs import BlobStore, open_blob_store
from aifi.exchange.blobs_s3 import S3BlobStore
from aifi.exchange.db import POSTGRES_OVERFLOW, alembic_config, make_engine
from aifi.exchange.settings import ExchangeSettings

PROBE = b"AIFI exchange check\n"
VERSION = {"postgresql": "SELECT version()", "sqlite": "SELECT 'SQLite ' || sqlite_version()"}
#: A replica's spool below this cannot take one large CT study.
LOW_SPOOL_BYTES = 2 * 1024**3


def preflight(settings: ExchangeSettings) -> list[Check]:
    url = settings.resolved_database_url()
    checks: list[Check] = []
    postgresql = False
    try:
        engine = make_engine(url, pool_size=1)
    except (SQLAlchemyError, ValueError) as exc:  # an unknown driver or a malformed URL
        checks.append(Check("database", False, f"AIFI_DATABASE_URL cannot be used: {exc}"))
    else:
        postgresql = _pg(engine)
        try:
            checks.append(_database(engine))
            if checks[-1].ok:
                checks.append(_schema(engine, url))
                if postgresql:
                    checks.append(_connections(engine, settings))
        finally:
            engine.dispose()
    checks += _blob_store(settings.resolved_blob_url(), settings.upload_spool)
    checks.append(_operator_key(settings))
    if postgresql:
        checks.append(_session_secret(settings))
    return checks


def _database(engine: Engine) -> Check:
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as connection:
            version = connection.scalar(text(VERSION[engine.dialect.name]))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return Check("database", False, f"cannot connect to {shown}: {reason}")
    return Check("database", True, f"{shown}: {str(version).split(',')[0]}")


def _pg(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _schema(engine: Engine, url: str) -> Check:
    script = ScriptDirectory.from_config(alembic_config(url))
    heads = set(script.get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current == heads:
        return Check("schema", True, f"at {', '.join(sorted(heads))}, this release's newest")
    if not current:
        return Check("schema", True, "empty: the first replica to start creates it")
    unknown = [rev for rev in current if _revision(script, rev) is None]
    if unknown:
        return Check(
            "schema",
            False,
            f"at {', '.join(unknown)}, which this release does not know: the database was "
            "migrated by a newer release; run that release (or restore a matching backup)",
        )
    return Check(
        "schema",
        True,
        f"at {', '.join(sorted(current))}; the first replica to start migrates it to "
        f"{', '.join(sorted(heads))}",
    )


def _revision(script: ScriptDirectory, revision: str) -> Any:
    try:
        return script.get_revision(revision)
    except Exception:  # alembic raises its own errors for unknown or partial revisions
        return None


def _connections(engine: Engine, settings: ExchangeSettings) -> Check:
    with engine.connect() as connection:
        allowed = int(connection.scalar(text("SHOW max_connections")) or 0)
        reserved = int(connection.scalar(text("SHOW superuser_reserved_connections")) or 0)
        in_use = int(connection.scalar(text("SELECT count(*) FROM pg_stat_activity")) or 0)
    needed = settings.resolved_pool_size() + POSTGRES_OVERFLOW + 1  # the pool, a burst, LISTEN
    free = allowed - reserved - in_use
    detail = (
        f"this replica opens up to {needed} (pool {settings.resolved_pool_size()}, burst "
        f"{POSTGRES_OVERFLOW}, one listening); the server allows {allowed}, {reserved} "
        f"reserved, {in_use} in use"
    )
    if needed > free:
        return Check(
            "connections",
            False,
            f"{detail}: raise max_connections to cover every replica, or lower "
            "AIFI_DATABASE_POOL_SIZE",
        )
    return Check("connections", True, f"{detail}; room for {free // needed} such replica(s)")


def _blob_store(url: str, spool: Path) -> list[Check]:
    """Probe objects written, read back, listed and deleted: the calls the exchange makes,
    which a bucket policy must allow. In an object store one probe is one part larger than
    a single upload, so the multipart calls large studies need are tried too."""
    shown = url.split("?")[0]
    try:
        store = open_blob_store(url, spool)
        sizes = [len(PROBE)]
        if isinstance(store, S3BlobStore):
            sizes.append(store.location.part_bytes + len(PROBE))
        spool = asyncio.run(_probe(store, sizes))
    except Exception as exc:  # boto3, OS and configuration errors alike end up here
        return [Check("blob store", False, f"{shown}: {type(exc).__name__}: {exc}")]
    writes = "write (whole and multipart)" if len(sizes) > 1 else "write"
    checks = [Check("blob store", True, f"{shown}: {writes}, read, list and delete work")]
    free = shutil.disk_usage(spool).free
    checks.append(
        Check(
            "upload spool",
            free >= LOW_SPOOL_BYTES,
            f"{spool}: {free / 1024**3:.1f} GiB free"
            + ("" if free >= LOW_SPOOL_BYTES else "; uploads larger than that are refused (507)"),
        )
    )
    return checks


async def _probe(store: BlobStore, sizes: list[int]) -> Any:
    """Store, read back and delete a probe object of each size; the spool folder it used."""
    folder = f"aifi-check-{secrets.token_hex(8)}/"
    spool = None
    for number, size in enumerate(sizes):
        content = (PROBE * (size // len(PROBE) + 1))[:size]

        async def body(content: bytes = content) -> AsyncIterator[bytes]:
            yield content

        temp = await store.receive(body())
        spool = temp.path.parent
        key = f"{folder}probe-{number}"
        try:
            await asyncio.to_thread(store.commit, temp, key)
        finally:
            store.discard(temp)
        read = b"".join(await asyncio.to_thread(list, store.read(key)))
        if read != content:
            raise RuntimeError(f"a probe of {size} bytes came back as {len(read)} other bytes")
    deleted = await asyncio.to_thread(store.delete_under, folder)
    if deleted != len(sizes):
        raise RuntimeError(f"{deleted} of {len(sizes)} probe objects could be deleted")
    return spool


def _operator_key(settings: ExchangeSettings) -> Check:
    if settings.operator_key:
        return Check("operator key", True, "AIFI_OPERATOR_KEY is set")
    key_file = settings.data_dir / "operator.key"
    if key_file.exists():
        return Check("operator key", True, f"in {key_file}")
    return Check(
        "operator key",
        True,
        f"none yet: the first start writes one to {key_file} (with replicas, set "
        "AIFI_OPERATOR_KEY on all of them instead)",
    )


def _session_secret(settings: ExchangeSettings) -> Check:
    if settings.session_secret:
        return Check("session secret", True, "AIFI_SESSION_SECRET is set")
    return Check(
        "session secret",
        False,
        "AIFI_SESSION_SECRET is not set: each replica would sign web sessions with a key of "
        "its own, and the others would refuse them; give every replica the same one",
    )
