"""Blob storage for pseudonymised inputs and results: streamed in, streamed out, never buffered.

An upload is written to a temporary blob first, checked, and only then committed under its key,
so a half-received or refused upload never replaces one already accepted.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from aifi.durable import replace_durably
from aifi.exchange.errors import ExchangeError, StorageFull

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class UploadTooLarge(ExchangeError):
    status = 413


@dataclass
class TempBlob:
    """An upload that has arrived completely but is not yet under its key."""

    path: Path
    size: int
    sha256: str


class BlobStore(Protocol):
    """Where inputs and results are kept. `read` and `size` of a key the store does not hold
    raise FileNotFoundError, whatever the store: the API answers 404 for it (a store restored
    from an older copy than the database lacks some objects)."""

    #: The local folder uploads are spooled to: a file written there can be committed.
    incoming: Path

    async def receive(
        self, chunks: AsyncIterator[bytes], max_bytes: int | None = None
    ) -> TempBlob: ...

    def commit(self, temp: TempBlob, key: str) -> None: ...

    def discard(self, temp: TempBlob) -> None: ...

    def local_path(self, key: str) -> Path | None: ...

    def read(self, key: str) -> Iterator[bytes]: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def delete_under(self, folder: str) -> int: ...

    def keys_under(self, folder: str) -> list[str]: ...


def forget(blobs: BlobStore, key: str) -> None:
    """Delete a blob whose row is gone, once the change that took the row out has committed
    (before, a rollback would leave a row naming nothing). A blob that cannot be deleted now
    stays behind, harmless: no row names it, and retention empties its job's folder."""
    try:
        blobs.delete(key)
    except Exception:  # the change that took the row out stands
        log.warning("could not delete blob %s; it goes when its job is purged", key)


#: An upload (or archive) file in the spool that nothing has written to for this long belongs
#: to no request any more: a replica killed mid-upload left it.
STALE_UPLOAD_SECONDS = 3600.0


def clear_stale_uploads(folder: Path, older_than: float = STALE_UPLOAD_SECONDS) -> tuple[int, int]:
    """Delete the spooled uploads in `folder` (``*.part``) not written to for `older_than`
    seconds; how many, and their bytes.

    A replica killed while an upload arrived, or before the store took it, left its file; no
    request will ever commit it, and it holds pseudonymised patient data past any retention.
    An upload under way writes to its file all the time, and an object store's multipart
    upload touches it before each part it sends, so age tells the dead from the living,
    whichever replica (or command) owns the folder.
    """
    cutoff = time.time() - older_than
    cleared, size = 0, 0
    for part in folder.glob("*.part"):
        with contextlib.suppress(FileNotFoundError):  # taken meanwhile
            stat = part.stat()
            if stat.st_mtime < cutoff:
                part.unlink()
                cleared, size = cleared + 1, size + stat.st_size
    return cleared, size


async def spool(
    chunks: AsyncIterator[bytes], folder: Path, max_bytes: int | None = None
) -> TempBlob:
    """Write an upload to a temporary file in `folder`, hashing it on the way.

    Not yet fsync'd: the store makes it durable when it commits it, on the worker thread that
    records it, so a small upload costs no extra hop off the event loop.

    A full disk becomes :class:`StorageFull` (HTTP 507) and leaves nothing behind, so the
    uploader learns why and may retry later; blobs already committed are never touched.
    """
    digest = hashlib.sha256()
    size = 0
    path: Path | None = None
    try:
        fd, name = tempfile.mkstemp(dir=folder, suffix=".part")
        path = Path(name)
        with os.fdopen(fd, "wb", buffering=CHUNK) as out:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise UploadTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
    except OSError as exc:
        if path is not None:
            path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull("the exchange's blob store is full; nothing was stored") from exc
        raise
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise
    return TempBlob(path=path, size=size, sha256=digest.hexdigest())


class LocalBlobStore:
    """Blobs as files under one folder: the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._inside = os.path.join(root.resolve(), "")

    def _path(self, key: str) -> Path:
        """Where the blob `key` lives; a key that would lead out of the store is refused.

        Checked on the text of the path (`..` taken out), not by asking the file system: every
        upload and download asks, and a key never names a link.
        """
        path = os.path.normpath(os.path.join(self._inside, key))
        if not path.startswith(self._inside):
            raise ValueError(f"blob key escapes the store: {key!r}")
        return Path(path)

    async def receive(self, chunks: AsyncIterator[bytes], max_bytes: int | None = None) -> TempBlob:
        return await spool(chunks, self.incoming, max_bytes)

    def commit(self, temp: TempBlob, key: str) -> None:
        """Durable, name and all, before the job's row says it is there (`aifi.durable`):
        an accepted blob survives a power cut."""
        try:
            replace_durably(temp.path, self._path(key))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the exchange's blob store is full; nothing was stored") from exc
            raise

    def discard(self, temp: TempBlob) -> None:
        temp.path.unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def read(self, key: str) -> Iterator[bytes]:
        with self._path(key).open("rb") as source:
            while chunk := source.read(CHUNK):
                yield chunk

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_under(self, folder: str) -> int:
        """Delete every blob under `folder` (and the emptied folders); how many went."""
        top = self._path(folder)
        if not top.is_dir():
            return 0
        deleted = 0
        # A folder that cannot be listed would be passed by in silence, and taken for empty.
        for parent, folders, files in os.walk(top, topdown=False, onerror=_raise):
            for name in files:
                Path(parent, name).unlink(missing_ok=True)
                deleted += 1
            for name in folders:
                with contextlib.suppress(OSError):  # a blob stored meanwhile keeps it
                    Path(parent, name).rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
        return deleted

    def keys_under(self, folder: str) -> list[str]:
        """The keys of the blobs under `folder`, sorted."""
        top = self._path(folder)
        keys = [
            Path(parent, name).relative_to(self._inside).as_posix()
            for parent, _folders, files in os.walk(top, onerror=_raise)
            for name in files
        ] if top.is_dir() else []  # fmt: skip
        return sorted(keys)


def _raise(error: OSError) -> None:
    raise error


def open_blob_store(url: str, spool: Path | None = None) -> BlobStore:
    """A store for `AIFI_BLOB_URL`.

    `file:///path` (the default) keeps blobs in a local folder; `s3://bucket?endpoint=…` in
    any S3-compatible object store (see :mod:`aifi.exchange.blobs_s3` for the parameters),
    its uploads waiting in `spool` while they are checked unless the URL names a folder: the
    replica's own disk (`ExchangeSettings.upload_spool`), not a system /tmp that may be
    memory (a tmpfs, as on Debian 13) and that every replica on the host shares.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("file", ""):
        return LocalBlobStore(Path(parsed.path))
    if parsed.scheme == "s3":
        from aifi.exchange.blobs_s3 import S3BlobStore

        return S3BlobStore.from_url(url, spool)
    raise ValueError(f"unsupported blob store URL scheme {parsed.scheme!r} in AIFI_BLOB_URL")
