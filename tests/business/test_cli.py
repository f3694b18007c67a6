"""`aifi business-case` end to end: tables printed, HTML with charts, JSON with every figure."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from aifi.business.analysis import analyse
from aifi.business.cli import app
from aifi.business.engine import evaluate
from aifi.business.loading import load_case, parse_case

from .conftest import OPERATOR_KEY

WIDE = {"COLUMNS": "200", "AIFI_API_KEY": ""}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={**WIDE, **(env or {})})


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("report")
    html, data = folder / "report.html", folder / "report.json"
    result = run("netherlands-pilot", "--html", str(html), "--json", str(data), "--draws", "2000")
    assert result.exit_code == 0, result.output
    return result, html.read_text("utf-8"), json.loads(data.read_text("utf-8"))


def test_tables_are_printed(example_run: tuple[Any, str, dict[str, Any]]) -> None:
    result, _, _ = example_run
    output = result.output
    for title in (
        "Scenarios side by side",
        "Comparisons",
        "Each application alone",
        "Cost per hospital by size",
        "Licence prices reached",
        "Inputs that move the NPV most",
        "Exams per year sent to each application",
    ):
        assert title in output
    case = load_case("netherlands-pilot")
    for scenario in case.scenarios:
        assert scenario.id in output
    assert "P(NPV > 0)" in output
    # Input paths in the tornado keep their brackets (rich must not read them as markup).
    assert "applications[fracture]" in output


def test_html_report_embeds_the_three_charts_as_png(
    example_run: tuple[Any, str, dict[str, Any]],
) -> None:
    _, html, _ = example_run
    images = re.findall(
        r'<img class="chart" alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html
    )
    assert [alt for alt, _ in images] == [
        "Cumulative discounted cash flow per scenario",
        "Tornado chart",
        "Cost per exam against volume",
    ]
    for _, encoded in images:
        png = base64.b64decode(encoded)
        assert png.startswith(PNG_SIGNATURE)
        assert len(png) > 10_000  # a drawn chart, not an empty canvas


def test_html_report_lists_every_input_with_its_source(
    example_run: tuple[Any, str, dict[str, Any]],
) -> None:
    _, html, data = example_run
    assert html.count("<code>", html.index('id="table-inputs"')) == len(data["inputs"])
    assert "CGR maximum reasonable hourly fee" in html
    assert 'id="table-scenarios"' in html


def test_json_holds_every_figure(example_run: tuple[Any, str, dict[str, Any]]) -> None:
    _, _, data = example_run
    case = load_case("netherlands-pilot")
    assert [s["scenario"]["id"] for s in data["scenarios"]] == [s.id for s in case.scenarios]
    assert len(data["single_application"]) == 3
    for result in data["scenarios"] + data["single_application"]:
        metrics = result["metrics"]
        for key in ("npv", "roi", "payback_year", "cost_per_exam", "pv_costs", "pv_benefits"):
            assert key in metrics
        assert (
            metrics["break_even_exams_per_hospital"] is None
            or metrics["break_even_exams_per_hospital"] > 0
        )
        assert len(metrics["cash_flows"]) == int(case.horizon.value) + 1
        assert 0 <= result["monte_carlo"]["probability_positive"] <= 1
        assert result["tornado"]["bars"]
        assert len(result["hospitals"]) == 5
        assert result["size_classes"]
        assert result["lines"] and all(line["inputs"] for line in result["lines"])
        assert len(result["cost_curve"]["cost_per_exam"]) == len(
            result["cost_curve"]["exams_per_hospital"]
        )
    assert all(item["source"] for item in data["inputs"])
    assert data["monte_carlo"] == {"draws": 2000, "seed": 2025}
    assert {v["origin"] for v in data["volumes"]} == {"assumed"}
    assert data["metering"] is None


def test_json_figures_are_the_engines(example_run: tuple[Any, str, dict[str, Any]]) -> None:
    _, _, data = example_run
    case = load_case("netherlands-pilot")
    for result in data["scenarios"]:
        scenario = case.scenario(result["scenario"]["id"])
        outcome = evaluate(case, scenario)
        assert result["metrics"]["npv"] == pytest.approx(float(outcome.npv()[0]))
        lines_total = sum(line["amount"] for line in result["lines"] if line["timing"] == "one-off")
        assert result["metrics"]["one_off_costs"] == pytest.approx(lines_total)


def test_same_seed_same_probabilities(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for target in (first, second):
        assert (
            run(
                "netherlands-pilot", "--json", str(target), "--draws", "500", "--seed", "9"
            ).exit_code
            == 0
        )
    a, b = (json.loads(p.read_text("utf-8")) for p in (first, second))
    assert [s["monte_carlo"] for s in a["scenarios"]] == [s["monte_carlo"] for s in b["scenarios"]]
    expected = analyse(load_case("netherlands-pilot"), draws=500, seed=9)
    assert a["scenarios"][0]["monte_carlo"]["probability_positive"] == pytest.approx(
        expected.scenarios[0].monte_carlo.probability_positive
    )


def test_a_yaml_file_path_works(tmp_path: Path, tiny: dict[str, Any]) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny), encoding="utf-8")
    out = tmp_path / "tiny.json"
    result = run(str(path), "--json", str(out), "--draws", "10")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text("utf-8"))
    assert data["scenarios"][0]["metrics"]["npv"] == pytest.approx(52_021.41, abs=0.01)


def test_a_broken_case_exits_2_naming_the_yaml_path(tmp_path: Path, tiny: dict[str, Any]) -> None:
    tiny["applications"][0]["uptake"]["unit"] = "percent"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(tiny), encoding="utf-8")
    result = run(str(path))
    assert result.exit_code == 2
    assert "applications[xr].uptake: unit must be 'fraction'" in result.output


def test_bad_month_is_refused() -> None:
    result = run("netherlands-pilot", "--since", "2025-13")
    assert result.exit_code == 2
    assert "--since must be a month" in result.output


def test_from_exchange_uses_metered_volumes(
    tmp_path: Path, tiny: dict[str, Any], fake_exchange: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = fake_exchange
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny), encoding="utf-8")
    out, html = tmp_path / "metered.json", tmp_path / "metered.html"
    result = run(
        str(path), "--from-exchange", url, "--since", "2025-01", "--json", str(out),
        "--html", str(html), "--draws", "10", env={"AIFI_API_KEY": OPERATOR_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen[0]["since"] == "2025-01"
    assert "(metered)" in result.output
    assert "Metering used" in result.output
    data = json.loads(out.read_text("utf-8"))
    volumes = {(v["hospital"], v["application"]): v for v in data["volumes"]}
    assert volumes[("h1", "xr")]["origin"] == "metered"
    assert volumes[("h1", "xr")]["exams_per_year"] == pytest.approx(600)
    assert data["metering"]["source"] == f"{url}/metering"
    assert "× 12" in data["metering"]["annualisation"]
    assert OPERATOR_KEY not in out.read_text("utf-8")
    page = html.read_text("utf-8")
    assert '<span class="metered">metered</span>' in page
    assert "Annualisation" in page and OPERATOR_KEY not in page
    # The scenario's figures are those of the case with the metered volumes.
    expected = parse_case(tiny)
    assert data["scenarios"][0]["metrics"]["exams_per_year"] != pytest.approx(
        evaluate(expected, expected.base).exams_per_year()[0]
    )


def test_from_exchange_with_a_wrong_key_fails_clearly(
    fake_exchange: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = fake_exchange
    result = run("netherlands-pilot", "--from-exchange", url, "--api-key", "not-the-key-123")
    assert result.exit_code == 1
    assert "401" in result.output
    assert "not-the-key-123" not in result.output


def test_from_exchange_needs_a_key() -> None:
    result = run("netherlands-pilot", "--from-exchange", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "--api-key" in result.output
