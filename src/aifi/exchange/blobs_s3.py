"""Blobs in an S3-compatible object store (MinIO, Ceph RGW, a cloud store), for replicas.

`AIFI_BLOB_URL=s3://BUCKET?endpoint=URL&region=R&prefix=P&spool=DIR&part_mb=N` selects it.
Credentials come from the usual AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a
profile, an instance role), never from the URL, so the URL can be logged.

An upload is spooled to a local file first — the exchange must read it (is it pseudonymised?
is it the job's study?) before it commits — then sent to the bucket as a streamed multipart
upload, part by part from the file. Downloads are ranged GETs, one range at a time, so a
replica's memory stays flat however large the study.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as StoreConnectionError
from s3transfer.utils import ReadFileChunk

from aifi.exchange.blobs import CHUNK, TempBlob, spool
from aifi.exchange.errors import BlobStoreUnavailable, StorageFull

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: S3 refuses parts under 5 MiB (except the last); 8 MiB keeps memory and requests modest.
DEFAULT_PART_BYTES = 8 * MIB
#: Error codes by which S3-compatible stores say they have no room left.
FULL_CODES = frozenset(
    {"XMinioStorageFull", "InsufficientStorage", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded"}
)


@dataclass(frozen=True)
class S3Location:
    """What an `s3://` blob URL names."""

    bucket: str
    endpoint: str | None = None
    region: str = "us-east-1"
    prefix: str = ""
    spool: Path | None = None
    part_bytes: int = DEFAULT_PART_BYTES
    path_style: bool = True

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://BUCKET URL: {url!r}")
        query = {name: values[-1] for name, values in parse_qs(parsed.query).items()}
        part_mb = int(query.get("part_mb", DEFAULT_PART_BYTES // MIB))
        if part_mb < 5:
            raise ValueError(f"part_mb={part_mb} in AIFI_BLOB_URL: S3 needs parts of 5 MiB or more")
        prefix = "/".join(p for p in (parsed.path.strip("/"), query.get("prefix", "")) if p)
        return cls(
            bucket=parsed.netloc,
            endpoint=query.get("endpoint"),
            region=query.get("region", "us-east-1"),
            prefix=prefix.strip("/"),
            spool=Path(query["spool"]) if "spool" in query else None,
            part_bytes=part_mb * MIB,
            path_style=query.get("addressing", "path") != "virtual",
        )


def storage_full(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _code(exc) in FULL_CODES or status == 507


def store_unavailable(exc: BotoCoreError | ClientError) -> bool:
    """Whether `exc` says the store could not be reached or had trouble of its own (a 5xx
    other than no room), rather than anything about the request."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return int(status) >= 500 and not storage_full(exc)
    return isinstance(exc, StoreConnectionError | HTTPClientError)


