"""The rule for a product version's name, which the exchange, its catalogue and the vendor SDK
share: evaluation counts each version apart by this name, so every place that takes one takes
it by the same rule. (A module of its own, importing nothing of the exchange, so that the
vendor SDK does not load the exchange's server code to ask.)

A version with a space at either end is refused as a new name ("2.0 " would be counted apart
from "2.0", and nobody reading the evaluation could tell them apart). One the catalogue
published so before the exchange refused those goes on as it was named: results, failures and
its manifest published again may still name it, and jobs keep it.
"""

from __future__ import annotations

from collections.abc import Callable

#: The longest product version a job keeps, as the catalogue allows it.
VERSION_MAX = 64


def kept_version(version: object) -> str | None:
    """`version` if a job can keep it as the version that ran it: a string of 1 to 64
    printable characters. The exchange refuses other versions in summaries, failures and the
    catalogue; summaries stored earlier may hold anything, and PostgreSQL's text holds no
    NUL."""
    if not isinstance(version, str) or not 0 < len(version) <= VERSION_MAX:
        return None
    return version if version.isprintable() else None


def fit_as_new_version(version: str) -> bool:
    """Whether `version` may be named anew: one a job can keep, with no space at either end."""
    return kept_version(version) is not None and version == version.strip()


def version_problem(
    version: str, act: str, published: Callable[[str], bool] | None = None
) -> str | None:
    """Why `version` may not be named as the version that `act` (produced the result, failed
    the job), or None if it may: evaluation counts each version apart, by the name it is given.
    `published(version)` says whether the catalogue published the product's version so (asked
    only of a version with a space at an end, which goes on if it did)."""
    if fit_as_new_version(version) or (
        kept_version(version) is not None and published is not None and published(version)
    ):
        return None
    return (
        f"product_version: must be 1 to {VERSION_MAX} printable characters with no space at "
        f"either end, the version that {act} as the catalogue names it (given "
        f"{version[:80]!r}, {len(version)} characters)"
    )
