"""Seeds reproduce studies, identities are parameters, findings are validated, slices stream."""

from __future__ import annotations

import datetime as dt
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from aifi.phantoms import (
    Nodule,
    PatientIdentity,
    PhantomStudy,
    StudyTruth,
    identity_from_seed,
    write_study,
)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.dcm"))}


@pytest.mark.parametrize(
    ("kind", "findings"),
    [
        ("ct-head", {"haemorrhage_ml": 10.0}),
        ("ct-chest", {"nodules": [15.0]}),
        ("mr-brain", {}),
        ("dx-hand", {"fracture": True}),
    ],
)
def test_the_same_seed_writes_the_same_bytes_and_truth(kind, findings, tmp_path):
    first = write_study(kind, tmp_path / "a", seed=7, size="small", **findings)
    second = write_study(kind, tmp_path / "b", seed=7, size="small", **findings)
    assert first == second
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")


def test_different_seeds_give_different_patients_and_uids(tmp_path):
    one = write_study("ct-head", tmp_path / "a", seed=1, size="small")
    two = write_study("ct-head", tmp_path / "b", seed=2, size="small")
    assert one.identity.patient_id != two.identity.patient_id
    assert one.study_instance_uid != two.study_instance_uid
    assert set(one.series[0].sop_instance_uids).isdisjoint(two.series[0].sop_instance_uids)


def test_a_different_patient_with_the_same_seed_gets_new_uids():
    plain = PhantomStudy("ct-head", seed=1, size="small")
    other = PhantomStudy("ct-head", seed=1, size="small", identity={"patient_id": "X1"})
    assert plain.study_instance_uid != other.study_instance_uid
    assert plain.sop_instance_uid(1) != other.sop_instance_uid(1)


def test_identity_fields_can_be_given_and_the_rest_come_from_the_seed(tmp_path):
    truth = write_study(
        "ct-head",
        tmp_path,
        seed=3,
        size="small",
        identity={"institution_name": "Ziekenhuis Test", "patient_id": "HOSP-0042"},
    )
    seeded = identity_from_seed(3, "CT HEAD WITHOUT CONTRAST")
    assert truth.identity.institution_name == "Ziekenhuis Test"
    assert truth.identity.patient_id == "HOSP-0042"
    assert truth.identity.patient_name == seeded.patient_name
    ds = pydicom.dcmread(next(tmp_path.glob("*.dcm")), stop_before_pixels=True)
    assert ds.InstitutionName == "Ziekenhuis Test" and ds.PatientID == "HOSP-0042"


def test_a_full_identity_is_written_as_given(tmp_path):
    who = PatientIdentity(
        patient_id="123",
        patient_name="Visser^Kees",
        birth_date=dt.date(1950, 6, 30),
        sex="M",
        accession_number="ACC1",
        study_date=dt.date(2025, 6, 29),
        study_time=dt.time(8, 5, 0),
        institution_name="Noord",
        referring_physician="Prins^Hanna",
        study_description="CT HERSENEN",
    )
    write_study("ct-head", tmp_path, size="small", identity=who)
    ds = pydicom.dcmread(next(tmp_path.glob("*.dcm")), stop_before_pixels=True)
    assert ds.PatientAge == "074Y"  # the day before the 75th birthday
    assert ds.StudyDescription == "CT HERSENEN" and ds.StudyTime == "080500"


def test_seeded_identities_look_real_and_vary():
    people = [identity_from_seed(seed, "X") for seed in range(40)]
    assert len({p.patient_id for p in people}) == 40
    assert {p.sex for p in people} == {"F", "M"}
    assert all("^" in p.patient_name for p in people)
    assert all(18 <= p.age_at_study() <= 95 for p in people)


def test_unknown_identity_fields_are_refused():
    with pytest.raises(ValueError, match="patient_nmae"):
        PhantomStudy("ct-head", identity={"patient_nmae": "Typo^Tim"})


@pytest.mark.parametrize(
    ("kind", "findings", "rule"),
    [
        ("ct-chest", {"haemorrhage_ml": 10.0}, "haemorrhage applies to ct-head and mr-brain"),
        ("ct-head", {"nodules": [8.0]}, "nodules apply to ct-chest"),
        ("mr-brain", {"fracture": True}, "fracture applies to dx-hand"),
        ("ct-head", {"haemorrhage_ml": 500.0}, "haemorrhage volume must lie in"),
        ("ct-head", {"haemorrhage_ml": 10.0, "haemorrhage_centre_mm": (0.0, 80.0, 0.0)}, "inside"),
        ("ct-chest", {"nodules": [Nodule(10.0, (0.0, 0.0, 0.0))]}, "inside one lung"),
        ("ct-chest", {"nodules": [Nodule(1.0)]}, "nodule diameter must lie in"),
        ("ct-head", {"seed": -1}, "seed must be non-negative"),
    ],
)
def test_findings_that_do_not_fit_are_refused_naming_the_rule(kind, findings, rule):
    with pytest.raises(ValueError, match=rule):
        PhantomStudy(kind, size="small", **findings)


def test_seeded_nodules_keep_clear_of_each_other():
    study = PhantomStudy("ct-chest", seed=5, size="small", nodules=[12.0] * 6)
    centres = np.array([n.centre_mm for n in study.nodules])
    assert len({tuple(c) for c in centres}) == 6
    apart = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=2)
    assert (apart[~np.eye(6, dtype=bool)] >= 14.0).all()  # 12 mm each, 2 mm clear


def test_datasets_streams_one_instance_at_a_time_like_the_files(tmp_path):
    study = PhantomStudy("ct-head", seed=9, size="small")
    assert inspect.isgenerator(study.datasets())
    stream = study.datasets()
    first = next(stream)
    assert int(first.InstanceNumber) == 1
    rest = list(stream)
    assert len(rest) == study.instance_count - 1
    study.write(tmp_path)
    on_disk = pydicom.dcmread(tmp_path / study.filename(1))
    assert on_disk.PixelData == first.PixelData
    assert on_disk.SOPInstanceUID == first.SOPInstanceUID


#: Writes the study in a process of its own and prints its peak of traced memory: tracemalloc
#: counts every thread's allocations, and threads other tests of this worker left running
#: would be counted with the writer's.
_PEAK_OF_WRITING = """
import sys, tracemalloc
from pathlib import Path
from aifi.phantoms import GridSize, PhantomStudy
size = GridSize(rows=128, columns=128, pixel_spacing_mm=1.8, slices=200, slice_thickness_mm=0.75)
tracemalloc.start()
PhantomStudy("ct-head", size=size).write(Path(sys.argv[1]))
print(tracemalloc.get_traced_memory()[1])
"""


def test_writing_never_holds_the_whole_volume_in_memory(tmp_path):
    volume_bytes = 128 * 128 * 200 * 2
    written = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_WRITING, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert written.returncode == 0, written.stderr
    peak = int(written.stdout.strip())
    assert len(list(tmp_path.glob("*.dcm"))) == 200
    assert peak < volume_bytes / 2


def test_truth_round_trips_through_json(tmp_path):
    truth = PhantomStudy("ct-chest", seed=2, size="small", nodules=[18.0]).truth()
    truth.write_json(tmp_path / "truth.json")
    assert StudyTruth.read_json(tmp_path / "truth.json") == truth


def test_truth_without_writing_equals_the_truth_of_writing(tmp_path):
    study = PhantomStudy("ct-head", seed=4, size="small", haemorrhage_ml=8.0)
    assert study.truth() == study.write(tmp_path)
