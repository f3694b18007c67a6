"""Re-identification writes the patient's name as it is, whatever character set the AI
product's result declared: a PACS must not file "?ukasz" where "Łukasz" was sent."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from aifi.dicom.dciodvfy import verify_iod
from aifi.gateway.reidentify import reidentify_file
from aifi.gateway.vault import Vault
from aifi.products import tissue_volume
from aifi.vendor import JobContext
from scale.exchange_api import pseudonymised_ct

ORIGINAL_STUDY = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture
def product_sr(tmp_path: Path) -> tuple[Path, str]:
    """The reference product's SR for a pseudonymised CT, and that CT's study UID."""
    [ct] = pseudonymised_ct(tmp_path / "ct", slices=1)
    out = tmp_path / "out"
    out.mkdir()
    result = tissue_volume.run(JobContext(job={}, inputs=[ct], output_dir=out))
    study = str(pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
    return result.files[0].path, study


def _restored(
    tmp_path: Path, sr: Path, study: str, name: str, declared: str | None, text: str
) -> pydicom.Dataset:
    """Re-identify `sr` as a vendor would have sent it: `declared` as its character set
    (None: none declared), `text` as its series description; returns what the PACS gets."""
    ds = pydicom.dcmread(sr)
    if declared is None:
        ds.pop("SpecificCharacterSet", None)  # the reference product declares none
    else:
        ds.SpecificCharacterSet = declared
    ds.SeriesDescription = text
    sent = tmp_path / f"sent-{declared}.dcm"
    ds.save_as(sent, enforce_file_format=True)
    vault = Vault(tmp_path / f"vault-{declared}.db")
    vault.remember(
        {ORIGINAL_STUDY: study},
        original_study_uid=ORIGINAL_STUDY,
        pseudonym_study_uid=study,
        patient_pseudonym="PSEUDO",
        original_attributes={
            "PatientName": name,
            "PatientID": "HOSP-0099",
            "StudyInstanceUID": ORIGINAL_STUDY,
        },
    )
    target = tmp_path / f"restored-{declared}.dcm"
    reidentify_file(sent, target, vault)
    vault.close()
    return pydicom.dcmread(target)


@pytest.mark.parametrize(
    ("declared", "text"),
    [(None, "Tissue volumes"), ("ISO_IR 100", "Gewebevolumen Schädel")],
)
def test_a_name_the_results_character_set_cannot_hold_is_written_in_utf8(
    product_sr: tuple[Path, str], tmp_path: Path, dciodvfy: str, declared: str | None, text: str
) -> None:
    sr, study = product_sr
    restored = _restored(tmp_path, sr, study, "Łukasz^Nowak", declared, text)
    assert str(restored.PatientName) == "Łukasz^Nowak"
    assert restored.PatientID == "HOSP-0099" and restored.StudyInstanceUID == ORIGINAL_STUDY
    assert restored.SpecificCharacterSet == "ISO_IR 192"
    assert restored.SeriesDescription == text  # the product's own text, read in its own set
    report = verify_iod(tmp_path / f"restored-{declared}.dcm")
    assert report.ok, report.errors


def test_an_ascii_name_leaves_the_results_character_set_alone(
    product_sr: tuple[Path, str], tmp_path: Path
) -> None:
    sr, study = product_sr
    restored = _restored(tmp_path, sr, study, "Jansen^Anna", None, "Tissue volumes")
    assert str(restored.PatientName) == "Jansen^Anna"
    assert "SpecificCharacterSet" not in restored
