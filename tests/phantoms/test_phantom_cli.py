"""`aifi phantom KIND OUTPUT` writes a study and its truth, and reports bad input plainly."""

from __future__ import annotations

import pydicom
import typer
from typer.testing import CliRunner

from aifi.phantoms import StudyTruth
from aifi.phantoms.cli import app, phantom

runner = CliRunner()


def test_cli_writes_the_study_and_its_truth(tmp_path):
    out, truth_file = tmp_path / "chest", tmp_path / "truth" / "chest.json"
    result = runner.invoke(
        app,
        [
            "ct-chest", str(out), "--seed", "4", "--size", "small", "--truth", str(truth_file),
            "--nodule", "20", "--nodule", "22@-80,0,10", "--patient-id", "HOSP-1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    truth = StudyTruth.read_json(truth_file)
    files = sorted(out.glob("*.dcm"))
    assert len(files) == truth.instance_count == 24
    assert [n.requested_diameter_mm for n in truth.nodules] == [20.0, 22.0]
    assert truth.nodules[1].planned_centre_mm == (-80.0, 0.0, 10.0)
    assert pydicom.dcmread(files[0], stop_before_pixels=True).PatientID == "HOSP-1"
    assert truth.study_instance_uid in result.output


def test_cli_puts_the_truth_beside_the_folder_by_default(tmp_path):
    result = runner.invoke(
        app, ["dx-hand", str(tmp_path / "hand"), "--size", "small", "--fracture"]
    )
    assert result.exit_code == 0, result.output
    truth = StudyTruth.read_json(tmp_path / "hand.truth.json")
    assert truth.fracture is not None and "fracture" in result.output


def test_cli_refuses_a_finding_that_does_not_apply(tmp_path):
    result = runner.invoke(
        app, ["ct-head", str(tmp_path / "x"), "--size", "small", "--nodule", "8"]
    )
    assert result.exit_code != 0
    assert "nodules apply to ct-chest" in result.output
    assert not (tmp_path / "x").exists()


def test_cli_refuses_a_malformed_nodule(tmp_path):
    result = runner.invoke(app, ["ct-chest", str(tmp_path / "x"), "--nodule", "8@1,2"])
    assert result.exit_code != 0
    assert "DIAMETER@x,y,z" in result.output or "x,y,z" in result.output


def test_the_command_can_be_registered_on_the_main_app(tmp_path):
    main = typer.Typer()

    @main.command()
    def version() -> None:
        """Another command, so that the main app is a group as `aifi` is."""

    main.command("phantom")(phantom)
    result = runner.invoke(main, ["phantom", "ct-head", str(tmp_path / "h"), "--size", "small"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "h").glob("*.dcm"))) == 16