@contextmanager
def answering(doing: str) -> Iterator[None]:
    """The store's outage, once boto3's own retries are spent, as the exchange's 503
    (:class:`BlobStoreUnavailable`): the gateway and the vendor SDK wait and try again, and
    `aifi_exchange_errors_total{kind="blob_store_unavailable"}` tells the operator. The
    caller learns what was being done, not the store's address."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        if not store_unavailable(exc):
            raise
        log.warning("the object store is unavailable (%s): %s", doing, exc)
        raise BlobStoreUnavailable(
            f"the exchange's object store is unavailable ({doing}); retry shortly"
        ) from exc


def s3_client(location: S3Location) -> Any:
    """A thread-safe boto3 client; checksums only where required, which every S3 clone speaks."""
    config = Config(
        region_name=location.region,
        s3={"addressing_style": "path" if location.path_style else "virtual"},
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=32,
        connect_timeout=5,
        read_timeout=60,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=location.endpoint, config=config)


class S3BlobStore:
    """The exchange's blob store on an S3 bucket, shared by every replica."""

    def __init__(self, client: Any, location: S3Location, spool: Path | None = None) -> None:
        """`spool`: where uploads wait while they are checked, unless the URL names a folder
        (`spool=`); the system's temporary folder when neither does."""
        self.client = client
        self.location = location
        self.bucket = location.bucket
        self.spool_dir = location.spool or spool or Path(tempfile.gettempdir()) / "aifi-spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.incoming = self.spool_dir

    @classmethod
    def from_url(cls, url: str, spool: Path | None = None) -> S3BlobStore:
        location = S3Location.parse(url)
        store = cls(s3_client(location), location, spool)
        store.ensure_bucket()
        return store

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (production buckets are made by the
        operator, with versioning and a lifecycle rule for abandoned multipart uploads)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket"):
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def object_key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"blob key escapes the store: {key!r}")
        return f"{self.location.prefix}/{key}" if self.location.prefix else key

    # the BlobStore protocol ----------------------------------------------------------------

    async def receive(self, chunks: AsyncIterator[bytes], max_bytes: int | None = None) -> TempBlob:
        return await spool(chunks, self.spool_dir, max_bytes)

    def commit(self, temp: TempBlob, key: str) -> None:
        """Send the spooled upload to the bucket under `key`; the object appears whole or not."""
        try:
            with answering("storing an upload; nothing was stored"):
                if temp.size <= self.location.part_bytes:
                    with temp.path.open("rb") as body:
                        self.client.put_object(
                            Bucket=self.bucket, Key=self.object_key(key), Body=body
                        )
                else:
                    self._multipart(temp, self.object_key(key))
        except ClientError as exc:
            if storage_full(exc):
                raise StorageFull(
                    "the exchange's object store is full; nothing was stored"
                ) from exc
            raise
        temp.path.unlink(missing_ok=True)

    def _multipart(self, temp: TempBlob, object_key: str) -> None:
        """Streamed multipart upload, each part read from the spool file as it is sent."""
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=object_key)[
            "UploadId"
        ]
        parts = []
        try:
            for number, start in enumerate(range(0, temp.size, self.location.part_bytes), 1):
                length = min(self.location.part_bytes, temp.size - start)
                # Alive: a spool file not written to for an hour is taken for one a stopped
                # replica left (`clear_stale_uploads`), and a slow store may take that long.
                temp.path.touch()
                with ReadFileChunk.from_filename(str(temp.path), start, length) as body:
                    answer = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                        ContentLength=length,
                    )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=object_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=object_key, UploadId=upload_id
                )
            except Exception:  # the store's first answer (full, say) is the caller's
                log.warning(
                    "could not abort the multipart upload of %s (the store's lifecycle rule "
                    "for incomplete uploads removes its parts)",
                    object_key,
                    exc_info=True,
                )
            raise

    def discard(self, temp: TempBlob) -> None:
        temp.path.unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return None

    def read(self, key: str, range_bytes: int | None = None) -> Iterator[bytes]:
        """The object's bytes, fetched one range at a time (`Range: bytes=a-b`)."""
        step = range_bytes or self.location.part_bytes
        object_key = self.object_key(key)
        start, total = 0, None
        while total is None or start < total:
            try:
                with answering("reading"):
                    answer = self.client.get_object(
                        Bucket=self.bucket,
                        Key=object_key,
                        Range=f"bytes={start}-{start + step - 1}",
                    )
            except ClientError as exc:
                if start == 0 and _code(exc) == "InvalidRange":
                    return  # an empty object has no first byte to ask for
                if start == 0 and _code(exc) in MISSING:
                    raise FileNotFoundError(f"no object {object_key!r}") from exc
                raise
            total = _total_size(answer, start)
            body = answer["Body"]
            try:
                with answering("reading"):
                    for chunk in body.iter_chunks(CHUNK):
                        start += len(chunk)
                        yield chunk
            finally:
                body.close()

    def size(self, key: str) -> int:
        try:
            with answering("reading"):
                head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _code(exc) in MISSING:
                raise FileNotFoundError(f"no object {self.object_key(key)!r}") from exc
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        with answering("deleting"):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def delete_under(self, folder: str) -> int:
        """Delete every object under `folder`, a page (up to 1,000) at a time; how many went."""
        prefix = self.object_key(folder)
        deleted = 0
        with answering("purging"):
            deleted = self._delete_pages(prefix)
        return deleted

    def keys_under(self, folder: str) -> list[str]:
        """The keys of the objects under `folder`, sorted (S3 lists them in key order)."""
        prefix = self.object_key(folder)
        strip = len(self.location.prefix) + 1 if self.location.prefix else 0
        with answering("listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            return [item["Key"][strip:] for page in pages for item in page.get("Contents", [])]

    def _delete_pages(self, prefix: str) -> int:
        deleted = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
                # A 200 answer may still list keys the store kept (no permission, a lock).
                if kept := answer.get("Errors", []):
                    first = kept[0]
                    raise NotDeleted(
                        f"the object store kept {len(kept)} of {len(objects)} object(s) under "
                        f"{prefix!r}, such as {first.get('Key')!r}: {first.get('Code')} "
                        f"{first.get('Message', '')}".rstrip()
                    )
                deleted += len(objects)
        return deleted


class NotDeleted(OSError):
    """The object store answered a delete, keeping some of the objects."""


#: Error codes S3 answers for a key it does not hold (HEAD has no body, so only "404").
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _total_size(answer: dict[str, Any], start: int) -> int:
    """The object's full size from `Content-Range: bytes a-b/TOTAL` (or the body length)."""
    content_range = answer.get("ContentRange")
    if content_range and "/" in content_range:
        return int(content_range.rsplit("/", 1)[1])
    return start + int(answer.get("ContentLength", 0))
