"""Validation of business-case YAML: every problem is reported with the YAML path to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aifi.business.loading import BusinessCaseError, load_case, parse_case, shipped_examples
from aifi.business.model import iter_quantities

from .conftest import q


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(BusinessCaseError) as caught:
        parse_case(data)
    return caught.value.problems


def test_the_tiny_case_is_valid_and_every_quantity_knows_its_path(tiny: dict[str, Any]) -> None:
    case = parse_case(tiny)
    paths = {path: quantity.path for path, quantity in iter_quantities(case)}
    assert all(path == assigned for path, assigned in paths.items())
    assert "hospitals[h2].exams_per_year.radiograph" in paths
    assert "applications[xr].licence.tiers[1].price" in paths
    assert "applications[xr].downstream[beds].unit_value" in paths


def test_missing_source_names_the_path(tiny: dict[str, Any]) -> None:
    del tiny["hospitals"][1]["exams_per_year"]["radiograph"]["source"]
    assert problems(tiny) == ["hospitals[h2].exams_per_year.radiograph.source: Field required"]


@pytest.mark.parametrize("placeholder", ["", "TBD", "todo", "?", "  n/a "])
def test_placeholder_sources_are_refused(tiny: dict[str, Any], placeholder: str) -> None:
    tiny["radiologist_cost_per_hour"]["source"] = placeholder
    (problem,) = problems(tiny)
    assert problem.startswith("radiologist_cost_per_hour: source must say where")


def test_wrong_unit_names_the_path_and_the_expected_unit(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["uptake"]["unit"] = "%"
    assert problems(tiny) == ["applications[xr].uptake: unit must be 'fraction' (got '%')"]


def test_a_yearly_cost_typed_as_one_off_is_caught(tiny: dict[str, Any]) -> None:
    tiny["procurement"]["local"]["governance"]["unit"] = "EUR"
    (problem,) = problems(tiny)
    assert problem.startswith("procurement.local.governance: unit must be 'EUR/year'")


def test_fraction_above_one_is_refused(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["eligible_share"]["value"] = 1.5
    (problem,) = problems(tiny)
    assert problem.startswith("applications[xr].eligible_share: value 1.5 fraction lies outside")


def test_distribution_must_contain_the_base_value(tiny: dict[str, Any]) -> None:
    tiny["radiologist_cost_per_hour"]["distribution"] = {
        "kind": "triangular",
        "low": 190,
        "high": 200,
    }
    (problem,) = problems(tiny)
    assert problem.startswith("radiologist_cost_per_hour: value 180.0 lies outside")


def test_distribution_fields_are_checked_with_their_path(tiny: dict[str, Any]) -> None:
    tiny["radiologist_cost_per_hour"]["distribution"] = {"kind": "normal", "sd": -1}
    (problem,) = problems(tiny)
    assert problem.startswith("radiologist_cost_per_hour.distribution.sd:")


def test_horizon_cannot_be_uncertain(tiny: dict[str, Any]) -> None:
    tiny["horizon"]["distribution"] = {"kind": "uniform", "low": 2, "high": 4}
    assert problems(tiny) == ["horizon: this input cannot carry a distribution"]


def test_unknown_fields_are_typos_not_silently_ignored(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["uptak"] = q(0.5, "fraction")
    assert problems(tiny) == ["applications[xr].uptak: Extra inputs are not permitted"]


def test_tiers_must_start_at_zero_and_rise(tiny: dict[str, Any]) -> None:
    tiers = tiny["applications"][0]["licence"]["tiers"]
    tiers[1]["from_volume"]["value"] = 0
    (problem,) = problems(tiny)
    assert problem == (
        "applications[xr].licence: tiers[1].from_volume 0 must exceed tiers[0].from_volume 0"
    )


def test_tier_price_unit_must_match_the_licence_model(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["licence"]["model"] = "per_year"
    (problem,) = problems(tiny)
    assert "tiers[0].price: unit must be 'EUR/hospital/year'" in problem


def test_downstream_units_must_chain(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["downstream"][0]["unit_value"]["unit"] = "EUR/day"
    (problem,) = problems(tiny)
    assert problem.startswith("applications[xr].downstream[beds]: unit_value: unit must be")


def test_scenario_references_are_checked(tiny: dict[str, Any]) -> None:
    tiny["scenarios"][0]["applications"] = ["ct-app"]
    (problem,) = problems(tiny)
    assert "scenarios[national-central-joint].applications: unknown application 'ct-app'" in problem


def test_application_needs_the_modality_in_every_hospital(tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["modality"] = "ct"
    (problem,) = problems(tiny)
    assert "hospitals[h1].exams_per_year: no 'ct' volume" in problem


def test_every_problem_is_listed_at_once(tiny: dict[str, Any]) -> None:
    del tiny["horizon"]["unit"]
    tiny["hospitals"][0]["exams_per_year"]["radiograph"]["value"] = -5
    found = problems(tiny)
    assert "horizon.unit: Field required" in found
    assert any(p.startswith("hospitals[h1].exams_per_year.radiograph: value -5") for p in found)


def test_load_case_reads_a_file_and_reports_bad_yaml(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(BusinessCaseError) as caught:
        load_case(broken)
    assert caught.value.origin == str(broken)
    assert caught.value.problems[0].startswith("not valid YAML")


def test_unknown_case_name_lists_the_shipped_examples() -> None:
    assert "netherlands-pilot" in shipped_examples()
    with pytest.raises(BusinessCaseError) as caught:
        load_case("no-such-case")
    assert "netherlands-pilot" in caught.value.problems[0]
