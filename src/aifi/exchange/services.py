"""The exchange's services wired together once per app, handed to routers as a dependency."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from aifi.exchange.audit import AuditLog
from aifi.exchange.auth import KeyCache, store_api_key
from aifi.exchange.blobs import BlobStore, open_blob_store
from aifi.exchange.catalogue import Catalogue
from aifi.exchange.db import Database, upgrade_schema
from aifi.exchange.jobs import JobService
from aifi.exchange.models import Organisation
from aifi.exchange.notify import ChangeNotifier
from aifi.exchange.schemas import OrganisationIn, OrganisationKind
from aifi.exchange.settings import ExchangeSettings
from aifi.exchange.threads import TransferThreads
from aifi.exchange.transfers import Transfers

log = logging.getLogger(__name__)

OPERATOR_ID = "operator"


@dataclass
class Services:
    settings: ExchangeSettings
    db: Database
    blobs: BlobStore
    audit: AuditLog
    notifier: ChangeNotifier
    catalogue: Catalogue
    jobs: JobService
    transfers: Transfers
    keys: KeyCache = field(default_factory=KeyCache)


def build_services(settings: ExchangeSettings) -> Services:
    """Open the database (migrating it), the blob store, and make sure an operator exists."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url(), settings.resolved_pool_size())
    upgrade_schema(db.engine)
    blobs = open_blob_store(settings.resolved_blob_url(), settings.upload_spool)
    audit = AuditLog(db)
    notifier = ChangeNotifier()
    # One per replica: the catalogue clears a key it revokes from it.
    keys = KeyCache(ttl=settings.key_cache_seconds)
    catalogue = Catalogue(db, audit, admit_on_register=settings.admit_on_register, keys=keys)
    jobs = JobService(db, blobs, catalogue, audit, notifier, settings)
    transfers = Transfers(
        db, blobs, jobs, audit, TransferThreads(settings.transfer_threads), settings
    )
    services = Services(settings, db, blobs, audit, notifier, catalogue, jobs, transfers, keys)
    with db.one_replica_at_a_time():
        ensure_operator(services)
    return services


def ensure_operator(services: Services) -> None:
    """The national operator's organisation, with the configured key or one written to disk."""
    with services.db.session() as session:
        exists = session.scalars(
            select(Organisation.id).where(Organisation.kind == OrganisationKind.operator.value)
        ).first()
    if exists:
        if services.settings.operator_key:
            _ensure_key(services, services.settings.operator_key)
        return
    _, key = services.catalogue.create_organisation(
        None,
        OrganisationIn(id=OPERATOR_ID, name="National operator", kind=OrganisationKind.operator),
    )
    if services.settings.operator_key:
        _ensure_key(services, services.settings.operator_key)
    key_file = services.settings.data_dir / "operator.key"
    _write_secret(key_file, key)
    log.info("operator API key written to %s", key_file)


def _ensure_key(services: Services, key: str) -> None:
    """Store the configured operator key unless it is known: a revoked one stays revoked (a
    leaked AIFI_OPERATOR_KEY must not come back with the next restart), and is said so."""
    from aifi.exchange.auth import hash_api_key
    from aifi.exchange.models import ApiKey

    with services.db.session() as session:
        known = session.execute(
            select(ApiKey.id, ApiKey.revoked_at).where(ApiKey.key_hash == hash_api_key(key))
        ).first()
    if known is None:
        store_api_key(services.db, OPERATOR_ID, key, label="configured")
    elif known.revoked_at is not None:
        log.warning(
            "AIFI_OPERATOR_KEY is API key %s, revoked at %s: the exchange does not take it; "
            "configure the operator's live key instead",
            known.id,
            known.revoked_at,
        )


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
