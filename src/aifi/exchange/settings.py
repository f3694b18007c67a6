"""Exchange configuration: one settings object, read once from AIFI_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aifi.exchange.threads import REQUEST_THREADS, TRANSFER_THREADS


class ExchangeSettings(BaseSettings):
    """Where the exchange keeps its state and how it treats leases.

    Defaults are embedded (a SQLite file and a local blob folder under `data_dir`), so one
    machine needs no servers; `AIFI_DATABASE_URL` (`postgresql+psycopg://…`) and
    `AIFI_BLOB_URL` (`s3://bucket?endpoint=…`) move it to shared parts for replicas.
    """

    model_config = SettingsConfigDict(env_prefix="AIFI_", extra="ignore")

    data_dir: Path = Field(default=Path("aifi-data/exchange"))
    database_url: str | None = None
    #: Connections a replica keeps open; unset, twice its worker threads
    #: (`request_threads` + `transfer_threads`, so 40 by default), which follows when either
    #: is raised. With fewer than its threads, a busy replica opened and closed a connection
    #: for every other job. PostgreSQL's `max_connections` must cover replicas × (this + 11).
    database_pool_size: int | None = Field(default=None, ge=1)
    #: Requests that run their blocking work (transactions, checks) at once. More threads only
    #: hand the interpreter lock around: a request needs its thread for milliseconds.
    request_threads: int = Field(default=REQUEST_THREADS, ge=1)
    #: Large uploads and streamed downloads under way at once, on threads of their own so
    #: that a slow object store never holds back requests.
    transfer_threads: int = Field(default=TRANSFER_THREADS, ge=1)
    blob_url: str | None = None
    #: Seconds a claim holds a job before it goes back to the queue without a heartbeat.
    lease_seconds: float = 60.0
    #: Claims a job may have before an expired lease ends it for good.
    max_attempts: int = 3
    #: Longest a long-poll request waits for a change before answering with nothing.
    max_wait_seconds: float = 30.0
    #: Seconds a replica answers an API key it verified from memory: the bound on how long a
    #: revoked key still works at the replicas that did not revoke it. 0 looks every
    #: request's key up in the database.
    key_cache_seconds: float = Field(default=10.0, ge=0, le=300)
    #: If set, the operator organisation's API key (otherwise one is created and written to
    #: `data_dir/operator.key` on first start).
    operator_key: str | None = None
    #: Seconds after a job ends before its pseudonymised inputs are purged (None keeps them).
    retain_inputs_seconds: float | None = Field(default=7 * 86400.0, ge=0)
    #: Seconds after the hospital acknowledged delivery before results are purged (None keeps).
    retain_results_seconds: float | None = Field(default=30 * 86400.0, ge=0)
    #: Seconds after a job ended before results its hospital never acknowledged are purged
    #: (None keeps them until it does): a gateway taken out of service must not leave them
    #: at the exchange for ever.
    retain_undelivered_seconds: float | None = Field(default=30 * 86400.0, ge=0)
    #: Seconds after its creation before a job that has not ended is expired, its reason
    #: saying where it stopped (None lets it wait for ever). Retention purges only ended
    #: jobs: without this, an upload never finished or a job no vendor takes would hold its
    #: inputs for ever.
    expire_unfinished_seconds: float | None = Field(default=7 * 86400.0, gt=0)
    #: Seconds after it was stored before an access-log entry moves from the database to an
    #: archive file in the blob store (None keeps every entry in the database). The chain
    #: goes on across archives and `aifi audit verify --archives` checks them: see
    #: `aifi.exchange.audit_archive`. The sweep below runs it.
    archive_audit_after_seconds: float | None = Field(default=None, gt=0)
    #: How often each replica looks for data past its retention time.
    retention_sweep_seconds: float = Field(default=300.0, gt=0)
    #: Who runs this exchange and where: stated in every product's record of processing.
    operator_name: str = "AIFI national operator"
    operator_location: str = "the national exchange's data centre (EEA)"
    #: Products are admitted the moment they are registered. For test, demo and conformance
    #: exchanges only: a national exchange admits through the dossier and review.
    admit_on_register: bool = False
    #: Key that signs the web pages' session cookies; replicas must share it.
    session_secret: str | None = None

    @field_validator(
        "database_pool_size",
        "retain_inputs_seconds",
        "retain_results_seconds",
        "retain_undelivered_seconds",
        "expire_unfinished_seconds",
        "archive_audit_after_seconds",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """`AIFI_RETAIN_INPUTS_SECONDS=` (empty) means None: keep, never, as docs/deploy.md
        says, and as a unit file or an .env line writes "no value"; a number's parser would
        refuse it."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    def resolved_pool_size(self) -> int:
        """The pool a replica keeps: as set, or twice its worker threads, so that raising a
        thread count never leaves threads waiting for a connection (a fixed 40 would have:
        with 50 request threads, requests beyond its 50 connections would time out in
        the pool)."""
        if self.database_pool_size is not None:
            return self.database_pool_size
        return 2 * (self.request_threads + self.transfer_threads)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'exchange.db').resolve()}"

    def resolved_blob_url(self) -> str:
        if self.blob_url:
            return self.blob_url
        return f"file://{(self.data_dir / 'blobs').resolve()}"

    @property
    def upload_spool(self) -> Path:
        """Where uploads to an object store wait while they are checked, unless
        `AIFI_BLOB_URL` names a folder (`spool=`)."""
        return self.data_dir / "spool"


class SettingsRefused(ValueError):
    """An AIFI_* variable holds what its setting cannot take; the message names each one."""


def read_settings(data_dir: Path | None = None) -> ExchangeSettings:
    """The exchange's settings from the environment (`data_dir` given on the command line).

    Raises
    ------
    SettingsRefused
        naming every variable that does not fit and why, in a line each: what an operator
        reads instead of pydantic's traceback.
    """
    try:
        return ExchangeSettings() if data_dir is None else ExchangeSettings(data_dir=data_dir)
    except ValidationError as exc:
        lines = [
            f"AIFI_{'_'.join(str(part) for part in error['loc']).upper()}="
            f"{error.get('input', '')!s}: {error['msg']}"
            for error in exc.errors()
        ]
        raise SettingsRefused("\n".join(lines)) from None
