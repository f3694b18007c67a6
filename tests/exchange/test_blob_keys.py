"""The local blob store keeps every key inside its folder, and a committed blob on the disk."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aifi.exchange.blobs import LocalBlobStore


@pytest.mark.parametrize(
    "key", ["../outside.dcm", "inputs/../../outside.dcm", "/etc/passwd", "", "."]
)
def test_a_key_that_leads_out_of_the_store_is_refused(tmp_path: Path, key: str) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError, match="escapes the store"):
        store.local_path(key)


def test_a_key_inside_the_store_names_a_file_under_its_folder(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    path = store.local_path("inputs/job/1.2.3.dcm")
    assert path == (tmp_path / "blobs" / "inputs" / "job" / "1.2.3.dcm").resolve()
    assert store.local_path("inputs/./job//1.2.3.dcm") == path


def test_deleting_a_folder_takes_every_blob_under_it_and_nothing_else(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    for key in ("inputs/job-1/a.dcm", "inputs/job-1/b.dcm", "inputs/job-10/c.dcm"):
        path = store.local_path(key)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert store.delete_under("inputs/job-1/") == 2
    assert not (tmp_path / "blobs" / "inputs" / "job-1").exists()
    assert store.size("inputs/job-10/c.dcm") == 1
    assert store.delete_under("inputs/job-2/") == 0


def test_a_folder_that_cannot_be_listed_is_an_error_not_an_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention takes what `delete_under` answers for done: a folder it could not read
    (a permission, a disk error) must not pass for one with nothing in it."""
    store = LocalBlobStore(tmp_path / "blobs")
    path = store.local_path("inputs/job-3/series/a.dcm")
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    scandir = os.scandir

    def unreadable(folder: Any = ".") -> Any:
        if Path(folder).name == "series":
            raise PermissionError(13, "Permission denied", str(folder))
        return scandir(folder)

    monkeypatch.setattr(os, "scandir", unreadable)
    with pytest.raises(PermissionError):
        store.delete_under("inputs/job-3/")
    assert path.exists()


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_a_committed_blob_is_synced_with_its_name_in_every_folder_made_for_it(
    tmp_path: Path, fsynced: list[str]
) -> None:
    """A power cut after the commit must find the blob under its key: the file's bytes, the
    folder holding its name and each new folder's own name in its parent are flushed."""
    store = LocalBlobStore(tmp_path / "blobs")
    temp = asyncio.run(store.receive(_one_chunk(b"DICM")))
    fsynced.clear()
    store.commit(temp, "inputs/job-1/1.2.3.dcm")

    root = (tmp_path / "blobs").resolve()
    assert fsynced == [
        str(root / "inputs" / "job-1" / "1.2.3.dcm"),
        str(root / "inputs" / "job-1"),
        str(root / "inputs"),
        str(root),
    ]
    assert store.size("inputs/job-1/1.2.3.dcm") == 4

    # A second blob in the same job's folder makes no folder: only its file and folder.
    temp = asyncio.run(store.receive(_one_chunk(b"DICM2")))
    fsynced.clear()
    store.commit(temp, "inputs/job-1/1.2.4.dcm")
    assert fsynced == [str(root / "inputs" / "job-1" / "1.2.4.dcm"), str(root / "inputs" / "job-1")]
