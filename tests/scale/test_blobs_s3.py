"""The S3 blob store against a real S3-compatible server on loopback: streamed multipart
uploads, ranged downloads, clean failures."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from aifi.exchange.blobs import TempBlob, clear_stale_uploads, open_blob_store
from aifi.exchange.blobs_s3 import MIB, NotDeleted, S3BlobStore, S3Location
from aifi.exchange.errors import StorageFull
from aifi.exchange.services import build_services
from aifi.exchange.settings import ExchangeSettings
from scale.servers import S3Server


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def stored(store: S3BlobStore, data: bytes, key: str) -> TempBlob:
    temp = asyncio.run(store.receive(chunks_of(data)))
    store.commit(temp, key)
    return temp


@pytest.fixture
def store(s3: S3Server, tmp_path: Path) -> S3BlobStore:
    opened = open_blob_store(s3.blob_url(spool=str(tmp_path / "spool"), part_mb="5"))
    assert isinstance(opened, S3BlobStore)
    return opened


def test_a_large_blob_goes_up_in_parts_and_comes_back_in_ranges(
    store: S3BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(11 * MIB + 12345)
    temp = stored(store, data, "inputs/job-1/1.2.3.dcm")
    assert temp.sha256 == hashlib.sha256(data).hexdigest() and temp.size == len(data)
    assert not temp.path.exists(), "the spooled copy is gone once the object is committed"
    head = store.client.head_object(Bucket=store.bucket, Key="inputs/job-1/1.2.3.dcm")
    assert head["ETag"].strip('"').endswith("-3"), "11 MiB in 5 MiB parts is a 3-part upload"
    assert store.size("inputs/job-1/1.2.3.dcm") == len(data)

    ranges: list[str] = []
    store.client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: ranges.append(params["headers"]["Range"])
    )
    back = b"".join(store.read("inputs/job-1/1.2.3.dcm", range_bytes=4 * MIB))
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert ranges == [
        f"bytes={start}-{start + 4 * MIB - 1}" for start in range(0, len(data), 4 * MIB)
    ]
    assert list(store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])) == []


def test_small_and_empty_blobs_round_trip_and_delete(store: S3BlobStore) -> None:
    stored(store, b"summary", "results/job-2/summary.json")
    stored(store, b"", "results/job-2/empty")
    assert b"".join(store.read("results/job-2/summary.json")) == b"summary"
    assert b"".join(store.read("results/job-2/empty")) == b""
    assert store.local_path("results/job-2/summary.json") is None
    store.delete("results/job-2/summary.json")
    with pytest.raises(FileNotFoundError):  # as the local store says it
        store.size("results/job-2/summary.json")
    with pytest.raises(FileNotFoundError):
        b"".join(store.read("results/job-2/summary.json"))


def test_deleting_a_folder_takes_every_object_under_it_and_nothing_else(
    store: S3BlobStore,
) -> None:
    for number in range(3):
        stored(store, b"x", f"inputs/job-5/{number}.dcm")
    stored(store, b"y", "inputs/job-50/0.dcm")
    assert store.delete_under("inputs/job-5/") == 3
    for number in range(3):
        with pytest.raises(FileNotFoundError):
            store.size(f"inputs/job-5/{number}.dcm")
    assert store.size("inputs/job-50/0.dcm") == 1
    assert store.delete_under("inputs/job-6/") == 0


@pytest.mark.parametrize("prefix", ["", "deep/er"])
def test_the_keys_under_a_folder_are_listed_as_the_store_names_them(
    s3: S3Server, tmp_path: Path, prefix: str
) -> None:
    url = s3.blob_url(spool=str(tmp_path / "spool"))
    opened = open_blob_store(url + (f"&prefix={prefix}" if prefix else ""))
    assert isinstance(opened, S3BlobStore)
    for key in (
        "audit/000000000008-000000000014.jsonl.gz",
        "audit/000000000001-000000000007.jsonl.gz",
        "audits/x",
        "inputs/job-1/a.dcm",
    ):
        stored(opened, b"z", key)
    assert opened.keys_under("audit/") == [
        "audit/000000000001-000000000007.jsonl.gz",
        "audit/000000000008-000000000014.jsonl.gz",
    ]
    assert opened.keys_under("outputs/") == []


def test_objects_the_store_keeps_on_a_folder_delete_are_an_error_naming_them(
    store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 answers a batch delete 200 and lists the keys it kept (no permission, an object
    lock): retention must not take that for done."""
    for number in range(2):
        stored(store, b"x", f"inputs/job-7/{number}.dcm")
    real_delete = store.client.delete_objects

    def keeps_one(**kwargs: Any) -> Any:
        objects = kwargs["Delete"]["Objects"]
        kwargs["Delete"]["Objects"] = objects[1:]
        answer = real_delete(**kwargs)
        kept = {"Key": objects[0]["Key"], "Code": "AccessDenied", "Message": "Access Denied"}
        return {**answer, "Errors": [kept]}

    monkeypatch.setattr(store.client, "delete_objects", keeps_one)
    with pytest.raises(NotDeleted) as kept:
        store.delete_under("inputs/job-7/")
    assert "kept 1 of 2 object(s)" in str(kept.value)
    assert "inputs/job-7/0.dcm" in str(kept.value) and "AccessDenied" in str(kept.value)
    assert store.size("inputs/job-7/0.dcm") == 1


