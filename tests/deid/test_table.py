"""Table E.1-1 as shipped data, option resolution and the conditional actions."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from aifi.dicom.deid import OPTION_NAMES, DeidOptions
from aifi.dicom.deid.iod import (
    TYPES_RESOURCE,
    build_iod_attribute_types,
    conditional_action,
    iod_attribute_types,
)
from aifi.dicom.deid.table import SUPPLEMENT, Action, load_table, parse_rows


def test_whole_table_ships_with_its_licence() -> None:
    data = resources.files("aifi.dicom.deid").joinpath("data")
    assert "MIT" in data.joinpath("annex-e-table-e1-1.LICENSE.txt").read_text("utf-8") or (
        "Permission is hereby granted"
        in data.joinpath("annex-e-table-e1-1.LICENSE.txt").read_text()
    )
    shipped = json.loads(data.joinpath("annex-e-table-e1-1.json").read_text("utf-8"))
    table = parse_rows(shipped)
    assert len(table.rows) == 621
    # The Basic Profile counts of the 2024b edition (PS3.15 Table E.1-1).
    assert Counter(row.basic.value for row in table.rows) == {
        "X": 384,
        "D": 92,
        "U": 54,
        "Z": 42,
        "X/D": 22,
        "X/Z": 11,
        "X/Z/D": 8,
        "Z/D": 6,
        "X/Z/U*": 2,
    }


def test_what_the_edition_leaves_unlisted_and_names_a_patient_is_removed() -> None:
    """Unlisted standard attributes are kept; these date or describe the patient as the
    listed Patient's Birth Date and Ethnic Group do, and are removed as theirs are."""
    table = load_table()
    assert len(table.rows) == 621 + len(SUPPLEMENT) == 624
    for tag in (0x00100033, 0x00100034, 0x00102161):
        assert table.by_tag[tag].basic is Action.X
    assert table.by_tag[0x00102161].action_for({"retain-patient-characteristics"}) is Action.K


def test_every_option_column_is_read() -> None:
    table = load_table()
    columns = Counter(option for row in table.rows for option in row.by_option)
    assert columns == {
        "retain-long-full-dates": 165,
        "retain-long-modified-dates": 165,
        "clean-descriptors": 125,
        "retain-uids": 59,
        "retain-device-identity": 57,
        "retain-patient-characteristics": 14,  # 13 and the supplement's Ethnic Group Code
        "retain-institution-identity": 10,
        "clean-graphics": 4,
        "clean-structured-content": 3,
        "retain-safe-private": 1,
    }


def test_unknown_action_code_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(0010,0010\)"):
        parse_rows([{"name": "Patient's Name", "tag": "(0010,0010)", "basicProfile": "Q"}])


def test_option_overrides_basic_profile_and_clean_beats_keep() -> None:
    rows = {row.name: row for row in load_table().rows}
    sex = rows["Patient's Sex"]
    assert sex.action_for(frozenset()) is Action.Z
    assert sex.action_for({"retain-patient-characteristics"}) is Action.K
    calibration = rows["Date of Last Calibration"]
    assert calibration.action_for({"retain-device-identity"}) is Action.K
    assert (
        calibration.action_for({"retain-device-identity", "retain-long-modified-dates"}) is Action.C
    )


@pytest.mark.parametrize(
    ("action", "attribute_type", "expected"),
    [
        (Action.Z_D, "1", Action.D),
        (Action.Z_D, "2", Action.Z),
        (Action.Z_D, "3", Action.Z),
        (Action.X_Z, "2", Action.Z),
        (Action.X_Z, "3", Action.X),
        (Action.X_D, "1C", Action.D),
        (Action.X_D, "3", Action.X),
        (Action.X_Z_D, "1", Action.D),
        (Action.X_Z_D, "2C", Action.Z),
        (Action.X_Z_D, "3", Action.X),
        (Action.X_Z_U, "1", Action.U),
        (Action.X_Z_U, "2", Action.Z),
        (Action.X_Z_U, "3", Action.X),
        (Action.X_Z_D, None, Action.Z),
        (Action.X_D, None, Action.D),
        (Action.K, "1", Action.K),
    ],
)
def test_conditional_actions_follow_the_attribute_type(
    action: Action, attribute_type: str | None, expected: Action
) -> None:
    assert conditional_action(action, attribute_type, "LO") is expected


def test_iod_types_come_from_the_standard() -> None:
    ct = iod_attribute_types("1.2.840.10008.5.1.4.1.1.2")
    assert ct is not None
    assert ct[0x00100020] == "2"  # Patient ID is Type 2 in the Patient module
    assert ct[0x00080080] == "3"  # Institution Name is Type 3 in General Equipment
    assert iod_attribute_types("1.2.3.4.unknown") is None


def test_shipped_iod_types_match_a_rebuild() -> None:
    shipped = json.loads(
        resources.files("aifi.dicom.deid").joinpath("data", TYPES_RESOURCE).read_text("utf-8")
    )
    assert shipped == build_iod_attribute_types()


def test_options_are_validated() -> None:
    assert set(OPTION_NAMES) == {
        "retain-safe-private",
        "retain-uids",
        "retain-device-identity",
        "retain-institution-identity",
        "retain-patient-characteristics",
        "retain-long-full-dates",
        "retain-long-modified-dates",
        "clean-descriptors",
        "clean-structured-content",
        "clean-graphics",
        "clean-pixel-data",
        "clean-recognizable-visual-features",
    }
    assert OPTION_NAMES["retain-safe-private"] == "113111"
    with pytest.raises(ValueError, match="retain-everything"):
        DeidOptions({"retain-everything"})
    with pytest.raises(ValueError, match="exclude each other"):
        DeidOptions({"retain-long-full-dates", "retain-long-modified-dates"})
