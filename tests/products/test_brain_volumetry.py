"""Brain volumetry: volumes within 5 % of the phantoms' truth, valid SR and SEG, clear refusals."""

from __future__ import annotations

import json

import pydicom
import pytest

from aifi.dicom.dciodvfy import verify_iod
from aifi.exchange.schemas import ProductManifest
from aifi.products import brain_volumetry
from aifi.results import ResultKind, check_result
from aifi.vendor import ProductError


def test_volumes_within_five_percent_of_truth_on_ct_and_mr(brain_run):
    report = brain_run.report
    assert {case["kind"] for case in report["cases"]} == {"ct-head", "mr-brain"}
    for case in report["cases"]:
        assert case["icv_ml"] == pytest.approx(case["icv_truth_ml"], rel=0.05), case
        assert case["parenchyma_ml"] == pytest.approx(case["parenchyma_truth_ml"], rel=0.05), case
        assert case["bpf"] == pytest.approx(case["bpf_truth"], abs=0.02), case
    assert all(target["met"] for target in report["targets"].values()), report["targets"]


def test_patients_differ_and_the_product_follows(brain_run):
    """The seeds vary head size and atrophy: the measured BPF must track them, not a constant."""
    cases = brain_run.report["cases"]
    assert len({round(case["bpf_truth"], 3) for case in cases}) > 1
    by_truth = sorted(cases, key=lambda case: case["icv_truth_ml"])
    assert [case["icv_ml"] for case in by_truth] == sorted(case["icv_ml"] for case in cases)


@pytest.mark.peer
def test_every_result_object_passes_dciodvfy(brain_run, dciodvfy):
    files = brain_run.result_files()
    assert len(files) == 2 * brain_run.report["studies"]  # one SR and one SEG per study
    for path in files:
        checked = verify_iod(path)
        assert checked.errors == [], (path.name, checked.errors)


def test_sr_points_at_both_segments_of_the_seg(brain_run, referenced_segments, segment_tracking):
    outputs = brain_run.outputs(0)
    sr = pydicom.dcmread(outputs / "brain-volumetry-sr.dcm")
    seg = pydicom.dcmread(outputs / "brain-volumetry-seg.dcm")
    assert sorted(referenced_segments(sr)) == [(seg.SOPInstanceUID, 1), (seg.SOPInstanceUID, 2)]
    tracking = segment_tracking(seg)
    assert [tracking[n][0] for n in (1, 2)] == ["Brain parenchyma", "Intracranial CSF"]
    for path, kind in (
        (outputs / "brain-volumetry-sr.dcm", ResultKind.SR_TID1500),
        (outputs / "brain-volumetry-seg.dcm", ResultKind.SEG),
    ):
        checked = check_result(path, study_instance_uid=sr.StudyInstanceUID)
        assert checked.kind == kind
        assert checked.air_conformant, checked.notes


def test_summary_matches_the_seg_tracking_and_says_not_for_clinical_use(
    run_on_phantom, segment_tracking
):
    ran = run_on_phantom(brain_volumetry.run, "ct-head", seed=5, size="small")
    summary = ran.result.summary
    assert summary["label"] == "reference algorithm, not for clinical use"
    assert summary["triage"] == {"flag": "none", "priority": None}
    findings = {f["tracking_id"]: f for f in summary["findings"]}
    seg = pydicom.dcmread(ran.output_dir / "brain-volumetry-seg.dcm")
    for number, (tracking_id, tracking_uid) in segment_tracking(seg).items():
        assert findings[tracking_id]["tracking_uid"] == tracking_uid, number
    icv = findings["Intracranial volume"]["measurements"]["Volume"]
    assert icv["unit"] == "mL"
    assert icv["value"] == pytest.approx(ran.truth.brain.intracranial_volume_ml, rel=0.05)
    assert findings["Brain parenchyma"]["finding_code"] == "SCT:12738006"
    json.dumps(summary)  # what the worker uploads must be plain JSON


def test_key_image_is_written_but_not_uploaded(run_on_phantom):
    ran = run_on_phantom(brain_volumetry.run, "ct-head", seed=6, size="small")
    key_image = ran.output_dir / "key-image.png"
    assert key_image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {f.media_type for f in ran.result.files} == {"application/dicom"}
    assert key_image not in {f.path for f in ran.result.files}


def test_mr_with_thick_slices_is_refused(run_on_phantom):
    with pytest.raises(ProductError, match="MR slices are 10.0 mm apart"):
        run_on_phantom(brain_volumetry.run, "mr-brain", seed=1, size="small")


def test_a_chest_ct_has_no_brain(run_on_phantom):
    with pytest.raises(ProductError, match="no brain found"):
        run_on_phantom(brain_volumetry.run, "ct-chest", seed=1, size="small")


def test_a_radiograph_is_not_a_volume(run_on_phantom):
    with pytest.raises(ProductError, match="no CT/MR image"):
        run_on_phantom(brain_volumetry.run, "dx-hand", seed=1, size="small")


def test_manifest_declares_what_it_accepts_needs_and_gives():
    manifest = ProductManifest.model_validate(brain_volumetry.manifest("aifi"))
    assert manifest.accepts.modalities == ["CT", "MR"]
    assert "1.2.840.10008.5.1.4.1.1.4" in manifest.accepts.sop_classes
    assert manifest.data_needed == ["retain-long-modified-dates"]
    assert {output.kind for output in manifest.outputs} == {"sr-tid1500", "seg", "summary-json"}
    assert manifest.for_clinical_use is False
    assert "not for clinical use" in manifest.name
