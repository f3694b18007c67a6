"""The canary suite: nothing the profile must remove survives, under every option set in use."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

from aifi.dicom.deid import Deidentifier
from aifi.dicom.deid.canaries import canary_instance, find_leaks, option_sets_in_use
from aifi.dicom.pseudonym import PseudonymKey

OPTION_SETS = option_sets_in_use()


def _label(options: frozenset[str]) -> str:
    return "+".join(sorted(options)) or "basic"


@pytest.mark.parametrize("options", OPTION_SETS, ids=_label)
def test_no_canary_survives_in_the_written_file(
    options: frozenset[str], key: PseudonymKey, tmp_path: Path
) -> None:
    instance = canary_instance()
    src = tmp_path / "in.dcm"
    instance.dataset.save_as(src, enforce_file_format=True)
    assert all(c.token in src.read_bytes() for c in instance.canaries if c.token)

    Deidentifier(key, options).deidentify_file(src, tmp_path / "out.dcm")

    assert find_leaks((tmp_path / "out.dcm").read_bytes(), instance.canaries, options) == []


@pytest.mark.parametrize("options", OPTION_SETS, ids=_label)
def test_no_canary_survives_in_the_dataset(options: frozenset[str], key: PseudonymKey) -> None:
    instance = canary_instance()
    Deidentifier(key, options).deidentify_dataset(instance.dataset)
    buffer = io.BytesIO()
    instance.dataset.save_as(buffer, enforce_file_format=True)

    assert find_leaks(buffer.getvalue(), instance.canaries, options) == []


@pytest.mark.parametrize("options", OPTION_SETS, ids=_label)
def test_kept_canaries_are_really_kept(options: frozenset[str], key: PseudonymKey) -> None:
    """The other side: an option that retains an attribute does retain it (minimum necessary
    means the product gets what its manifest names)."""
    instance = canary_instance()
    Deidentifier(key, options).deidentify_dataset(instance.dataset)
    buffer = io.BytesIO()
    instance.dataset.save_as(buffer, enforce_file_format=True)
    output = buffer.getvalue()
    kept = [
        c
        for c in instance.canaries
        if c.token and c.kind == "row" and c.row and c.row.action_for(options).value == "K"
    ]
    assert [c.where for c in kept if c.token not in output] == []


@pytest.mark.parametrize("options", OPTION_SETS, ids=_label)
def test_short_canaries_checked_by_value(options: frozenset[str], key: PseudonymKey) -> None:
    """Ages and binary numbers are too short to find in bytes: compare them by value."""
    instance = canary_instance()
    planted = {
        elem.tag: elem.value
        for elem in instance.dataset
        if elem.VR in {"AS", "US", "SS", "UL", "SL", "FL", "FD"}
        and elem.tag.group not in (0x6000, 0x6002, 0x5000, 0x0028)
    }
    assert planted
    Deidentifier(key, options).deidentify_dataset(instance.dataset)
    from aifi.dicom.deid.table import Action, load_table

    table = load_table()
    for tag, value in planted.items():
        row = table.by_tag.get(int(tag))
        if row is None or row.action_for(options) in {Action.K, Action.C}:
            continue
        assert instance.dataset.get(tag) is None or instance.dataset[tag].value != value, row.name


def test_identity_is_absent_under_every_option_set(key: PseudonymKey) -> None:
    for options in OPTION_SETS:
        instance = canary_instance()
        Deidentifier(key, options).deidentify_dataset(instance.dataset)
        buffer = io.BytesIO()
        instance.dataset.save_as(buffer, enforce_file_format=True)
        out = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
        assert instance.patient_name.encode() not in buffer.getvalue()
        assert instance.patient_id.encode() not in buffer.getvalue()
        assert out.PatientIdentityRemoved == "YES"


@pytest.mark.parametrize(
    "transfer_syntax",
    [ImplicitVRLittleEndian, ExplicitVRBigEndian],
    ids=["implicit-vr", "big-endian"],
)
@pytest.mark.parametrize("options", [OPTION_SETS[0], OPTION_SETS[-1]], ids=["basic", "all"])
def test_no_canary_survives_in_other_encodings(
    transfer_syntax: str, options: frozenset[str], key: PseudonymKey, tmp_path: Path
) -> None:
    instance = canary_instance()
    instance.dataset.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    src = tmp_path / "in.dcm"
    instance.dataset.save_as(src, enforce_file_format=True)

    Deidentifier(key, options).deidentify_file(src, tmp_path / "out.dcm")

    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.file_meta.TransferSyntaxUID == transfer_syntax
    assert out.PatientIdentityRemoved == "YES"
    assert find_leaks((tmp_path / "out.dcm").read_bytes(), instance.canaries, options) == []
