"""The `notifications:` configuration: the documented example parses, mistakes are refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from aifi.gateway.notify import NotificationSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "notifications.md"


def documented_example() -> dict[str, object]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    example = next(block for block in blocks if block.startswith("notifications:"))
    parsed = yaml.safe_load(example)
    assert isinstance(parsed, dict)
    return parsed


def test_the_documented_example_is_a_valid_configuration() -> None:
    settings = NotificationSettings.model_validate(documented_example()["notifications"])
    assert settings.configured
    assert settings.hl7 is not None and settings.hl7.port == 2575
    assert settings.hl7.processing_id == "P"
    assert settings.fhir is not None and settings.fhir.verify_tls is True
    assert settings.webhook is not None and settings.webhook.only_stat
    assert settings.webhook.secret_file == Path("/etc/aifi/webhook.key")


def test_no_result_notices_are_announced_unless_the_hospital_turns_them_off() -> None:
    assert NotificationSettings().announce_unavailable is True
    documented = NotificationSettings.model_validate(documented_example()["notifications"])
    assert documented.announce_unavailable is True
    off = NotificationSettings.model_validate(
        {"hl7": {"host": "ris", "port": 2575}, "announce_unavailable": False}
    )
    assert off.announce_unavailable is False
    assert off.resolve_paths(Path("/etc/aifi")).announce_unavailable is False
    with pytest.raises(ValidationError, match="announce_unavailable"):
        NotificationSettings.model_validate({"announce_unavailable": "sometimes"})


def test_late_stat_results_are_announced_after_the_products_turnaround_by_default() -> None:
    default = NotificationSettings()
    assert (default.announce_delayed, default.delayed_after_seconds) == (True, None)
    documented = NotificationSettings.model_validate(documented_example()["notifications"])
    assert (documented.announce_delayed, documented.delayed_after_seconds) == (True, 300)
    for wrong in (0, -5, 86_401):  # a delay told at once, or after more than a day: a slip
        with pytest.raises(ValidationError, match="delayed_after_seconds"):
            NotificationSettings.model_validate({"delayed_after_seconds": wrong})


def test_nothing_configured_by_default() -> None:
    assert not NotificationSettings().configured
    assert not NotificationSettings.model_validate({}).configured


def test_relative_files_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    settings = NotificationSettings.model_validate(
        {
            "fhir": {"base_url": "https://fhir.local/fhir", "bearer_token_file": "fhir.token"},
            "webhook": {"url": "https://alerts.local/aifi", "secret_file": "keys/webhook.key"},
        }
    ).resolve_paths(tmp_path)
    assert settings.fhir is not None and settings.webhook is not None
    assert settings.fhir.bearer_token_file == tmp_path / "fhir.token"
    assert settings.webhook.secret_file == tmp_path / "keys" / "webhook.key"


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"hl7": {"host": "ris", "port": 2575, "prot": 1}}, "hl7.prot"),
        ({"hl7": {"host": "ris", "port": 70000}}, "hl7.port"),
        ({"hl7": {"host": "ris", "port": 2575, "processing_id": "X"}}, "hl7.processing_id"),
        ({"hl7": {"host": "ris", "port": 2575, "sending_facility": "A|B"}}, "hl7.sending_facility"),
        ({"fhir": {"base_url": "fhir.local"}}, "fhir.base_url"),
        ({"webhook": {"url": "https://a/b"}}, "webhook"),
    ],
)
def test_mistakes_name_the_key(block: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        NotificationSettings.model_validate(block)
    locations = [".".join(str(p) for p in error["loc"]) for error in caught.value.errors()]
    assert any(location.startswith(field) for location in locations), locations
