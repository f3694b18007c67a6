"""Ended exchange jobs of this hospital that its gateway has no record of, and what the
hospital decides for each.

After a restore from a backup, the exchange may hold jobs the lost disk made that the
restored gateway never links (a round it then skips, a study not sent again), and a hospital
with two gateways on one account sees the other's. The gateway leaves them unacknowledged and
names them in its journal. Here the hospital sees them, with the patient and study the vault
knows them by, and decides: adopt one (its results come home to the PACS as any job's do) or
let it go (acknowledged unbrought). The gateway, running or at its next start, does what was
decided when it next meets the job (`Gateway.collect`); the command itself writes nothing but
the decision, so that one code path brings results home.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aifi.gateway.config import GatewayConfig
from aifi.gateway.exchange_client import ENDED_PAGE, GatewayClient
from aifi.gateway.state import DecidedAlready, decide_unknown_jobs, unknown_job_records
from aifi.gateway.vault import Vault
from aifi.gateway.workdir_reads import databases_in_place

#: A job is decided for once it ended this long ago: a hospital running a second gateway on
#: its account would see that gateway's jobs listed here for the moments between their end and
#: their coming home (seconds; longer while that gateway restarts), and must not take them.
DECIDE_AFTER_SECONDS = 3600.0


class UnknownJobsError(Exception):
    """The decision cannot be taken as asked; the message says why and what to do."""


@dataclass(frozen=True)
class UnknownJob:
    """An ended exchange job this gateway has no record of."""

    exchange_job_id: str
    product_id: str
    state: str
    ended_at: str
    instances: int
    #: The hospital's own Study Instance UID, Patient ID and accession number, when the vault
    #: knows the study (the job can be adopted); None otherwise.
    study_uid: str | None
    patient_id: str | None
    accession_number: str | None
    #: What the hospital decided, not done yet (adopt | let_go), and why not yet.
    decision: str | None
    note: str


@contextmanager
def _workdir(config: GatewayConfig) -> Iterator[tuple[Path, Path]]:
    """The gateway's state and vault, as `databases_in_place` lets them be read."""
    with databases_in_place(config.workdir, ("state.db", "vault.db"), UnknownJobsError) as (
        state,
        vault,
    ):
        yield state, vault


def unknown_jobs(config: GatewayConfig, client: GatewayClient | None = None) -> list[UnknownJob]:
    """The ended exchange jobs of this hospital, not acknowledged, that the gateway has no
    record of, oldest first."""
    own = client is None
    exchange = client or GatewayClient.connecting(config.exchange)
    try:
        ended, after = [], None
        while True:  # every page: the unknown jobs may sit behind any number of others
            page = exchange.ended_jobs(wait=0, after=after)
            ended += page
            if len(page) < ENDED_PAGE:
                break
            after = str(page[-1]["id"])
    finally:
        if own:
            exchange.close()
    with _workdir(config) as (state, vault_path):
        known, decided = unknown_job_records(state, [str(job["id"]) for job in ended])
        vault = Vault(vault_path)
        try:
            found = []
            for job in ended:
                exchange_id = str(job["id"])
                if exchange_id in known:
                    continue
                study = vault.study(str(job["study_uid"]))
                decision, note = decided.get(exchange_id), ""
                if decision is not None and decision["settled_at"] is None:
                    note = str(decision["note"])
                elif decision is not None and decision["decision"] == "let_go":
                    note = "done; its acknowledgement has not reached the exchange yet"
                found.append(
                    UnknownJob(
                        exchange_job_id=exchange_id,
                        product_id=str(job["product_id"]),
                        state=str(job["state"]),
                        ended_at=str(job.get("ended_at") or ""),
                        instances=int(job["input_count"]),
                        study_uid=study[0] if study else None,
                        patient_id=str(study[1].get("PatientID", "")) if study else None,
                        accession_number=(
                            str(study[1].get("AccessionNumber", "")) if study else None
                        ),
                        decision=None if decision is None else str(decision["decision"]),
                        note=note,
                    )
                )
        finally:
            vault.close()
    return found


def _ended_ago(job: UnknownJob) -> float:
    """Seconds since the job ended, by the exchange's clock (UTC)."""
    if not job.ended_at:
        return 0.0
    ended = datetime.fromisoformat(job.ended_at)
    ended = ended if ended.tzinfo else ended.replace(tzinfo=UTC)
    return (datetime.now(UTC) - ended).total_seconds()


def decide(
    config: GatewayConfig,
    *,
    adopt: list[str],
    let_go: list[str],
    by: str,
    client: GatewayClient | None = None,
) -> list[UnknownJob]:
    """Record the hospital's decisions (`by` whom) for these unknown exchange jobs, for the
    gateway to do; returns the jobs decided for. Refused whole, with nothing recorded, when
    one is not an unknown ended job of this hospital, is named twice, or is to be adopted
    while the vault does not know its study (send the study again from the PACS first)."""
    twice = set(adopt) & set(let_go)
    if twice:
        raise UnknownJobsError(f"both adopted and let go: {', '.join(sorted(twice))}")
    found = {job.exchange_job_id: job for job in unknown_jobs(config, client)}
    missing = [job for job in [*adopt, *let_go] if job not in found]
    if missing:
        raise UnknownJobsError(
            f"not an ended job of this hospital that the gateway has no record of: "
            f"{', '.join(missing)} (it may be known, acknowledged already, or not ended yet)"
        )
    recent = [job for job in [*adopt, *let_go] if _ended_ago(found[job]) < DECIDE_AFTER_SECONDS]
    if recent:
        raise UnknownJobsError(
            f"ended less than {DECIDE_AFTER_SECONDS / 60:.0f} minutes ago: {', '.join(recent)}; "
            "another gateway of the hospital's may still bring it home: decide once that "
            "time has passed"
        )
    unmappable = [job for job in adopt if found[job].study_uid is None]
    if unmappable:
        raise UnknownJobsError(
            f"the vault does not know the study of {', '.join(unmappable)}, so its results "
            "cannot be mapped back to the patient: send the study again from the PACS and "
            "run this again, or let the job go"
        )
    decisions = {job: "adopt" for job in adopt} | {job: "let_go" for job in let_go}
    with _workdir(config) as (state, _vault):
        try:
            decide_unknown_jobs(state, decisions, by)
        except DecidedAlready as exc:
            raise UnknownJobsError(str(exc)) from exc
    return [found[job] for job in decisions]
