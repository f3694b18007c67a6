"""The gateway's count of eligible studies, the denominator of a product's uptake, counts
studies as the exchange's volume does: once a month for a product, however many rounds."""

from __future__ import annotations

from pathlib import Path

from aifi.gateway.state import GatewayState, ReceivedInstance, RoutedJob
from aifi.governance.evaluation import EligibleCount, JobRecord, evaluate

STUDY = "1.2.826.0.1.3680043.10.1.2"


def _received(state: GatewayState, folder: Path, sop: str) -> None:
    path = folder / STUDY / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 10)
    state.record_instance(
        ReceivedInstance(
            sop_instance_uid=sop, study_uid=STUDY, series_uid=f"{STUDY}.1", sop_class_uid="1.2",
            modality="CT", body_part="HEAD", study_description="", series_description="",
            path=path, size=10, calling_ae="PACS",
        ),
        quiet_seconds=0,
    )  # fmt: skip


def _routed(state: GatewayState) -> None:
    [study] = state.query("SELECT round, due_at FROM studies")
    routed = [RoutedJob("product-a", None, frozenset())]
    assert state.route_study(STUDY, study["round"], study["due_at"], routed, study_pseudonym=STUDY)


def _next(month: str) -> str:
    year, number = (int(part) for part in month.split("-"))
    return f"{year + number // 12}-{number % 12 + 1:02d}"


def _counts(state: GatewayState) -> dict[tuple[str, str], int]:
    return {(c["product_id"], c["month"]): c["studies"] for c in state.unreported_counts()}


def test_a_study_of_two_rounds_is_one_eligible_study_and_one_routed(tmp_path: Path) -> None:
    """More images came after the study was sent: a second round, a second job. Both sides of
    uptake count one study, so uptake is 100 %, not 50 % (nor, with jobs on one side, 200 %).
    Another product the second round made it eligible for counts it too, and a round in a new
    month counts it again, as the exchange counts the jobs requested then; what was counted
    in months no longer being counted is forgotten."""
    state = GatewayState(tmp_path / "state.db")
    try:
        _received(state, tmp_path, f"{STUDY}.1.1")
        _routed(state)
        [job] = state.query("SELECT id FROM jobs")
        state.update_job(job["id"], state="delivered")
        _received(state, tmp_path, f"{STUDY}.1.2")  # a late instance: the study's round 2
        _routed(state)
        first, second = state.uncounted_studies()
        assert (first["round"], second["round"]) == (1, 2)
        month = first["month"]
        state.count_eligible(STUDY, 1, month, ["product-a"])
        state.count_eligible(STUDY, 2, month, ["product-a", "product-b"])
        assert state.uncounted_studies() == []
        assert _counts(state) == {("product-a", month): 1, ("product-b", month): 1}
        eligible = [
            EligibleCount(product_id="product-a", hospital_id="h", studies=_counts(state)[key])
            for key in [("product-a", month)]
        ]
        jobs = state.query("SELECT id FROM jobs")
        # Next month, a third round: counted again there, and this month's record forgotten.
        state.mark_reported("product-a", month, 1)
        [round_2] = state.query("SELECT id FROM jobs WHERE id != ?", (job["id"],))
        state.update_job(round_2["id"], state="delivered")
        _received(state, tmp_path, f"{STUDY}.1.3")
        _routed(state)
        with state.transaction() as db:
            db.execute("UPDATE eligibility SET month = ? WHERE round = 3", (_next(month),))
        state.count_eligible(STUDY, 3, _next(month), ["product-a"])
        assert _counts(state) == {("product-b", month): 1, ("product-a", _next(month)): 1}
        kept = state.query("SELECT month, product_id FROM eligible_studies")
        assert [(r["month"], r["product_id"]) for r in kept] == [(_next(month), "product-a")]
    finally:
        state.close()
    assert len(jobs) == 2
    records = [
        JobRecord(
            job_id=str(j["id"]), product_id="product-a", hospital_id="h", state="completed",
            study_uid="2.25.1",
        )
        for j in jobs
    ]  # fmt: skip
    [row, _national] = evaluate(records, (), eligible)
    assert (row.volume, row.uptake.value) == (1, 1.0)
