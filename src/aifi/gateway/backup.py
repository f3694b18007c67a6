"""A gateway's databases copied while it runs, and put back on a new disk.

The vault maps every pseudonym in flight back to its patient, the state knows which jobs the
exchange holds for the hospital, and the disclosure log answers patients and auditors. Each is
a SQLite database in WAL mode, whose newest pages live in a `-wal` file beside it: a backup
tool that copies the files while the gateway writes can take a torn copy, and it is found torn
on the day it is needed. `back_up` copies each database through SQLite's online backup in one
read transaction, so each copy is one moment of its database, and writes a manifest last: a
backup without one is incomplete.

The copies are taken in the order the gateway writes a job's rows in: the state first, then
the vault (its pairs are written before the job is sent), then the disclosure log (its entry
before the job counts as sent). So every job the state copy holds as sent has its pairs in the
vault copy and its entry in the log copy; what came after the state copy is sent again, found
by its key at the exchange, and put on record once.

The spool (instances as received) may go too (`spool=True`): its files are written whole and
never changed, so each is copied as it is. The pseudonymisation secret never goes with a
backup: it belongs in the hospital's key escrow. The backup names a fingerprint of it, so that
a restore refuses to put the vault back beside another secret, which would give every patient
new pseudonyms.

`restore` puts a backup back into a gateway's workdir while no gateway runs there. It copies
and checks it inside the workdir (`.restore-<time>/`), records the restore in the copy's state
(the next start asks the exchange what the lost disk did after the backup:
`Gateway.reconcile_restore`) and log (the entries written after the backup are not in it;
`aifi disclosures` says so), then renames the copy into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from aifi import __version__
from aifi.chain_anchor import Anchor
from aifi.dicom.pseudonym import PseudonymKey
from aifi.durable import fsync_path, write_atomically
from aifi.file_lock import held_alone
from aifi.gateway.config import GatewayConfig
from aifi.gateway.disclosures import Action, DisclosureLog
from aifi.gateway.state import GatewayState

#: The databases a backup holds, in the order they are copied (see the module's docstring).
DATABASES = ("state.db", "vault.db", "disclosures.db")
MANIFEST = "aifi-gateway-backup.json"
#: The lock a gateway holds on its workdir while its databases are open, which a restore takes.
WORKDIR_LOCK = "gateway.lock"
#: Held while a backup copies and while a restore renames its files into place: a backup never
#: mixes files from before and after a restore.
COPY_LOCK = "backup.lock"
#: Where a restore copies the backup inside the workdir, before it renames it into place.
RESTORE_STAGING = ".restore-"
_COPY_CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


Progress = Callable[[int], object]
"""Told of each run of bytes copied or checked."""


@dataclass(frozen=True)
class BackedUpFile:
    name: str  # relative to the backup folder
    size: int
    sha256: str


@dataclass
class BackupManifest:
    """What a backup holds, written last: a folder without it holds no usable backup."""

    taken_at: str  # UTC, ISO 8601: the moment of the state copy
    hospital: str
    gateway: str  # the gateway's AE title
    workdir: str  # where the databases' instance paths point
    secret_fingerprint: str
    databases: list[BackedUpFile]
    #: The spool's files; None when the spool was left to the hospital's file backup.
    spool: list[BackedUpFile] | None
    disclosure_anchor: str | None  # the log copy's newest entry, ENTRY:HASH
    jobs: dict[str, int]  # the state copy's jobs by state
    aifi_version: str = __version__
    format: int = 1

    @property
    def files(self) -> list[BackedUpFile]:
        return [*self.databases, *(self.spool or [])]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, folder: Path) -> BackupManifest:
        path = folder / MANIFEST
        if not path.is_file():
            raise BackupError(
                f"{folder} holds no complete backup: {MANIFEST} is missing (a backup writes it "
                "last; one that was cut off has none)"
            )
        try:
            raw = json.loads(path.read_text())
            raw["databases"] = [BackedUpFile(**item) for item in raw["databases"]]
            if raw.get("spool") is not None:
                raw["spool"] = [BackedUpFile(**item) for item in raw["spool"]]
            manifest = cls(**raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(f"{path} is not a backup manifest AIFI can read: {exc}") from exc
        if manifest.format != 1:
            raise BackupError(f"{path}: backup format {manifest.format} is newer than this AIFI")
        return manifest

    @property
    def taken_at_seconds(self) -> float:
        return datetime.fromisoformat(self.taken_at).timestamp()


def secret_fingerprint(key: PseudonymKey) -> str:
    """Which secret a backup was made with, without revealing it: an HMAC under the secret of
    a fixed label, as no pseudonym is."""
    return key.digest("backup-fingerprint", "aifi").hex()[:32]


def planned_bytes(config: GatewayConfig, *, spool: bool) -> int:
    """About how many bytes `back_up` copies: the total for a progress bar."""
    workdir = config.workdir
    total = sum(
        (workdir / f"{name}{suffix}").stat().st_size
        for name in DATABASES
        for suffix in ("", "-wal")
        if (workdir / f"{name}{suffix}").exists()
    )
    if spool:
        total += sum(path.stat().st_size for path in _spool_files(workdir / "spool"))
    return total


def back_up(
    config: GatewayConfig, to: Path, *, spool: bool = False, progress: Progress | None = None
) -> BackupManifest:
    """Copy the gateway's databases (and with `spool` its spool) into the new folder `to`,
    while the gateway runs or not; the manifest last."""
    workdir = config.workdir
    if (cut_off := restore_cut_off(workdir)) is not None:
        raise BackupError(f"nothing to back up: {cut_off}")
    for name in ("state.db", "vault.db"):
        if not (workdir / name).is_file():
            raise BackupError(
                f"no {name} in {workdir}: is `workdir` in the configuration right, and has "
                "the gateway run there?"
            )
    if to.exists() and any(to.iterdir()):
        raise BackupError(f"{to} is not empty: give each backup a folder of its own")
    secret = config.resolved_secret_file
    if not secret.is_file():
        raise BackupError(f"no pseudonymisation secret at {secret}")
    with held_alone(workdir / COPY_LOCK) as alone:
        if not alone:
            raise BackupError(
                f"another backup, or a restore putting files in place, is running on {workdir}"
            )
        if (cut_off := restore_cut_off(workdir)) is not None:  # begun meanwhile
            raise BackupError(f"nothing to back up: {cut_off}")
        to.mkdir(mode=0o700, parents=True, exist_ok=True)
        taken_at = datetime.now(UTC).isoformat()
        copied = [_copy_database(workdir / name, to / name, progress) for name in DATABASES
                  if (workdir / name).is_file()]  # fmt: skip
        jobs, anchor = _summary(to)
        spooled = None
        if spool:
            spooled = _copy_spool(workdir / "spool", to / "spool", progress)
            fsync_path(to / "spool")
    manifest = BackupManifest(
        taken_at=taken_at,
        hospital=config.hospital,
        gateway=config.dicom.ae_title,
        workdir=str(workdir),
        secret_fingerprint=secret_fingerprint(PseudonymKey.from_file(secret)),
        databases=copied,
        spool=spooled,
        disclosure_anchor=anchor,
        jobs=jobs,
    )
    write_atomically(to / MANIFEST, lambda out: out.write(manifest.to_json().encode()), fsync=True)
    (to / MANIFEST).chmod(0o600)
    return manifest


def _copy_database(source: Path, target: Path, progress: Progress | None) -> BackedUpFile:
    """One consistent copy of a live database, checked, as a single file (no `-wal`)."""
    part = target.with_name(target.name + ".part")
    part.unlink(missing_ok=True)
    reading = sqlite3.connect(source, timeout=60)
    try:
        writing = sqlite3.connect(part)
        try:
            # All pages in one step: one read transaction, so the copy is one moment of the
            # database; in WAL mode it holds up none of the gateway's writes meanwhile.
            reading.backup(writing)
            writing.execute("PRAGMA journal_mode=DELETE")
            checked = writing.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            writing.close()
    except sqlite3.Error as exc:
        part.unlink(missing_ok=True)
        raise BackupError(f"{source} could not be copied: {exc}") from exc
    finally:
        reading.close()
    if checked != "ok":
        part.unlink(missing_ok=True)
        raise BackupError(f"{source}: its copy fails SQLite's check ({checked}); see the journal")
    part.chmod(0o600)
    digest = _stream(part, progress)
    fsync_path(part)
    os.replace(part, target)
    fsync_path(target.parent)
    return BackedUpFile(target.name, target.stat().st_size, digest)


def _summary(folder: Path) -> tuple[dict[str, int], str | None]:
    """The state copy's jobs by state, and the log copy's newest entry."""
    state = sqlite3.connect(folder / "state.db")
    try:
        jobs = dict(state.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
    finally:
        state.close()
    anchor = None
    if (folder / "disclosures.db").is_file():
        log = sqlite3.connect(folder / "disclosures.db")
        try:
            newest = log.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1")
            row = newest.fetchone()
        finally:
            log.close()
        # As the journal and `aifi disclosures --anchor` write it.
        anchor = str(Anchor(int(row[0]), str(row[1]))) if row else None
    return jobs, anchor


def _spool_files(spool: Path) -> list[Path]:
    return sorted(path for path in spool.glob("*/*.dcm") if path.is_file())


def _copy_spool(spool: Path, to: Path, progress: Progress | None) -> list[BackedUpFile]:
    copied = []
    for path in _spool_files(spool):
        target = to / path.parent.name / path.name
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with target.open("wb") as out:
                digest = _stream(path, progress, out)
                out.flush()
                os.fsync(out.fileno())
        except FileNotFoundError:  # purged by retention meanwhile: no job needs it
            target.unlink(missing_ok=True)
            continue
        copied.append(
            BackedUpFile(f"spool/{path.parent.name}/{path.name}", target.stat().st_size, digest)
        )
    for folder in {target.parent for target in to.glob("*/")}:
        fsync_path(folder)
    return copied


def _stream(path: Path, progress: Progress | None, out: BinaryIO | None = None) -> str:
    """Read `path` a run of bytes at a time, written on to `out` if given; its SHA-256."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_COPY_CHUNK):
            if out is not None:
                out.write(chunk)
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


