"""STOW-RS into the gateway: a PACS that sends by DICOMweb (Orthanc's own DICOMweb plugin) gets
its study through the national path and the result back, and every bad request gets its
reason while nothing already stored is lost or doubled."""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from aifi.phantoms import write_study
from aifi.products import tissue_volume
from support.national import National, gateway_config, started_gateway
from support.peers import free_port, storescu

pytestmark = pytest.mark.peer

SENDER = "VNA"
CT = "1.2.840.10008.5.1.4.1.1.2"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
IDENTITY = {"patient_id": "HOSP-0777", "patient_name": "Bakker^Piet", "accession_number": "A55"}
#: PS3.18 response attributes, as DICOM JSON keys.
REFERENCED = "00081199"
FAILED = "00081198"
FAILURE_REASON = "00081197"
SOP_INSTANCE = "00081155"


def password_file(folder: Path) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(16)
    path = folder / "stow-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path, password


def ct_study(folder: Path, seed: int, identity: dict[str, str] | None = None) -> list[Path]:
    write_study("ct-head", folder, seed=seed, size="small", identity=identity)
    return sorted(folder.rglob("*.dcm"))


def uid_of(path: Path, keyword: str = "SOPInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


def multipart(parts: list[tuple[str, bytes]], boundary: str, *, close: bool = True) -> bytes:
    """A multipart/related body of (content type, bytes) parts."""
    body = b""
    for kind, data in parts:
        body += f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def content_type(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


@pytest.fixture
def stow_gateway(national: National, tmp_path: Path) -> Iterator[tuple[Gateway, str]]:
    """A started gateway taking STOW-RS from one sender, and that sender's password."""
    path, password = password_file(tmp_path / "secrets")
    web = {
        "host": "127.0.0.1",
        "port": 0,
        "senders": [{"name": SENDER, "password_file": str(path)}],
    }
    with started_gateway(tmp_path / "gw", national, dicomweb=web, metrics_port=0) as gateway:
        yield gateway, password


def test_a_study_sent_by_dicomweb_comes_back_as_a_result_in_the_pacs(
    national: National, orthanc_factory: Any, tmp_path: Path
) -> None:
    """Orthanc, as the hospital's PACS, sends a study by its DICOMweb plugin's STOW-RS client;
    the result comes back to it by C-STORE under the patient's own identifiers."""
    gateway_port, stow_port = free_port(), free_port()
    path, password = password_file(tmp_path / "secrets")
    stow_url = f"http://127.0.0.1:{stow_port}/dicom-web/"
    pacs = orthanc_factory(
        {"aifi": ("AIFI_GW", gateway_port), "modality": ("CT_SCANNER", free_port())},
        {"aifi": {"Url": stow_url, "Username": SENDER, "Password": password}},
    )
    config_path = gateway_config(tmp_path, national, gateway_port, pacs.dicom_port)
    config = yaml.safe_load(config_path.read_text())
    config["dicomweb"] = {
        "port": stow_port,
        "senders": [{"name": SENDER, "password_file": str(path)}],
    }
    # Routed by sender, as a DIMSE study is by calling AE title.
    config["routes"] = [{"product": tissue_volume.PRODUCT_ID, "calling_aes": [SENDER]}]
    config_path.write_text(yaml.safe_dump(config))
    files = ct_study(tmp_path / "study", seed=21, identity=IDENTITY)
    study_uid = uid_of(files[0], "StudyInstanceUID")
    storescu(files, pacs.dicom_port, called="ORTHANC")  # the PACS holds the images
    [orthanc_study] = httpx.get(pacs.url + "/studies").json()

    gateway = Gateway(load_config(config_path))
    gateway.start()
    try:
        assert gateway.stow_url == stow_url.rstrip("/")
        sent = httpx.post(
            f"{pacs.url}/dicom-web/servers/aifi/stow",
            json={"Resources": [orthanc_study], "Synchronous": True},
            timeout=120,
        )
        assert sent.status_code == 200, sent.text
        assert gateway.wait_until(
            lambda: [j["state"] for j in gateway.jobs()] == ["delivered"], timeout=120
        ), gateway.jobs()
        received = gateway.state.study_instances(study_uid)
    finally:
        gateway.stop()
    # Every instance once, from the sender by name; one job, one result.
    assert sorted(r["sop_instance_uid"] for r in received) == sorted(map(uid_of, files))
    assert {r["calling_ae"] for r in received} == {SENDER}
    found = httpx.post(
        pacs.url + "/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    ).json()
    srs = [i for i in found if i["MainDicomTags"].get("SOPInstanceUID") not in map(uid_of, files)]
    assert len(found) == len(files) + 1 and len(srs) == 1
    tags = httpx.get(f"{pacs.url}/instances/{srs[0]['ID']}/simplified-tags").json()
    assert tags["SOPClassUID"] == COMPREHENSIVE_3D_SR
    assert tags["PatientID"] == IDENTITY["patient_id"]
    assert tags["PatientName"] == IDENTITY["patient_name"]


def test_good_and_bad_instances_in_one_request_each_get_their_answer(
    stow_gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    gateway, password = stow_gateway
    files = ct_study(tmp_path / "a", seed=31)
    other = ct_study(tmp_path / "b", seed=32)[0]
    study_uid = uid_of(files[0], "StudyInstanceUID")
    boundary = "aifi-" + secrets.token_hex(8)
    body = multipart(
        [("application/dicom", files[0].read_bytes())]
        + [("application/dicom", b"not a DICOM file at all")]
        + [("application/dicom", other.read_bytes())]  # another study
        + [("text/plain", b"hello")]
        + [("application/dicom", f.read_bytes()) for f in files[1:]],
        boundary,
    )
    answer = httpx.post(
        f"{gateway.stow_url}/studies/{study_uid}",
        content=body,
        headers={"Content-Type": content_type(boundary), "Accept": "application/dicom+json"},
        auth=(SENDER, password),
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    dataset = answer.json()
    stored = [item[SOP_INSTANCE]["Value"][0] for item in dataset[REFERENCED]["Value"]]
    assert stored == [uid_of(f) for f in [files[0], *files[1:]]]
    failures = dataset[FAILED]["Value"]
    assert [item[FAILURE_REASON]["Value"][0] for item in failures] == [0xC210, 0xA900, 0xC210]
    assert failures[1][SOP_INSTANCE]["Value"][0] == uid_of(other)
    assert "cannot be parsed as DICOM" in answer.headers["warning"]
    assert "(and 2 more)" in answer.headers["warning"]
    # The good ones are in the spool and indexed, from the sender; the others are not.
    indexed = gateway.state.study_instances(study_uid)
    assert sorted(r["sop_instance_uid"] for r in indexed) == sorted(map(uid_of, files))
    assert {r["calling_ae"] for r in indexed} == {SENDER}
    assert not gateway.state.study_instances(uid_of(other, "StudyInstanceUID"))
    assert not list(gateway.incoming.iterdir())

    # The same instances again: stored, and still once each.
    again = httpx.post(
        f"{gateway.stow_url}/studies",
        content=multipart([("application/dicom", f.read_bytes()) for f in files], boundary),
        headers={"Content-Type": content_type(boundary)},
        auth=(SENDER, password),
        timeout=60,
    )
    assert again.status_code == 200 and FAILED not in again.json()
    assert len(gateway.state.study_instances(study_uid)) == len(files)
    # The study, complete once the requests ended, becomes one job.
    assert gateway.wait_until(lambda: len(gateway.jobs()) == 1, timeout=60), gateway.jobs()


def test_refused_requests_say_why_and_store_nothing(
    stow_gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    gateway, password = stow_gateway
    [first, *_] = ct_study(tmp_path / "a", seed=41)
    dicom = first.read_bytes()
    boundary = "b" + secrets.token_hex(6)
    body = multipart([("application/dicom", dicom)], boundary)
    url = f"{gateway.stow_url}/studies"

    def post(**kwargs: Any) -> httpx.Response:
        kwargs.setdefault("content", body)
        kwargs.setdefault("auth", (SENDER, password))
        kwargs.setdefault("headers", {"Content-Type": content_type(boundary)})
        kwargs.setdefault("timeout", 60)
        return httpx.post(kwargs.pop("url", url), **kwargs)

    cases = [
        (post(auth=(SENDER, "wrong")), 401, "wrong password"),
        (post(auth=("PACS2", password)), 401, "unknown sender"),
        (post(auth=None), 401, "unknown sender"),
        (post(headers={"Content-Type": "application/dicom"}), 415, "multipart/related"),
        (
            post(
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom+xml"; '
                    f"boundary={boundary}"
                }
            ),
            415,
            "metadata and bulk data",
        ),
        (
            post(headers={"Content-Type": 'multipart/related; type="application/dicom"'}),
            400,
            "no boundary",
        ),
        (
            post(headers={"Content-Type": content_type(boundary), "Accept": "application/xml"}),
            406,
            "application/dicom+json",
        ),
        (post(url=f"{gateway.stow_url}/studies/not-a-uid"), 400, "not a Study Instance UID"),
        (post(content=multipart([], boundary)), 400, "no instance"),
        (post(content=multipart([("application/dicom", b"junk")], boundary)), 409, ""),
    ]
    for answer, status, words in cases:
        assert answer.status_code == status, (status, answer.text)
        assert words in answer.text or words in answer.headers.get("warning", "")
    assert cases[0][0].headers["www-authenticate"].startswith("Basic")
    assert not gateway.state.query("SELECT * FROM instances")
    assert not list(gateway.incoming.iterdir())
    # Prometheus sees each refusal: requests by status, the junk part by sender and reason.
    assert gateway.metrics is not None
    scraped = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(
            httpx.get(gateway.metrics.url, timeout=60).text
        )
        for sample in family.samples
        if sample.name.startswith("aifi_gateway_") and "refused" in sample.name
    }
    requests = "aifi_gateway_stow_refused_requests_total"
    assert scraped == {
        (requests, (("status", "401"),)): 3,
        (requests, (("status", "415"),)): 2,
        (requests, (("status", "400"),)): 3,
        (requests, (("status", "406"),)): 1,
        (
            "aifi_gateway_refused_instances_total",
            (("reason", "not-dicom"), ("sender", SENDER), ("way", "stow")),
        ): 1,
    }


def test_a_body_cut_off_keeps_the_instances_that_came_whole(
    stow_gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    gateway, password = stow_gateway
    files = ct_study(tmp_path / "a", seed=51)
    boundary = "cut" + secrets.token_hex(6)
    whole = multipart(
        [("application/dicom", f.read_bytes()) for f in files[:2]], boundary, close=False
    )
    cut = whole + f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    cut += files[2].read_bytes()[:5000]
    answer = httpx.post(
        f"{gateway.stow_url}/studies",
        content=cut,
        headers={"Content-Type": content_type(boundary)},
        auth=(SENDER, password),
        timeout=60,
    )
    assert answer.status_code == 400
    refusal = answer.json()
    assert "closing boundary" in refusal["error"]
    assert refusal["stored"] == [uid_of(f) for f in files[:2]]
    indexed = gateway.state.study_instances(uid_of(files[0], "StudyInstanceUID"))
    assert sorted(r["sop_instance_uid"] for r in indexed) == sorted(uid_of(f) for f in files[:2])
    assert not list(gateway.incoming.iterdir())  # the cut-off part is gone, not half-kept


def test_memory_does_not_grow_with_the_size_of_what_is_sent(
    stow_gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """A 64 MB part streams through: the gateway's allocations stay a small fraction of it."""
    gateway, password = stow_gateway
    [template] = ct_study(tmp_path / "a", seed=61)[:1]
    ds = pydicom.dcmread(template)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    header_path = tmp_path / "big-header.dcm"
    del ds.PixelData
    ds.save_as(header_path, enforce_file_format=True)
    pixel_length = 64 * 1024 * 1024
    boundary = "big" + secrets.token_hex(6)
    chunk = b"\x01\x00" * (512 * 1024)

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield header_path.read_bytes()
        yield b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_length.to_bytes(4, "little")
        for _ in range(pixel_length // len(chunk)):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    tracemalloc.start()
    try:
        answer = httpx.post(
            f"{gateway.stow_url}/studies",
            content=body(),
            headers={"Content-Type": content_type(boundary)},
            auth=(SENDER, password),
            timeout=120,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 200, answer.text
    [stored] = gateway.state.study_instances(str(ds.StudyInstanceUID))
    assert stored["size"] > pixel_length
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a 64 MB part"
    json.dumps(answer.json())  # a well-formed DICOM JSON answer


def test_over_tls_a_sender_that_trusts_the_certificate_is_served(
    national: National, ca: Any, tmp_path: Path
) -> None:
    """With tls_cert_file and tls_key_file the listener speaks HTTPS only: a sender that
    trusts the hospital's CA stores, plain HTTP gets no answer."""
    path, password = password_file(tmp_path / "secrets")
    server = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "stow.pem", tmp_path / "stow.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    web = {
        "host": "127.0.0.1",
        "port": 0,
        "senders": [{"name": SENDER, "password_file": str(path)}],
        "tls_cert_file": str(cert),
        "tls_key_file": str(key),
    }
    files = ct_study(tmp_path / "a", seed=71)
    boundary = "tls" + secrets.token_hex(6)
    body = multipart([("application/dicom", f.read_bytes()) for f in files], boundary)
    with started_gateway(tmp_path / "gw", national, dicomweb=web) as gateway:
        assert gateway.stow_url is not None and gateway.stow_url.startswith("https://")
        trust = ssl.create_default_context()
        ca.configure_trust(trust)
        answer = httpx.post(
            f"{gateway.stow_url}/studies",
            content=body,
            headers={"Content-Type": content_type(boundary)},
            auth=(SENDER, password),
            verify=trust,
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()[REFERENCED]["Value"]) == len(files)
        with pytest.raises(httpx.TransportError):
            httpx.post(
                gateway.stow_url.replace("https://", "http://") + "/studies",
                content=body,
                headers={"Content-Type": content_type(boundary)},
                auth=(SENDER, password),
            )
        indexed = gateway.state.study_instances(uid_of(files[0], "StudyInstanceUID"))
    assert len(indexed) == len(files)


def test_a_stow_port_in_use_stops_the_gateway_with_a_clear_error(
    national: National, tmp_path: Path
) -> None:
    """`aifi gateway` says which port it could not have and exits 1, without a traceback; and
    the gateway leaves no C-STORE listener behind (half started, it would take studies in)."""
    path, _ = password_file(tmp_path / "secrets")
    dicom_port = free_port()
    config_path = gateway_config(tmp_path, national, dicom_port, 1)
    config = yaml.safe_load(config_path.read_text())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config["dicomweb"] = {
            "port": taken.getsockname()[1],
            "senders": [{"name": SENDER, "password_file": str(path)}],
        }
        config_path.write_text(yaml.safe_dump(config))
        ran = subprocess.run(
            [sys.executable, "-m", "aifi.cli", "gateway", "--config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        gateway = Gateway(load_config(config_path))
        with pytest.raises(OSError):
            gateway.start()
        with socket.socket() as probe:  # in this process: the C-STORE port was let go
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", dicom_port))
        gateway.stop()
    assert ran.returncode == 1, ran.stderr
    assert "cannot start" in ran.stderr and "Address already in use" in ran.stderr
    assert "Traceback" not in ran.stderr
