"""`aifi exchange --check` against the real parts of a scaled-out exchange: PostgreSQL (Debian
package) and an S3-compatible store (moto). What would break a replica is named before it
starts, and the check itself changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from aifi.checks import Check
from aifi.exchange.blobs import open_blob_store
from aifi.exchange.db import alembic_config, normalised_url, upgrade_schema
from aifi.exchange.preflight import preflight
from aifi.exchange.settings import ExchangeSettings
from scale.servers import S3_CREDENTIALS, PostgresServer, S3Server
from support.peers import free_port

pytestmark = pytest.mark.peer


def _settings(
    tmp_path: Path, database_url: str, blob_url: str, **extra: object
) -> ExchangeSettings:
    return ExchangeSettings(
        data_dir=tmp_path / "replica",
        database_url=database_url,
        blob_url=blob_url,
        operator_key="aifi_operator-key-for-the-check-0123456789",
        session_secret="shared-by-every-replica",
        **extra,
    )


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def _migrated(url: str) -> None:
    engine = create_engine(normalised_url(url))
    try:
        upgrade_schema(engine)
    finally:
        engine.dispose()


def _set_revision(postgres: PostgresServer, url: str, revision: str) -> None:
    with psycopg.connect(postgres.dsn(url.rsplit("/", 1)[1]), autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = %s", (revision,))


def test_a_replica_set_up_as_deploy_md_says_passes_every_check(
    postgres: PostgresServer, s3: S3Server, tmp_path: Path
) -> None:
    url, blobs = postgres.create_database(), s3.blob_url()
    env = {
        **os.environ,
        **S3_CREDENTIALS,
        "AIFI_DATABASE_URL": url,
        "AIFI_BLOB_URL": blobs,
        "AIFI_OPERATOR_KEY": "aifi_operator-key-for-the-check-0123456789",
        "AIFI_SESSION_SECRET": "shared-by-every-replica",
    }
    ran = subprocess.run(
        [sys.executable, "-m", "aifi.cli", "exchange", "--check", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "all 7 checks passed" in ran.stdout, ran.stdout
    for name in ("database", "schema", "connections", "blob store", "upload spool"):
        assert name in ran.stdout
    # Nothing changed: no schema, and the probe object is gone.
    with psycopg.connect(postgres.dsn(url.rsplit("/", 1)[1])) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)
    checks = _by_name(preflight(_settings(tmp_path, url, blobs)))
    assert checks["schema"].detail.startswith("empty")
    assert "whole and multipart" in checks["blob store"].detail
    assert open_blob_store(blobs).delete_under("") == 0, "the probe object was left behind"


def test_the_schema_is_named_behind_at_or_ahead_of_this_release(
    postgres: PostgresServer, s3: S3Server, tmp_path: Path
) -> None:
    url, blobs = postgres.create_database(), s3.blob_url()
    _migrated(url)
    script = ScriptDirectory.from_config(alembic_config(url))
    [head] = script.get_heads()
    at_head = _by_name(preflight(_settings(tmp_path, url, blobs)))["schema"]
    assert at_head.ok and head in at_head.detail and "newest" in at_head.detail

    older = script.get_revision(head).down_revision
    assert isinstance(older, str)
    _set_revision(postgres, url, older)
    behind = _by_name(preflight(_settings(tmp_path, url, blobs)))["schema"]
    assert behind.ok and "migrates it to" in behind.detail

    _set_revision(postgres, url, "0fe1ea5e0fnewer")
    ahead = _by_name(preflight(_settings(tmp_path, url, blobs)))["schema"]
    assert not ahead.ok and "newer release" in ahead.detail


def test_what_would_break_a_replica_is_named(
    postgres: PostgresServer, s3: S3Server, tmp_path: Path
) -> None:
    url = postgres.create_database()
    too_many = _settings(tmp_path, url, s3.blob_url(), database_pool_size=100_000)
    too_many.session_secret = None
    checks = _by_name(preflight(too_many))
    assert not checks["connections"].ok and "max_connections" in checks["connections"].detail
    assert (
        not checks["session secret"].ok and "AIFI_SESSION_SECRET" in checks["session secret"].detail
    )

    nowhere = f"s3://aifi-missing?endpoint=http://127.0.0.1:{free_port()}"
    no_database = postgres.url("no_such_database")
    checks = _by_name(preflight(_settings(tmp_path, no_database, nowhere)))
    assert not checks["database"].ok and "no_such_database" in checks["database"].detail
    assert "schema" not in checks, "the schema was read from a database that is not there"
    assert not checks["blob store"].ok and "127.0.0.1" in checks["blob store"].detail


def test_a_database_url_of_no_known_kind_is_named(s3: S3Server, tmp_path: Path) -> None:
    checks = _by_name(preflight(_settings(tmp_path, "mysql+nosuchdriver://x/y", s3.blob_url())))
    assert not checks["database"].ok and "AIFI_DATABASE_URL" in checks["database"].detail
    assert checks["blob store"].ok