# restore -------------------------------------------------------------------------------------

#: Written before a restore changes the workdir, removed once it has: while it is there, no
#: gateway starts on the workdir (`restore_cut_off`).
RESTORING = "restore-in-progress.json"
#: What a workdir holds of a gateway's own, moved aside by a restore: the databases, and the
#: folders whose contents are named by local job ids the restored state may give to other jobs.
_REPLACED = tuple(f"{name}{suffix}" for name in DATABASES for suffix in ("", "-wal", "-shm"))
_REMADE = ("results", "outbox")


@dataclass(frozen=True)
class Restored:
    """What a restore put back, and what the hospital does next."""

    manifest: BackupManifest
    #: Where what it replaced was moved: the workdir's own databases are in the first (a
    #: restore run again after one was cut off names that one's folder too).
    replaced: list[Path]
    jobs: dict[str, int]
    instances_missing: int  # instances the state names whose spool file is not there


def backup_bytes(backup: Path) -> int:
    """What `restore` reads: the total for a progress bar."""
    return sum(item.size for item in BackupManifest.read(backup).files)


def restore_cut_off(workdir: Path) -> str | None:
    """Why no gateway may start on `workdir`: a restore into it was cut off part-way (its
    databases may be partly the backup's), or None."""
    marker = workdir / RESTORING
    if not marker.exists():
        return None
    try:
        started = json.loads(marker.read_text())
    except (OSError, ValueError):
        started = {}
    return (
        f"a restore into {workdir} was cut off: run `aifi gateway-restore --from "
        f"{started.get('backup', 'FOLDER')} --replace` again before starting the gateway "
        f"(what the restore replaced is in {started.get('replaced', 'replaced-<time>/')})"
    )


