"""Ended jobs the gateway cannot bring home yet — jobs it does not know (its state restored
from an older backup), results a PACS keeps refusing — must neither hide a new result behind
them nor hold it back until their retries come round."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifi.gateway.exchange_client import ENDED_PAGE
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from support.national import National, started_gateway
from support.peers import storescu


@pytest.mark.peer
def test_a_page_of_jobs_the_gateway_cannot_bring_home_holds_back_no_result(
    national: National, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unknown = ENDED_PAGE + 1  # more than one page of them, oldest first in the listing
    with national.api() as api:
        for n in range(unknown):
            job = api.post(
                "/jobs",
                json={
                    "product_id": tissue_volume.PRODUCT_ID,
                    "study_uid": f"2.25.{n + 1}",
                    "patient_pseudonym": "PSEUDO",
                    "idempotency_key": f"before-the-backup-{n}",
                },
            )
            job.raise_for_status()
            api.post(
                f"/jobs/{job.json()['id']}/cancel", json={"reason": "sent twice"}
            ).raise_for_status()
    write_study("ct-head", tmp_path / "study", seed=3, size="small")

    with started_gateway(tmp_path, national) as gateway:
        # The gateway has met every one of them, and waits five minutes to look at them again.
        assert gateway.wait_until(
            lambda: caplog.text.count("is not one this gateway knows") >= unknown, timeout=30
        ), caplog.text[-2000:]
        storescu(sorted((tmp_path / "study").rglob("*.dcm")), gateway.port)
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] == ["delivered"], timeout=60
        ), gateway.jobs()
    with national.api() as api:
        left = api.get(
            "/jobs", params={"acknowledged": "false", "state": "cancelled", "limit": 1000}
        ).json()
    assert len(left) == unknown, "jobs the gateway does not know are left for their own"
