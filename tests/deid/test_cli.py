"""`aifi deid INPUT OUTPUT` over a folder: outputs, the error table and the exit code."""

from __future__ import annotations

from pathlib import Path

import pydicom
from typer.testing import CliRunner

from aifi.dicom.deid.cli import app
from aifi.dicom.pseudonym import PseudonymKey, create_secret_file


def _tree(tmp_path: Path, write_instance) -> Path:
    src = tmp_path / "in"
    (src / "study" / "series").mkdir(parents=True)
    for n in range(3):
        path = write_instance(patient_id=f"PAT-{n:04d}")
        path.rename(src / "study" / "series" / f"ct{n}.dcm")
    write_instance(sop_class="1.2.840.10008.5.1.4.1.1.7").rename(src / "study" / "sc.dcm")
    (src / "notes.txt").write_text("not dicom")
    return src


def test_folder_with_failures(tmp_path: Path, write_instance) -> None:
    src = _tree(tmp_path, write_instance)
    secret = tmp_path / "secret.hex"
    create_secret_file(secret)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            str(src),
            str(out),
            "--secret-file",
            str(secret),
            "--option",
            "retain-patient-characteristics",
        ],
    )
    assert result.exit_code == 1, result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [f"study/series/ct{n}.dcm" for n in range(3)]
    assert "3 written, 2 failed" in result.output
    assert "study/sc.dcm" in result.output and "Secondary Capture" in result.output
    assert "notes.txt" in result.output
    ds = pydicom.dcmread(out / "study" / "series" / "ct1.dcm")
    assert ds.PatientID == PseudonymKey.from_file(secret).patient_id("PAT-0001")
    assert ds.PatientSex == "F"


def test_all_good_exits_zero(tmp_path: Path, write_instance) -> None:
    src = tmp_path / "in"
    src.mkdir()
    write_instance().rename(src / "a.dcm")
    secret = tmp_path / "secret.hex"
    create_secret_file(secret)
    result = CliRunner().invoke(
        app, [str(src), str(tmp_path / "out"), "--secret-file", str(secret)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.dcm").is_file()


def test_unknown_option_is_a_usage_error(tmp_path: Path, write_instance) -> None:
    secret = tmp_path / "secret.hex"
    create_secret_file(secret)
    result = CliRunner().invoke(
        app,
        [
            str(write_instance()),
            str(tmp_path / "o.dcm"),
            "--secret-file",
            str(secret),
            "--option",
            "retain-all",
        ],
    )
    assert result.exit_code == 2
    assert "retain-all" in result.output
    assert not (tmp_path / "o.dcm").exists()


def test_pixel_regions_from_the_command_line(tmp_path: Path, write_instance) -> None:
    secret = tmp_path / "secret.hex"
    create_secret_file(secret)
    src = write_instance(sop_class="1.2.840.10008.5.1.4.1.1.6.1")
    result = CliRunner().invoke(
        app,
        [
            str(src),
            str(tmp_path / "o.dcm"),
            "--secret-file",
            str(secret),
            "--option",
            "clean-pixel-data",
            "--clean-region",
            "0,0,4,2",
        ],
    )
    assert result.exit_code == 0, result.output
    out = pydicom.dcmread(tmp_path / "o.dcm")
    assert out.BurnedInAnnotation == "NO" and not out.pixel_array[:2, :4].any()
