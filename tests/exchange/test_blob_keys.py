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