def test_a_full_store_is_reported_as_full_even_when_the_upload_cannot_be_aborted(
    store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(**_: Any) -> Any:
        raise ClientError({"Error": {"Code": "XMinioStorageFull"}}, "UploadPart")

    def unreachable(**_: Any) -> Any:
        raise ClientError({"Error": {"Code": "InternalError"}}, "AbortMultipartUpload")

    monkeypatch.setattr(store.client, "upload_part", full)
    monkeypatch.setattr(store.client, "abort_multipart_upload", unreachable)
    temp = asyncio.run(store.receive(chunks_of(os.urandom(6 * MIB))))
    with pytest.raises(StorageFull) as refused:
        store.commit(temp, "inputs/job-8/1.2.dcm")
    assert refused.value.status == 507
    store.discard(temp)


def test_a_slow_multipart_upload_keeps_its_spool_file_from_the_stale_sweep(
    store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hours after its last byte arrived an upload may still be on its way to a slow store:
    its spool file is not taken for one a stopped replica left."""
    temp = asyncio.run(store.receive(chunks_of(os.urandom(11 * MIB))))
    real_upload_part = store.client.upload_part
    cleared: list[int] = []

    def slow_upload_part(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 1:  # two hours go by while the first part is sent
            hours_ago = time.time() - 2 * 3600
            os.utime(temp.path, (hours_ago, hours_ago))
        else:
            cleared.append(clear_stale_uploads(store.incoming)[0])
        return real_upload_part(**kwargs)

    monkeypatch.setattr(store.client, "upload_part", slow_upload_part)
    store.commit(temp, "inputs/job-9/1.2.dcm")
    assert cleared == [0, 0]
    assert store.size("inputs/job-9/1.2.dcm") == temp.size


def test_a_failed_multipart_upload_is_aborted(
    store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"parts": 0}
    real_upload_part = store.client.upload_part

    def flaky_upload_part(**kwargs: Any) -> Any:
        calls["parts"] += 1
        if calls["parts"] == 2:
            raise ClientError({"Error": {"Code": "InternalError"}}, "UploadPart")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(store.client, "upload_part", flaky_upload_part)
    temp = asyncio.run(store.receive(chunks_of(os.urandom(12 * MIB))))
    with pytest.raises(ClientError):
        store.commit(temp, "inputs/job-3/1.2.dcm")
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    with pytest.raises(FileNotFoundError):
        store.size("inputs/job-3/1.2.dcm")
    store.discard(temp)
    assert not temp.path.exists()


def test_a_full_object_store_is_reported_as_storage_full(store: S3BlobStore) -> None:
    temp = asyncio.run(store.receive(chunks_of(b"x" * 1000)))
    with Stubber(store.client) as stub:
        stub.add_client_error(
            "put_object",
            service_error_code="XMinioStorageFull",
            service_message="Storage backend has reached its minimum free drive threshold.",
            http_status_code=507,
        )
        with pytest.raises(StorageFull) as refused:
            store.commit(temp, "inputs/job-4/1.2.dcm")
    assert refused.value.status == 507 and "full" in refused.value.message
    store.discard(temp)


def test_blob_urls_are_parsed_and_checked() -> None:
    location = S3Location.parse(
        "s3://aifi-blobs/national?endpoint=https://minio.example:9000&region=eu-west-1"
        "&part_mb=16&addressing=virtual"
    )
    assert location.bucket == "aifi-blobs" and location.prefix == "national"
    assert location.endpoint == "https://minio.example:9000" and location.region == "eu-west-1"
    assert location.part_bytes == 16 * MIB and location.path_style is False
    with pytest.raises(ValueError, match="part_mb=1"):
        S3Location.parse("s3://b?part_mb=1")
    with pytest.raises(ValueError, match="not an s3://BUCKET"):
        S3Location.parse("s3:///nobucket")


def test_keys_cannot_escape_the_prefix(store: S3BlobStore) -> None:
    with pytest.raises(ValueError, match="escapes"):
        store.object_key("inputs/../../other")


def test_uploads_wait_in_the_replicas_own_folder_unless_the_url_names_one(
    s3: S3Server, tmp_path: Path
) -> None:
    """Not in the system's /tmp, which may be memory (Debian 13) and is every replica's."""
    settings = ExchangeSettings(data_dir=tmp_path / "replica", blob_url=s3.blob_url())
    services = build_services(settings)
    assert isinstance(services.blobs, S3BlobStore)
    assert services.blobs.incoming == tmp_path / "replica" / "spool"
    temp = stored(services.blobs, b"pseudonymised bytes", "inputs/job-1/1.2.3.dcm")
    assert temp.path.parent == tmp_path / "replica" / "spool"
    services.db.dispose()
    named = open_blob_store(s3.blob_url(spool=str(tmp_path / "named")), tmp_path / "replica")
    assert isinstance(named, S3BlobStore) and named.incoming == tmp_path / "named"
