"""The gateway's configuration file: a key it does not know is refused by name and place, not
ignored (a mistyped `pacs:` would load as no PACS at all), and a gateway with nowhere to put
results does not start (it would acknowledge every result as delivered, to nobody)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from aifi.cli import app
from aifi.gateway.config import ConfigError, GatewayConfig, load_config
from aifi.gateway.service import Gateway

DOCS = Path(__file__).resolve().parents[2] / "docs"
PACS = {"name": "main", "ae_title": "PACS", "host": "pacs.hospital.local", "port": 104}


def written(folder: Path, **entries: Any) -> Path:
    """A gateway YAML with what every configuration needs, `entries` laid over it (None
    leaves a key out)."""
    config: dict[str, Any] = {
        "hospital": "rivierenland",
        "workdir": str(folder / "workdir"),
        "exchange": {"url": "https://exchange.aifi.example", "api_key": "aifi_unused"},
        "pacs": [PACS],
    }
    config.update(entries)
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in config.items() if v is not None}))
    return path


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        ({"PACS": [PACS], "pacs": None}, "PACS: not a key the gateway knows"),
        ({"pac": [PACS], "pacs": None}, "pac: not a key the gateway knows"),
        ({"dicom": {"quiet_second": 5}}, "dicom.quiet_second: not a key the gateway knows"),
        ({"pacs": [{**PACS, "aet": "PACS2"}]}, "pacs.0.aet: not a key the gateway knows"),
        ({"exchange": {"url": "https://x", "api_keyfile": "k"}}, "exchange.api_keyfile: not a"),
        ({"routes": [{"product": "p", "modality": ["CT"]}]}, "routes.0.modality: not a key"),
    ],
    ids=["PACS", "pac", "dicom.quiet_second", "pacs.aet", "exchange.api_keyfile", "modality"],
)
def test_a_key_the_gateway_does_not_know_is_refused_by_name_and_place(
    tmp_path: Path, entries: dict[str, Any], named: str
) -> None:
    path = written(tmp_path, **entries)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: "), message
    assert named in message, message
    assert "docs/hospital-guide.md, section 3" in message


@pytest.mark.parametrize("pacs", [None, []], ids=["left-out", "empty"])
def test_a_configuration_with_no_pacs_is_refused_saying_what_to_add(
    tmp_path: Path, pacs: list[Any] | None
) -> None:
    with pytest.raises(ConfigError, match=r"pacs: no PACS to deliver results to") as refused:
        load_config(written(tmp_path, pacs=pacs))
    assert "under `pacs` (name, ae_title, host, port)" in str(refused.value)


def test_a_mistyped_pacs_says_both_what_is_unknown_and_what_is_missing(tmp_path: Path) -> None:
    """`PACS:` in place of `pacs:`: the engineer reads the typo and its consequence at once."""
    with pytest.raises(ConfigError) as refused:
        load_config(written(tmp_path, PACS=[PACS], pacs=None))
    message = str(refused.value)
    assert "PACS: not a key the gateway knows" in message
    assert "pacs: no PACS to deliver results to" in message


def test_the_gateway_command_exits_with_the_reason_and_starts_nothing(tmp_path: Path) -> None:
    path = written(tmp_path, pacs=None, PACS=[PACS])
    result = CliRunner().invoke(app, ["gateway", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "PACS: not a key the gateway knows" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "workdir").exists()


def test_a_configuration_copied_past_its_checks_without_a_pacs_does_not_start(
    tmp_path: Path,
) -> None:
    """Whatever way the configuration was made, a gateway never runs with nowhere to
    deliver: it would take every result for delivered."""
    config = load_config(written(tmp_path)).model_copy(update={"pacs": []})
    with pytest.raises(ConfigError, match="no PACS to deliver results to"):
        Gateway(config)
    assert not config.workdir.exists()


def test_the_configuration_in_the_gateway_docs_loads(tmp_path: Path) -> None:
    """docs/gateway.md's example, as an engineer would copy it (the hospital guide's is
    checked with its table, in test_hospital_guide)."""
    [block] = re.findall(r"```yaml\n(.*?)```", (DOCS / "gateway.md").read_text(), re.S)
    example = yaml.safe_load(block)
    config = GatewayConfig.model_validate(example)
    assert [destination.name for destination in config.pacs] == ["main"]
