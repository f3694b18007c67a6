"""Marking a de-identified instance so every later hop can tell (PS3.15 E.1.1, PS3.3 C.7.1.1).

The exchange refuses input whose De-identification Method does not start with
`DEIDENTIFICATION_METHOD_PREFIX`; the code sequence records the profile and each option
applied, in CID 7050 terms, for any standard-aware reader.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from aifi.dicom.deid.options import (
    BASIC_PROFILE_CODE,
    BASIC_PROFILE_MEANING,
    CODING_SCHEME,
    DEIDENTIFICATION_METHOD_PREFIX,
    OPTION_SPECS,
)
from aifi.dicom.deid.writer import Encoding, encode_value


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodeMeaning = meaning
    return item


def method_text(options: Iterable[str]) -> str:
    """The single De-identification Method value: the prefix, then the options' CID 7050 codes
    in short form ("+108" for 113108), e.g. "AIFI PS3.15 E.1 Basic +107+108".

    LO allows 64 characters; should every option be chosen the codes no longer fit and the
    text is the prefix alone (the code sequence always lists them all).
    """
    codes = sorted(OPTION_SPECS[name].code for name in set(options))
    if not codes:
        return DEIDENTIFICATION_METHOD_PREFIX
    text = f"{DEIDENTIFICATION_METHOD_PREFIX} +" + "+".join(code[3:] for code in codes)
    return text if len(text) <= 64 else DEIDENTIFICATION_METHOD_PREFIX


def mark_deidentified(ds: Dataset, options: Iterable[str]) -> None:
    """Set Patient Identity Removed, the method (text and codes) and the temporal marker."""
    chosen = sorted(set(options), key=lambda name: OPTION_SPECS[name].code)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = method_text(chosen)
    ds.DeidentificationMethodCodeSequence = [
        _code(BASIC_PROFILE_CODE, BASIC_PROFILE_MEANING),
        *(_code(OPTION_SPECS[n].code, OPTION_SPECS[n].meaning) for n in chosen),
    ]
    if "retain-long-modified-dates" in chosen:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    elif "retain-long-full-dates" in chosen:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


@lru_cache(maxsize=64)
def marking_raw_elements(
    options: frozenset[str], implicit: bool, little: bool
) -> tuple[RawDataElement, ...]:
    """The marking as raw elements in a file's encoding, built once per option set: the file
    path inserts them without encoding four elements and a sequence for every instance."""
    template = Dataset()
    mark_deidentified(template, options)
    encoding = Encoding(implicit, little, None)
    raw = []
    for tag in sorted(template.keys()):
        elem = template[tag]
        value = encode_value(elem, encoding)
        raw.append(RawDataElement(tag, elem.VR, len(value), value, 0, implicit, little))
    return tuple(raw)
