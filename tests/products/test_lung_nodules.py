"""Lung nodules: sensitivity, false positives and localisation against truth; valid SR and SEG."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from aifi.dicom.dciodvfy import verify_iod
from aifi.exchange.schemas import ProductManifest
from aifi.phantoms import GridSize, Nodule
from aifi.products import lung_nodules
from aifi.products.imaging import CT_IMAGE_STORAGE, load_volume
from aifi.results import check_result
from aifi.vendor import ProductError


def test_sensitivity_false_positives_and_centres_meet_the_targets(lung_run):
    report = lung_run.report
    figures, targets = report["figures"], report["targets"]
    assert figures["nodules_6mm_or_larger"] >= 8, "too few nodules to measure sensitivity"
    assert any(not case["nodules"] for case in report["cases"]), "no scan without nodules"
    assert figures["sensitivity_6mm_or_larger"] >= 0.9
    assert figures["false_positives_per_scan"] <= 2.0
    assert figures["max_centre_error_mm"] <= 2.0
    assert all(target["met"] for target in targets.values()), targets


def test_found_nodules_have_their_true_size(lung_run):
    for case in lung_run.report["cases"]:
        for nodule in case["nodules"]:
            if nodule["detected"]:
                assert nodule["measured_diameter_mm"] == pytest.approx(
                    nodule["truth_diameter_mm"], abs=1.0
                ), nodule


def test_detections_land_on_the_planned_nodules(tmp_path):
    """Directly on the algorithm: nodules placed at known centres are found there, and only."""
    from aifi.phantoms import write_study

    planned = [Nodule(10.0, (-80.0, 0.0, 20.0)), Nodule(7.0, (70.0, 10.0, -30.0))]
    truth = write_study("ct-chest", tmp_path, seed=9, nodules=planned)
    volume = load_volume(
        sorted(tmp_path.glob("*.dcm"))[::-1],  # any order: the loader sorts by position
        modalities={"CT"},
        sop_classes={CT_IMAGE_STORAGE},
        min_slices=10,
    )
    found = lung_nodules.detect_nodules(volume)
    assert len(found) == 2
    for nodule, detected in zip(truth.nodules, found, strict=True):  # largest first, both
        assert np.linalg.norm(np.subtract(detected.centre_mm, nodule.centre_mm)) <= 2.0
        assert detected.volume_mm3 == pytest.approx(nodule.volume_mm3, rel=0.1)


@pytest.mark.peer
def test_every_result_object_passes_dciodvfy(lung_run, dciodvfy):
    files = lung_run.result_files()
    with_nodules = sum(bool(case["nodules"]) for case in lung_run.report["cases"])
    assert len(files) == lung_run.report["studies"] + with_nodules  # SR always, SEG if found
    for path in files:
        checked = verify_iod(path)
        assert checked.errors == [], (path.name, checked.errors)


def test_one_segment_per_nodule_linked_to_its_finding(
    lung_run, referenced_segments, segment_tracking
):
    seed = next(i for i, case in enumerate(lung_run.report["cases"]) if len(case["nodules"]) > 1)
    outputs = lung_run.outputs(seed)
    sr = pydicom.dcmread(outputs / "lung-nodules-sr.dcm")
    seg = pydicom.dcmread(outputs / "lung-nodules-seg.dcm")
    tracking = segment_tracking(seg)
    assert len(tracking) == len(lung_run.report["cases"][seed]["nodules"])
    assert sorted(referenced_segments(sr)) == [(seg.SOPInstanceUID, n) for n in sorted(tracking)]
    for item in seg.SegmentSequence:
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"  # Nodule
        assert item.AnatomicRegionSequence[0].CodeValue == "39607008"  # Lung
    for path in (outputs / "lung-nodules-sr.dcm", outputs / "lung-nodules-seg.dcm"):
        assert check_result(path, study_instance_uid=sr.StudyInstanceUID).air_conformant


def test_a_scan_without_nodules_says_absent_and_has_no_seg(lung_run):
    seed = next(i for i, case in enumerate(lung_run.report["cases"]) if not case["nodules"])
    assert lung_run.report["cases"][seed]["false_positives"] == 0
    outputs = lung_run.outputs(seed)
    assert sorted(path.name for path in outputs.glob("*.dcm")) == ["lung-nodules-sr.dcm"]
    sr = pydicom.dcmread(outputs / "lung-nodules-sr.dcm")
    assert check_result(outputs / "lung-nodules-sr.dcm", study_instance_uid=sr.StudyInstanceUID)
    (finding,) = lung_nodules.findings([])
    assert finding.evaluations[0].value.meaning == "Absent"
    assert finding.segment_number is None and not finding.measurements


def test_coarse_images_are_refused(run_on_phantom):
    with pytest.raises(ProductError, match="too coarse for nodule detection"):
        run_on_phantom(lung_nodules.run, "ct-chest", seed=3, size="small")


def test_a_head_ct_has_no_lungs(run_on_phantom):
    head = GridSize(128, 128, 1.8, slices=40, slice_thickness_mm=4.0)
    with pytest.raises(ProductError, match="no lungs found"):
        run_on_phantom(lung_nodules.run, "ct-head", seed=1, size=head)


def test_mr_is_not_read(run_on_phantom):
    with pytest.raises(ProductError, match="no CT image"):
        run_on_phantom(lung_nodules.run, "mr-brain", seed=1, size="small")


def test_manifest_declares_what_it_accepts_needs_and_gives():
    manifest = ProductManifest.model_validate(lung_nodules.manifest("aifi"))
    assert manifest.clinical_area == "diagnostic-support"
    assert manifest.accepts.modalities == ["CT"]
    assert "CHEST" in manifest.accepts.body_parts
    assert manifest.data_needed == []
    assert {output.kind for output in manifest.outputs} == {"sr-tid1500", "seg", "summary-json"}
    assert manifest.priority == "routine"
