"""Pseudonymise one job's instances with the product's options and send them to the exchange.

Each instance is pseudonymised and uploaded in a small pool of threads (the header work and
the HTTP transfer overlap). Pseudonyms are keyed hashes, so a retry after a crash produces the
same files and the same UIDs, and the exchange's keyed uploads store each instance once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifi.dicom.deid import Deidentifier, DeidError, DeidRefused, DeidResult
from aifi.dicom.pseudonym import PseudonymKey
from aifi.gateway.vault import Vault


@dataclass
class PreparedStudy:
    """What was sent: the study's pseudonym, and what was left out and why."""

    study_uid: str = ""
    patient_pseudonym: str = ""
    sent: int = 0
    #: Instances uploaded by this call (fewer than `sent` when a retry found some stored).
    uploaded: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # original SOP UID -> reason


class Halted(Exception):
    """This attempt at the job goes no further (its pseudonymised copies are dropped): the
    exchange's job stands as an earlier attempt opened it, another job sent the same, or the
    exchange's job holds instances this one no longer sends."""


class AlreadyOpen(Halted):
    """The exchange's job for this round was opened by an earlier attempt, with the instances
    the study had then: nothing is to be uploaded to it any more."""


class NothingNew(Halted):
    """The job was skipped: another job of its study took the same instances for its product
    (`GatewayState.skip_if_sent_before`); the message is the reason on record."""


def stray_inputs_reason(exchange_job_id: str) -> str:
    """Why the gateway cancels an exchange job holding stray inputs: the reason the exchange
    keeps, by which the gateway knows the job again (`Gateway.collect`)."""
    return (
        f"exchange job {exchange_job_id} holds instances no longer in the study (moved to "
        "another study since an earlier attempt sent them)"
    )


class StrayInputs(Halted):
    """The exchange's job, not opened yet, holds instances this job no longer sends: an
    earlier attempt uploaded them, and the PACS has since moved them to another study. The
    job must not open with them (a product would read them as this study's), nor wait for
    ever for the count it was given; `held`: how many instances the exchange's job holds."""

    def __init__(self, exchange_job_id: str, held: int) -> None:
        super().__init__(stray_inputs_reason(exchange_job_id))
        self.exchange_job_id = exchange_job_id
        self.held = held


class NothingToSend(Exception):
    """Every instance of the job was refused; the message says why (for the hospital)."""


def _merge(results: Iterable[DeidResult]) -> dict[str, str]:
    uid_map: dict[str, str] = {}
    for result in results:
        uid_map.update(result.uid_map)
    return uid_map


def pseudonymise_and_send(
    *,
    key: PseudonymKey,
    vault: Vault,
    instances: Sequence[Mapping[str, Any]],
    options: frozenset[str],
    clean_pixel_regions: list[tuple[int, int, int, int]] | None,
    outbox: Path,
    threads: int,
    open_job: Callable[[str, str, list[Mapping[str, Any]]], str],
    already_uploaded: Callable[[str], set[str]],
    upload: Callable[[str, str, Path], None],
) -> tuple[str, PreparedStudy]:
    """Pseudonymise `instances`, create the job, upload.

    `open_job(study, patient, sending) -> job id` is told which instances will be sent (their
    rows of `instances`): those that were not refused on the way.

    The vault learns every mapping before this returns, and before the caller marks the job
    ready, so no result can come back that the vault cannot re-identify.
    """
    engine = Deidentifier(key, options=options, clean_pixel_regions=clean_pixel_regions)
    outbox.mkdir(parents=True, exist_ok=True)
    prepared = PreparedStudy()

    def pseudonymise(row: Mapping[str, Any]) -> tuple[Mapping[str, Any], DeidResult | str, Path]:
        target = outbox / f"{row['sop_instance_uid']}.dcm"
        try:
            return row, engine.deidentify_file(Path(row["path"]), target), target
        except (DeidRefused, DeidError) as exc:
            return row, str(exc), target

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="deid") as pool:
        done = list(pool.map(pseudonymise, instances))
        results = [(row, res, path) for row, res, path in done if isinstance(res, DeidResult)]
        for row, res, _path in done:
            if isinstance(res, str):
                prepared.refused[row["sop_instance_uid"]] = res
        if not results:
            reasons = sorted(set(prepared.refused.values()))
            raise NothingToSend("no instance could be sent: " + "; ".join(reasons))
        first = results[0][1]
        assert isinstance(first, DeidResult)
        original_study = str(results[0][0]["study_uid"])
        prepared.study_uid = first.uid_map.get(original_study, original_study)
        prepared.patient_pseudonym = first.patient_pseudonym
        vault.remember(
            _merge(res for _row, res, _path in results if isinstance(res, DeidResult)),
            original_study_uid=original_study,
            pseudonym_study_uid=prepared.study_uid,
            patient_pseudonym=first.patient_pseudonym,
            original_attributes=first.original_patient,
        )
        sending = [row for row, _res, _path in results]
        try:
            job_id = open_job(prepared.study_uid, prepared.patient_pseudonym, sending)
            present = already_uploaded(job_id)
            pseudonyms = {
                res.uid_map[str(row["sop_instance_uid"])]
                for row, res, _path in results
                if isinstance(res, DeidResult)
            }
            if present - pseudonyms:
                raise StrayInputs(job_id, len(present))
        except Halted:
            shutil.rmtree(outbox, ignore_errors=True)
            raise

        def send(item: tuple[Mapping[str, Any], DeidResult | str, Path]) -> bool:
            row, res, path = item
            assert isinstance(res, DeidResult)
            pseudo_uid = res.uid_map[str(row["sop_instance_uid"])]
            if pseudo_uid in present:
                return False
            upload(job_id, pseudo_uid, path)
            return True

        prepared.uploaded = sum(pool.map(send, results))
    prepared.sent = len(results)
    shutil.rmtree(outbox, ignore_errors=True)
    return job_id, prepared
