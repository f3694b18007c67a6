"""A record of processing lists a hospital's routing rules (its modalities' AE titles, what it
sends where): it is read by that hospital, for its DPIA, and by the operator; not by a vendor,
nor by another hospital."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.pillar import Pillar, pillar_exchange, tissue_manifest


@pytest.fixture
def pillar(tmp_path: Path) -> Iterator[Pillar]:
    with pillar_exchange(tmp_path) as exchange:
        yield exchange


def test_a_record_of_processing_is_its_hospital_s_and_the_operator_s(pillar: Pillar) -> None:
    manifest = tissue_manifest()
    with pillar.api("aifi-reference") as vendor:
        assert vendor.post("/products", json=manifest).status_code == 201
        path = f"/products/{manifest['id']}/record-of-processing"
        refused = vendor.get(path, params={"hospital": "hospital-a"})
        assert refused.status_code == 403, refused.text
    with pillar.api("hospital-a") as hospital:
        own = hospital.get(path)
        assert own.status_code == 200 and own.json()["hospital_id"] == "hospital-a"
    with pillar.api("hospital-b") as other:
        assert other.get(path, params={"hospital": "hospital-a"}).status_code == 404
    with pillar.api("operator") as operator:
        assert operator.get(path, params={"hospital": "hospital-a"}).status_code == 200
