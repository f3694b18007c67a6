"""What the gateway tells the exchange of a job's results when it acknowledges the job: said
again as the job ended when an acknowledgement is lost, whatever happened since — the study
gone from the vault, the gateway restarted — never found anew."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from aifi.gateway import service as service_module
from aifi.gateway.config import load_config
from support.hospital import Hospital, acknowledgements_lost
from support.older_state import as_left_by_older_version
from support.restore import until_ended


def _sent(hospital: Hospital) -> str:
    hospital.receive(*hospital.files)
    assert hospital.route() == 1
    [job] = hospital.jobs()
    assert hospital.send_due() == [job["id"]]
    return str(hospital.gateway.state.job(job["id"])["exchange_job_id"])


def _acknowledged_unheard(hospital: Hospital, exchange_id: str) -> None:
    """Brought home, and its acknowledgement lost on the way."""
    passing = hospital.network.handle_request
    acknowledgements_lost(hospital)
    assert hospital.gateway.collect(until_ended(hospital, exchange_id))
    hospital.gateway.acknowledge([exchange_id])
    hospital.network.handle_request = passing  # type: ignore[method-assign]
    assert hospital.gateway.client.job(exchange_id)["acknowledged_at"] is None


def _unfileable_and_unheard(
    hospital: Hospital, exchange_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Brought home with results this gateway cannot read, the acknowledgement lost."""

    def unfileable(*_args: Any, **_kwargs: Any) -> None:
        raise ValueError("a result this gateway cannot read")

    with monkeypatch.context() as patched:
        patched.setattr(service_module, "reidentify_file", unfileable)
        _acknowledged_unheard(hospital, exchange_id)


def test_a_job_filed_is_said_delivered_though_its_study_left_the_vault_before_it_was_heard(
    hospital: Hospital,
) -> None:
    """The exchange unreachable for longer than the study is kept: bringing the job home
    again must not find its study missing and take the results for unfileable."""
    exchange_id = _sent(hospital)
    _acknowledged_unheard(hospital, exchange_id)
    gateway = hospital.gateway
    assert gateway.purge_expired(time.time() + 25 * 3600) == 1  # the study's retention ended

    assert gateway.collect(until_ended(hospital, exchange_id))
    gateway.acknowledge([exchange_id])

    [job] = hospital.jobs()
    assert job["state"] == "delivered", job["reason"]
    held = gateway.client.job(exchange_id)
    assert held["acknowledged_at"] is not None and held["delivery"] == "delivered"


def test_results_that_could_not_be_filed_are_said_so_after_a_restart(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the gateway holds in memory to say goes with a restart: the job's row says it."""

    exchange_id = _sent(hospital)
    _unfileable_and_unheard(hospital, exchange_id, monkeypatch)
    hospital.close()
    hospital.gateway = hospital.open()  # restarted: nothing held in memory

    assert hospital.gateway.collect(until_ended(hospital, exchange_id))
    hospital.gateway.acknowledge([exchange_id])

    [job] = hospital.jobs()
    assert job["state"] == "ended" and "cannot be filed in the PACS" in job["reason"]
    held = hospital.gateway.client.job(exchange_id)
    assert held["acknowledged_at"] is not None and held["delivery"] == "unfileable"


def test_a_job_an_older_version_ended_undelivered_is_said_so_as_it_ended(
    hospital: Hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its state has no column for the reason: the upgrade reads it from the words the job
    ended with. Not said delivered (the radiologist would be told its results are in the
    PACS), and not found anew once its study left the vault (it would be 'unmapped', and
    the vendor's fault never heard of)."""

    exchange_id = _sent(hospital)
    _unfileable_and_unheard(hospital, exchange_id, monkeypatch)
    assert hospital.gateway.purge_expired(time.time() + 25 * 3600) == 1
    hospital.close()
    as_left_by_older_version(
        load_config(hospital.path).workdir / "state.db", "ALTER TABLE jobs DROP COLUMN delivery"
    )
    hospital.gateway = hospital.open()  # the upgrade

    [job] = hospital.jobs()
    assert job["delivery"] == "unfileable"
    assert hospital.gateway.collect(until_ended(hospital, exchange_id))
    hospital.gateway.acknowledge([exchange_id])

    [job] = hospital.jobs()
    assert job["state"] == "ended" and "cannot be filed in the PACS" in job["reason"]
    assert hospital.gateway.client.job(exchange_id)["delivery"] == "unfileable"


def test_an_exchange_that_refuses_the_reason_still_has_the_job_acknowledged(
    hospital: Hospital,
) -> None:
    """An exchange older than the gateway, which does not know a reason it is told: the job
    is acknowledged without saying, not left at the exchange for ever."""
    exchange_id = _sent(hospital)
    hospital.gateway.vault.forget_study(hospital.jobs()[0]["study_uid"])
    passing = hospital.network.handle_request
    refused: list[bytes] = []

    def older_exchange(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jobs/acknowledge" and b"unmapped" in request.content:
            refused.append(request.content)
            return httpx.Response(422, json={"detail": "unknown reason"}, request=request)
        return passing(request)

    hospital.network.handle_request = older_exchange  # type: ignore[method-assign]
    assert hospital.gateway.collect(until_ended(hospital, exchange_id))
    hospital.gateway.acknowledge([exchange_id])

    assert len(refused) == 1
    held = hospital.gateway.client.job(exchange_id)
    assert held["acknowledged_at"] is not None and held["delivery"] is None
    assert hospital.jobs()[0]["delivery"] == "unmapped"  # the hospital's own record keeps it


def test_results_whose_study_left_the_vault_are_said_unmapped_not_the_vendor_s_fault(
    hospital: Hospital,
) -> None:
    exchange_id = _sent(hospital)
    [job] = hospital.jobs()
    hospital.gateway.vault.forget_study(job["study_uid"])  # lost with a restore, say

    assert hospital.gateway.collect(until_ended(hospital, exchange_id))
    hospital.gateway.acknowledge([exchange_id])

    [job] = hospital.jobs()
    assert job["state"] == "ended" and "the vault no longer knows study" in job["reason"]
    assert job["delivery"] == "unmapped"
    assert hospital.gateway.client.job(exchange_id)["delivery"] == "unmapped"
