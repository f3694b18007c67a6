"""DICOM PS3.15 Annex E de-identification: Table E.1-1 as data, keyed pseudonyms, atomic files.

    key = PseudonymKey(secret)
    engine = Deidentifier(key, options=frozenset({"retain-patient-characteristics"}))
    result = engine.deidentify_file(src, dst)      # or engine.deidentify_dataset(ds)

See docs/pseudonymisation.md for what each option does and how the secret is managed.
"""

from aifi.dicom.deid.burned_in import BURNED_IN_SOP_CLASSES, DOCUMENT_SOP_CLASSES
from aifi.dicom.deid.engine import Deidentifier, DeidOptions, DeidResult
from aifi.dicom.deid.errors import DeidError, DeidRefused
from aifi.dicom.deid.options import (
    DEIDENTIFICATION_METHOD_PREFIX,
    OPTION_NAMES,
    OPTION_SPECS,
    validate_options,
)
from aifi.dicom.pseudonym import PseudonymKey

__all__ = [
    "BURNED_IN_SOP_CLASSES",
    "DEIDENTIFICATION_METHOD_PREFIX",
    "DOCUMENT_SOP_CLASSES",
    "OPTION_NAMES",
    "OPTION_SPECS",
    "DeidError",
    "DeidOptions",
    "DeidRefused",
    "DeidResult",
    "Deidentifier",
    "PseudonymKey",
    "validate_options",
]
