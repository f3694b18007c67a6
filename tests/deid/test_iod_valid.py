"""De-identified output is as valid as its input, by dicom3tools' dciodvfy (a real peer)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from aifi.dicom.dciodvfy import verify_iod
from aifi.dicom.deid import Deidentifier
from aifi.dicom.pseudonym import PseudonymKey

pytestmark = pytest.mark.peer

_UID = re.compile(r"\b\d+(\.\d+)+\b")
SOURCES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtstruct.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "test-SR.dcm",
]
OPTION_SETS = [
    frozenset(),
    frozenset({"retain-patient-characteristics", "retain-long-modified-dates"}),
    frozenset({"clean-descriptors", "clean-structured-content", "clean-graphics"}),
]


def _errors(path: Path) -> set[str]:
    """dciodvfy's errors with UIDs masked (they change by design)."""
    return {_UID.sub("<uid>", e) for e in verify_iod(path).errors}


@pytest.mark.parametrize("name", SOURCES)
def test_no_new_iod_errors(name: str, dciodvfy: str, key: PseudonymKey, tmp_path: Path) -> None:
    src = Path(str(get_testdata_file(name)))
    before = _errors(src)
    for options in OPTION_SETS:
        Deidentifier(key, options).deidentify_file(src, tmp_path / "out.dcm")
        assert _errors(tmp_path / "out.dcm") - before == set(), sorted(options)


def test_synthetic_ct_is_valid(dciodvfy: str, key: PseudonymKey, write_instance, tmp_path) -> None:
    src = write_instance()
    before = _errors(src)
    Deidentifier(key).deidentify_file(src, tmp_path / "out.dcm")
    assert _errors(tmp_path / "out.dcm") - before == set()
