"""The vendor SDK: claim jobs from the exchange, run a product, return its results.

A vendor's adapter is a function from a :class:`JobContext` to a :class:`ProductResult`;
:class:`Worker` does the claiming, heartbeats, downloads, uploads and failure reporting.
"""

from aifi.vendor.client import (
    ExchangeHTTPError,
    InputGone,
    Lease,
    LeaseLost,
    Renewal,
    UnexpectedAnswer,
    VendorClient,
)
from aifi.vendor.worker import Handler, JobContext, ProductError, ProductResult, ResultFile, Worker

__all__ = [
    "ExchangeHTTPError",
    "Handler",
    "InputGone",
    "JobContext",
    "Lease",
    "LeaseLost",
    "ProductError",
    "ProductResult",
    "Renewal",
    "ResultFile",
    "UnexpectedAnswer",
    "VendorClient",
    "Worker",
]
