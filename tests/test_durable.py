"""A file put under its name durably: bytes, name and new folders flushed, never half there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aifi.durable import replace_durably


def test_a_file_moved_into_new_folders_flushes_bytes_then_names(
    tmp_path: Path, fsynced: list[str]
) -> None:
    source = tmp_path / "incoming.part"
    source.write_bytes(b"DICM")
    target = tmp_path / "spool" / "1.2.3" / "1.2.3.4.dcm"
    (tmp_path / "spool").mkdir()

    replace_durably(source, target)

    assert target.read_bytes() == b"DICM" and not source.exists()
    assert fsynced == [str(target), str(target.parent), str(tmp_path / "spool")]


def test_a_file_from_another_file_system_is_copied_whole_beside_its_target(
    tmp_path: Path, fsynced: list[str]
) -> None:
    """pynetdicom receives into the temporary folder, often tmpfs: the rename cannot cross,
    so the copy is made beside the target and renamed, never written under the name."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) beside the test folder")
    source = shm / f"aifi-durable-{os.getpid()}.dcm"
    source.write_bytes(b"DICM" * 1000)
    target = tmp_path / "spool" / "1.2.3.4.dcm"
    try:
        replace_durably(source, target)
    finally:
        source.unlink(missing_ok=True)

    assert target.read_bytes() == b"DICM" * 1000
    assert not source.exists()
    assert list(target.parent.iterdir()) == [target]  # no copy left half-way
    # The rename fails before any flush: the copy is flushed, then the names.
    copied, *folders = fsynced
    assert Path(copied).parent == target.parent and copied.endswith(".part")
    assert folders == [str(target.parent), str(tmp_path)]


def test_a_target_already_there_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "a.dcm"
    target.write_bytes(b"old")
    source = tmp_path / "b.part"
    source.write_bytes(b"new")
    replace_durably(source, target)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm"]
