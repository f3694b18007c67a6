"""Instances as the gateway's receipt indexes them, for tests of its state."""

from __future__ import annotations

from pathlib import Path

from aifi.gateway.state import ReceivedInstance


def received(uid: str, study: str, folder: Path, size: int) -> ReceivedInstance:
    """An instance as the SCP indexes it, its spool file written first."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{uid}.dcm").write_bytes(b"\0" * size)
    return ReceivedInstance(
        sop_instance_uid=uid,
        study_uid=study,
        series_uid=study + ".1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        modality="CT",
        body_part="HEAD",
        study_description="",
        series_description="",
        path=folder / f"{uid}.dcm",
        size=size,
        calling_ae="CT1",
    )
