"""The local blob store keeps every key inside its folder."""

from __future__ import annotations

from pathlib import Path

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
