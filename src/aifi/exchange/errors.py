"""Errors the exchange's services raise; the app turns each into one HTTP status."""

from __future__ import annotations


class ExchangeError(Exception):
    """Base: `status` is the HTTP status the caller gets, the message is the detail it reads."""

    status = 400

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
