"""The Annex E options by the names product manifests use, and their CID 7050 codes.

A manifest says which options a product needs ("data needed"); the gateway passes exactly that
set to the engine. These identifiers are the contract between the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

#: The first value the engine writes into De-identification Method (0012,0063). The exchange
#: accepts an input only if its method starts with this string.
DEIDENTIFICATION_METHOD_PREFIX = "AIFI PS3.15 E.1 Basic"

#: CID 7050 code of the Basic Application Confidentiality Profile itself.
BASIC_PROFILE_CODE = "113100"
BASIC_PROFILE_MEANING = "Basic Application Confidentiality Profile"
CODING_SCHEME = "DCM"


@dataclass(frozen=True)
class OptionSpec:
    """One Annex E option: its CID 7050 code and the Table E.1-1 column it selects (if any)."""

    name: str
    code: str
    meaning: str
    column: str | None


_SPECS = (
    OptionSpec("retain-safe-private", "113111", "Retain Safe Private Option", "rtnSafePrivOpt"),
    OptionSpec("retain-uids", "113110", "Retain UIDs Option", "rtnUIDsOpt"),
    OptionSpec("retain-device-identity", "113109", "Retain Device Identity Option", "rtnDevIdOpt"),
    OptionSpec(
        "retain-institution-identity",
        "113112",
        "Retain Institution Identity Option",
        "rtnInstIdOpt",
    ),
    OptionSpec(
        "retain-patient-characteristics",
        "113108",
        "Retain Patient Characteristics Option",
        "rtnPatCharsOpt",
    ),
    OptionSpec(
        "retain-long-full-dates",
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
        "rtnLongFullDatesOpt",
    ),
    OptionSpec(
        "retain-long-modified-dates",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
        "rtnLongModifDatesOpt",
    ),
    OptionSpec("clean-descriptors", "113105", "Clean Descriptors Option", "cleanDescOpt"),
    OptionSpec(
        "clean-structured-content",
        "113104",
        "Clean Structured Content Option",
        "cleanStructContOpt",
    ),
    OptionSpec("clean-graphics", "113103", "Clean Graphics Option", "cleanGraphOpt"),
    OptionSpec("clean-pixel-data", "113101", "Clean Pixel Data Option", None),
    OptionSpec(
        "clean-recognizable-visual-features",
        "113102",
        "Clean Recognizable Visual Features Option",
        None,
    ),
)

#: Every option the engine knows, by name.
OPTION_SPECS: MappingProxyType[str, OptionSpec] = MappingProxyType({s.name: s for s in _SPECS})

#: Option name -> CID 7050 code value (scheme DCM).
OPTION_NAMES: MappingProxyType[str, str] = MappingProxyType({s.name: s.code for s in _SPECS})

#: Options that cannot be combined: a date is either kept or shifted, not both.
_EXCLUSIVE = frozenset({"retain-long-full-dates", "retain-long-modified-dates"})


def validate_options(options: Iterable[str]) -> frozenset[str]:
    """The options as a frozenset; raises ValueError naming an unknown or conflicting option."""
    chosen = frozenset(options)
    unknown = sorted(chosen - OPTION_SPECS.keys())
    if unknown:
        raise ValueError(
            f"unknown de-identification option(s) {unknown}; known: {sorted(OPTION_SPECS)}"
        )
    if chosen >= _EXCLUSIVE:
        raise ValueError(
            "options 'retain-long-full-dates' and 'retain-long-modified-dates' exclude each "
            "other (PS3.15 E.3.6): choose one"
        )
    return chosen
