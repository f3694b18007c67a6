"""Real peers for the tests: Orthanc as a PACS, dcmtk as a modality, dicom3tools as validator.

Locally a missing peer skips its test with the reason; under CI=true it fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_executable(name: str, package: str) -> str:
    """The path of a peer's executable; skip (locally) or fail (under CI=true) when missing."""
    path = shutil.which(name)
    if path is None:
        _missing(name, package)
    return str(path)


def require_file(path: Path, package: str) -> Path:
    """A file a peer needs (a plugin); skip (locally) or fail (under CI=true) when missing."""
    if not path.exists():
        _missing(str(path), package)
    return path


def _missing(name: str, package: str) -> None:
    message = f"{name} not found: install the Debian package '{package}' (make test does, as root)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def small_disk(folder: Path, size: str = "2m") -> Iterator[Path]:
    """A real file system of `size` mounted at `folder` (a tmpfs; needs root, as CI runs), so
    that a disk really fills; skip (locally) or fail (under CI=true) when it cannot be mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a {size} tmpfs (needs root): {mounted.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path) -> Path:
    """Fill the file system of `disk` to its last byte with one file; delete it to free it."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        for block in (65536, 1):  # then the last bytes, one at a time
            try:
                while out.write(b"\0" * block):
                    pass
            except OSError:
                pass
    return filler


#: Orthanc's DICOMweb plugin, as Debian's orthanc-dicomweb installs it.
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop a peer: SIGTERM, then SIGKILL if it has not gone within ten seconds."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


#: The folder where this run's test processes (several under pytest-xdist) reserve the ports
#: they hand out; set by the first process (conftest), inherited by the workers it starts.
PORTS_FOLDER = "AIFI_TEST_PORTS"
_HANDED_OUT: set[int] = set()


def _reserve(port: int) -> bool:
    """True if no process of this run has had `port` before; now it has."""
    if port in _HANDED_OUT:
        return False
    _HANDED_OUT.add(port)
    folder = os.environ.get(PORTS_FOLDER)
    if folder is None:
        return True
    try:
        os.close(os.open(os.path.join(folder, str(port)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on, and one no process of this run has handed out.

    The port is released before its server binds it, so the kernel may offer it again in
    between; a test that reserves several ports before starting their servers would then give
    two servers one port (measured: about one pair in 12,000), and so would two test workers.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if _reserve(port):
            return port


@dataclass
class OrthancPeer:
    """A real Orthanc on loopback, standing in for a hospital PACS."""

    http_port: int
    dicom_port: int
    ae_title: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """Stop it at once: its contents go with the test, and a clean shutdown takes Orthanc
        3.5 s."""
        self.process.kill()
        self.process.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> object:
        return httpx.get(self.url + path, timeout=10).json()


def start_orthanc(
    folder: Path,
    modalities: dict[str, tuple[str, int]],
    dicomweb_servers: dict[str, dict[str, str]] | None = None,
) -> OrthancPeer:
    """Start Orthanc with its storage in `folder`, accepting C-STORE only from `modalities`;
    with `dicomweb_servers` (name: {"Url", "Username", "Password"}), its DICOMweb plugin too,
    to send to them by STOW-RS."""
    exe = require_executable("Orthanc", "orthanc")
    plugins = [str(require_file(ORTHANC_DICOMWEB, "orthanc-dicomweb"))] if dicomweb_servers else []
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "AIFI test PACS",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {
            name: [aet, "127.0.0.1", port] for name, (aet, port) in modalities.items()
        },
        "Plugins": plugins,
        "StableAge": 1,
    }
    if dicomweb_servers:
        config["DicomWeb"] = {"Enable": True, "Servers": dicomweb_servers}
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [exe, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1"}
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{http_port}/system", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"Orthanc did not start; see {folder / 'orthanc.log'}") from None
            time.sleep(0.05)  # polling a server that gives no start-up signal
    return OrthancPeer(http_port, dicom_port, "ORTHANC", process)


def storescu(
    files: list[Path], port: int, called: str = "AIFI_GW", calling: str = "CT_SCANNER"
) -> subprocess.CompletedProcess[str]:
    """Send `files` as a modality would: dcmtk's storescu, with Nagle off."""
    exe = require_executable("storescu", "dcmtk")
    return subprocess.run(
        [exe, "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=300,
    )