def restore(
    config: GatewayConfig,
    backup: Path,
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> Restored:
    """Put `backup` back into the gateway's workdir.

    Refused while a gateway runs there, when the backup is of another hospital or was made
    with another secret, when a file of it is not as the manifest says, and (unless
    `replace`) when the workdir holds databases already. The backup is copied and checked
    beside the workdir first, and the restore recorded in that copy; only then is the
    workdir changed, by renames: what it held of the gateway's (databases, `results/`,
    `outbox/`) goes into `replaced-<time>/`, deleting nothing, and the copy takes its place.
    A restore cut off in that step leaves a marker that keeps gateways from starting until
    it is run again (`restore_cut_off`)."""
    manifest = BackupManifest.read(backup)
    if manifest.hospital != config.hospital:
        raise BackupError(
            f"this backup is of {manifest.hospital}'s gateway, not of {config.hospital}'s"
        )
    secret = config.resolved_secret_file
    if not secret.is_file():
        raise BackupError(
            f"no pseudonymisation secret at {secret}: put the hospital's secret back from its "
            "key escrow first (a backup never holds it)"
        )
    if secret_fingerprint(PseudonymKey.from_file(secret)) != manifest.secret_fingerprint:
        raise BackupError(
            f"the secret at {secret} is not the one this backup was made with: put that one "
            "back from the key escrow (with another, results in flight could not be mapped "
            "back to their patients, and every patient would get new pseudonyms)"
        )
    workdir = config.workdir
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with held_alone(workdir / WORKDIR_LOCK) as alone:
        if not alone:
            raise BackupError(
                f"a gateway is running on {workdir}: stop it before restoring (a restore "
                "under a running gateway would be written over)"
            )
        cut_off = restore_cut_off(workdir)
        earlier = _replaced_by_cut_off(workdir) if cut_off else None
        present = [workdir / name for name in _REPLACED if (workdir / name).exists()]
        if (present or cut_off) and not replace:
            raise BackupError(
                (cut_off + "; ")
                if cut_off
                else f"{workdir} holds databases already "
                f"({', '.join(path.name for path in present)}): a restore would replace them; "
                "pass --replace to move them aside first"
            )
        for left in workdir.glob(f"{RESTORE_STAGING}*"):  # a cut-off restore's copy
            shutil.rmtree(left, ignore_errors=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        staging = workdir / f"{RESTORE_STAGING}{stamp}"
        replaced = _unused(workdir / f"replaced-{stamp}")
        try:
            staging.mkdir(mode=0o700)
            for item in manifest.files:
                _put_back(backup / item.name, staging / item.name, item, progress)
            jobs = _record_restore(config, manifest, staging)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)  # the workdir is as it was
            if isinstance(exc, OSError | sqlite3.Error):
                raise BackupError(
                    f"the backup could not be copied beside the workdir ({exc}); the workdir "
                    "is as it was"
                ) from exc
            raise
        with held_alone(workdir / COPY_LOCK) as free:
            if not free:
                shutil.rmtree(staging, ignore_errors=True)
                raise BackupError(
                    f"a backup of {workdir} is running: restore when it is done (the workdir "
                    "is as it was)"
                )
            marker = {"backup": str(backup), "replaced": str(earlier or replaced)}
            write_atomically(
                workdir / RESTORING, lambda out: out.write(json.dumps(marker).encode()), fsync=True
            )
            try:
                moved = _move_aside(workdir, replaced)
                # The databases (a log the backup lacked is made new, with the restore's
                # entry), then the spool's files the backup holds.
                names = [name for name in DATABASES if (staging / name).exists()]
                names += [item.name for item in manifest.spool or []]
                for name in names:
                    (workdir / name).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    os.replace(staging / name, workdir / name)
                for folder in {(workdir / name).parent for name in names}:
                    fsync_path(folder)
            except OSError as exc:
                raise BackupError(
                    f"the restore was cut off while it put the backup in place ({exc}); what "
                    f"it replaced is in {earlier or replaced}; run it again with --replace"
                ) from exc
            (workdir / RESTORING).unlink()
            fsync_path(workdir)
        shutil.rmtree(staging, ignore_errors=True)
    missing = _instances_missing(workdir)
    folders = [earlier] if earlier is not None else []
    return Restored(manifest, [*folders, *([replaced] if moved else [])], jobs, missing)


def _replaced_by_cut_off(workdir: Path) -> Path | None:
    """The folder a cut-off restore moved the workdir's own databases into, as its marker
    names it."""
    try:
        named = json.loads((workdir / RESTORING).read_text()).get("replaced")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(named) if named and Path(named).is_dir() else None


def _put_back(source: Path, target: Path, item: BackedUpFile, progress: Progress | None) -> None:
    """Copy a file of the backup, checking it against the manifest as it goes."""
    if not source.is_file() or source.stat().st_size != item.size:
        raise BackupError(f"{source} is missing or not the size the backup wrote")
    digests: list[str] = []
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(target, lambda out: digests.append(_stream(source, progress, out)), fsync=True)
    if digests != [item.sha256]:
        raise BackupError(f"{source} is not as the backup wrote it (its SHA-256 differs)")
    target.chmod(0o600)


def _record_restore(
    config: GatewayConfig, manifest: BackupManifest, staging: Path
) -> dict[str, int]:
    """Record the restore in the staged state and log; the state's jobs by state."""
    state = GatewayState(staging / "state.db")
    try:
        if manifest.workdir != str(config.workdir):
            _move_paths(state, manifest.workdir, str(config.workdir))
        state.record_restore(manifest.taken_at_seconds)
        jobs = {
            row["state"]: int(row["n"])
            for row in state.query("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        }
    finally:
        state.close()
    log = DisclosureLog(
        staging / "disclosures.db", config.hospital, f"gateway {config.dicom.ae_title}"
    )
    try:
        log.record(
            Action.restored,
            patient_id="",
            study_uid="",
            recipient="this gateway's own disk",
            detail=f"restored from the backup taken at {manifest.taken_at} (newest entry "
            f"then {manifest.disclosure_anchor or 'none'}); entries written after that "
            "backup, before this restore, are not in this log",
        )
    finally:
        log.close()
    # Single files, as the backup's: no `-wal` to carry across.
    for name in ("state.db", "disclosures.db"):
        conn = sqlite3.connect(staging / name)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
        finally:
            conn.close()
        (staging / name).chmod(0o600)
    return jobs


def _move_aside(workdir: Path, replaced: Path) -> bool:
    """Move the workdir's databases, and its results and outbox, into `replaced`; whether
    there was anything. Results are fetched from the exchange again, into folders named by
    the restored state's job ids, which a folder left from the lost timeline must not be."""
    present = [
        workdir / name
        for name in (*_REPLACED, *_REMADE)
        if (workdir / name).exists() and not _empty_folder(workdir / name)
    ]
    if not present:
        return False
    replaced.mkdir(mode=0o700)
    for path in present:
        os.replace(path, replaced / path.name)
    fsync_path(replaced)
    return True


def _unused(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`…: whichever is not there yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _instances_missing(workdir: Path) -> int:
    """Instances the restored state names, of studies not purged, whose spool file is not
    there: put the spool back, or have the PACS send those studies again."""
    state = sqlite3.connect(workdir / "state.db")
    try:
        rows = state.execute(
            "SELECT i.path FROM instances i JOIN studies s ON s.study_uid = i.study_uid "
            "WHERE s.state != 'purged'"
        ).fetchall()
    finally:
        state.close()
    return sum(1 for (path,) in rows if not os.path.exists(path))


def _move_paths(state: GatewayState, old: str, new: str) -> None:
    """The state names spool files by path: a workdir restored elsewhere moves them along."""
    with state.transaction() as db:
        db.execute(
            "UPDATE instances SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
            (new, len(old) + 1, len(old), old),
        )
