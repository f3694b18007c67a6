"""`aifi gateway-subscriptions`: the hospital's engineer subscribes the hospital to a product
with the gateway's own key (the exchange takes a subscription from the hospital alone), sees
the subscriptions beside the products its routes send studies to, and `--check` says how when
a route names one the hospital does not subscribe to. Against a real exchange."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aifi.cli import app
from aifi.products import tissue_volume
from support.national import National, gateway_config

pytestmark = pytest.mark.peer

PRODUCT = tissue_volume.PRODUCT_ID


def run(config: Path, *options: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["gateway-subscriptions", "--config", str(config), *options], env={"COLUMNS": "200"}
    )
    return result.exit_code, " ".join(result.output.split())


def row(listed: str) -> list[str]:
    """The product's row in the table: whether its routes send to it, and whether subscribed."""
    cells = listed.split(f"│ {PRODUCT} ", 1)[1].split("│")
    return [cell.strip() for cell in cells[2:4]]


def subscribed(national: National) -> list[str]:
    with national.api() as api:
        return [row["product_id"] for row in api.get("/subscriptions").json() if row["active"]]


def test_the_hospital_subscribes_and_unsubscribes_with_its_gateway_s_key(
    national: National, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, national, 11112, national.pacs().dicom_port)
    code, listed = run(config, "--unsubscribe", PRODUCT)
    assert code == 0, listed
    assert subscribed(national) == []
    assert row(listed) == ["yes", "no: its studies are refused"]

    code, listed = run(config, "--subscribe", PRODUCT)
    assert code == 0, listed
    assert subscribed(national) == [PRODUCT]
    assert row(listed) == ["yes", "yes"]  # its routes send to it, and it subscribes


def test_a_product_the_exchange_does_not_know_is_refused_by_name(
    national: National, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, national, 11112, national.pacs().dicom_port)
    code, said = run(config, "--subscribe", "no-such-product")
    assert code == 1
    assert "no-such-product" in said and "Traceback" not in said
    assert subscribed(national) == [PRODUCT]


def test_check_says_how_to_subscribe(national: National, tmp_path: Path) -> None:
    config = gateway_config(tmp_path, national, 11112, national.pacs().dicom_port)
    assert run(config, "--unsubscribe", PRODUCT)[0] == 0
    settings = yaml.safe_load(config.read_text())
    settings["workdir"] = str(tmp_path / "fresh")
    config.write_text(yaml.safe_dump(settings))
    checked = CliRunner().invoke(
        app, ["gateway", "--config", str(config), "--check"], env={"COLUMNS": "250"}
    )
    said = " ".join(checked.output.split())
    assert checked.exit_code == 1
    assert f"aifi gateway-subscriptions --config … --subscribe {PRODUCT}" in said, said
