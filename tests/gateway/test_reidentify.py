"""Re-identification writes the patient's name as it is, whatever character set the AI
product's result declared: a PACS must not file "?ukasz" where "Łukasz" was sent."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from aifi.dicom.dciodvfy import verify_iod
from aifi.gateway.reidentify import ReidentificationError, reidentify_file
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


ORIGINAL_CT = "1.2.826.0.1.3680043.8.498.78"
ORIGINAL_SERIES = "1.2.826.0.1.3680043.8.498.79"


def _vault_for(tmp_path: Path, ct: Path) -> Vault:
    """The vault as the gateway left it after sending `ct`: its study, series and instance."""
    sent = pydicom.dcmread(ct, stop_before_pixels=True)
    vault = Vault(tmp_path / "vault.db")
    vault.remember(
        {
            ORIGINAL_STUDY: str(sent.StudyInstanceUID),
            ORIGINAL_SERIES: str(sent.SeriesInstanceUID),
            ORIGINAL_CT: str(sent.SOPInstanceUID),
        },
        original_study_uid=ORIGINAL_STUDY,
        pseudonym_study_uid=str(sent.StudyInstanceUID),
        patient_pseudonym="PSEUDO",
        original_attributes={"PatientID": "HOSP-0099", "StudyInstanceUID": ORIGINAL_STUDY},
    )
    return vault


@pytest.mark.parametrize(
    ("keyword", "what"), [("SOPInstanceUID", "an instance"), ("SeriesInstanceUID", "a series")]
)
def test_a_result_with_an_input_s_uid_is_refused_not_mapped_onto_the_hospital_s_image(
    tmp_path: Path, keyword: str, what: str
) -> None:
    """A product that copied the source's header into its result: mapped back, the result
    would carry the hospital's CT image's UID (the PACS keeps one of the two) or sit among
    the images as they were acquired."""
    [ct] = pseudonymised_ct(tmp_path / "ct", slices=1)
    out = tmp_path / "out"
    out.mkdir()
    sr = tissue_volume.run(JobContext(job={}, inputs=[ct], output_dir=out)).files[0].path
    vault = _vault_for(tmp_path, ct)
    ds = pydicom.dcmread(sr)
    setattr(ds, keyword, pydicom.dcmread(ct, stop_before_pixels=True).get(keyword))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(sr, enforce_file_format=True)
    target = tmp_path / "restored.dcm"
    with pytest.raises(ReidentificationError, match=f"{keyword} is that of {what}"):
        reidentify_file(sr, target, vault)
    assert not target.exists()
    # The product's own UIDs, as it should have made them, are taken.
    ds[keyword].value = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(sr, enforce_file_format=True)
    reidentify_file(sr, target, vault, original_study_uid=ORIGINAL_STUDY)
    restored = pydicom.dcmread(target)
    assert restored.StudyInstanceUID == ORIGINAL_STUDY and restored.PatientID == "HOSP-0099"
    vault.close()


def test_a_result_about_another_study_than_its_job_s_is_refused(tmp_path: Path) -> None:
    """Identity comes from the result's own study: one listed with another job would be filed
    under that study's patient, while the disclosure log named the job's."""
    [ct] = pseudonymised_ct(tmp_path / "ct", slices=1)
    out = tmp_path / "out"
    out.mkdir()
    sr = tissue_volume.run(JobContext(job={}, inputs=[ct], output_dir=out)).files[0].path
    vault = _vault_for(tmp_path, ct)
    target = tmp_path / "restored.dcm"
    with pytest.raises(ReidentificationError, match="not the study of the job it came with"):
        reidentify_file(sr, target, vault, original_study_uid="1.2.826.0.1.3680043.8.498.80")
    assert not target.exists()
    vault.close()
