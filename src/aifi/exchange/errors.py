"""Errors the exchange's services raise; the app turns each into one HTTP status."""

from __future__ import annotations


class ExchangeError(Exception):
    """Base: `status` is the HTTP status the caller gets, the message is the detail it reads."""

    status = 400
    #: Seconds the caller is told to wait before trying again (`Retry-After`), for an answer
    #: that is the exchange's trouble and will pass.
    retry_after: int | None = None
    #: The `aifi_exchange_errors_total` kind of an answer that is the exchange's trouble, when
    #: its status alone does not say it.
    error_kind: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        #: Whether the refusal is in the access log already (with what it concerned): the
        #: app logs any other refused change itself, from the request's route.
        self.audited = False


class NotFound(ExchangeError):
    status = 404


class Forbidden(ExchangeError):
    status = 403


class Conflict(ExchangeError):
    status = 409


class Invalid(ExchangeError):
    """The body or file is not what the rule asks; the message names the rule and the object."""

    status = 422


class StorageFull(ExchangeError):
    status = 507
    retry_after = 60


class BlobStoreUnavailable(ExchangeError):
    """The object store could not be reached, or answered with trouble of its own, after the
    client's own retries: nothing was stored or read, and a retry shortly is expected to work.
    Not the database's 503 (`unavailable`): its own alert names the store."""

    status = 503
    retry_after = 5
    error_kind = "blob_store_unavailable"


class BlobMissing(NotFound):
    """A blob the database says the exchange holds is not in the blob store, and retention
    did not take it: the store was restored to an earlier moment, or something other than
    the exchange deleted it (a bucket's lifecycle rule). A 404 to the caller, as for any
    blob gone (nobody can read it); its own kind to the operator, who is paged."""

    error_kind = "blob_missing"


class ArchiveMissing(ExchangeError):
    """An access-log archive file the database records is not in the blob store (restored
    to an earlier moment, or deleted by something else): the entries it holds cannot be
    searched until it is put back. The exchange's trouble, paged as a missing blob."""

    status = 500
    error_kind = "blob_missing"
