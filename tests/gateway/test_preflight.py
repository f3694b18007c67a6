"""`aifi gateway --check` against real peers: the exchange behind the TLS balancer, reached
through the hospital's proxy, and Orthanc as the PACS. Whatever is wrong is named with what
to change; nothing passes that would fail once the gateway runs."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifi.checks import Check
from aifi.dicom.pseudonym import create_secret_file
from aifi.gateway.config import load_config
from aifi.gateway.notify.receivers import FhirReceiver, Hl7Listener, WebhookReceiver
from aifi.gateway.preflight import preflight
from aifi.products import lung_nodules, tissue_volume
from aifi.vendor import VendorClient
from scale.servers import Nginx, Proxy
from support.national import HOSPITAL, VENDOR, National
from support.peers import free_port

pytestmark = pytest.mark.peer


def _write(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def site(
    national: National,
    orthanc_factory: Any,
    balancer: Nginx,
    proxy: Proxy,
    ca_file: Path,
    tmp_path: Path,
) -> dict[str, Any]:
    """A hospital set up as the guide says: private workdir and secret, the proxy and its CA,
    Orthanc as its PACS."""
    pacs = orthanc_factory({})
    workdir = tmp_path / "workdir"
    workdir.mkdir(mode=0o700)
    secret = tmp_path / "pseudonym.key"
    create_secret_file(secret)
    return {
        "hospital": HOSPITAL,
        "workdir": str(workdir),
        "secret_file": str(secret),
        "exchange": {
            "url": balancer.url,
            "api_key": national.hospital_key,
            "proxy": proxy.url,
            "ca_file": str(ca_file),
        },
        "dicom": {"host": "127.0.0.1", "port": free_port()},
        "routes": [{"product": tissue_volume.PRODUCT_ID, "modalities": ["CT"]}],
        "pacs": [dict(name="main", ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.dicom_port)],
    }


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aifi.cli", "gateway", "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_a_hospital_set_up_as_the_guide_says_passes_every_check(
    site: dict[str, Any], proxy: Proxy, tmp_path: Path
) -> None:
    site["metrics_port"] = free_port()  # section 8: the hospital's monitoring scrapes it
    config = _write(tmp_path, site)
    ran = _check(config)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for name in (
        "workdir",
        "pseudonymisation secret",
        "DICOM listener",
        "metrics exporter",
        "exchange",
        f"product {tissue_volume.PRODUCT_ID}",
        "PACS main",
    ):
        assert name in ran.stdout
    assert "all 7 checks passed" in ran.stdout
    assert f"through proxy {proxy.url}" in ran.stdout
    assert proxy.tunnels(), "the check did not go through the proxy"


def test_each_wrong_setting_fails_with_what_to_change(site: dict[str, Any], tmp_path: Path) -> None:
    Path(site["workdir"]).chmod(0o755)
    Path(site["secret_file"]).chmod(0o644)
    site["exchange"]["api_key"] = "aifi_not-a-key-the-operator-issued"
    site["pacs"][0]["port"] = free_port()  # nothing listens there
    with socket.socket() as taken:  # another program holds the DICOM and exporter ports
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        site["dicom"]["port"] = site["metrics_port"] = taken.getsockname()[1]
        ran = _check(_write(tmp_path, site))
        checks = _by_name(preflight(load_config(_write(tmp_path, site))))
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "6 of 6 checks failed" in ran.stdout, ran.stdout
    assert "another program listens there" in checks["metrics exporter"].detail
    assert "make it 0700" in checks["workdir"].detail
    assert "make it 0600" in checks["pseudonymisation secret"].detail
    assert "refused the API key (401)" in checks["exchange"].detail
    assert "nothing answered" in checks["PACS main"].detail
    assert not any(name.startswith("product") for name in checks), "checked without a key"


def test_a_route_to_a_product_the_hospital_lacks_fails_by_name(
    national: National, site: dict[str, Any], tmp_path: Path
) -> None:
    vendor = VendorClient(national.exchange.url, national.vendor_key)
    vendor.register_product(lung_nodules.manifest(VENDOR))
    vendor.close()
    site["routes"] += [
        {"product": lung_nodules.PRODUCT_ID, "modalities": ["CT"]},
        {"product": "no-such-product", "modalities": ["CT"]},
    ]
    checks = _by_name(preflight(load_config(_write(tmp_path, site))))
    assert checks[f"product {tissue_volume.PRODUCT_ID}"].ok
    unsubscribed = checks[f"product {lung_nodules.PRODUCT_ID}"]
    assert not unsubscribed.ok and "does not subscribe" in unsubscribed.detail
    unknown = checks["product no-such-product"]
    assert not unknown.ok and "a route names it" in unknown.detail
    assert checks["exchange"].ok and checks["PACS main"].ok


def test_the_gateway_makes_its_workdir_private(national: National, tmp_path: Path) -> None:
    from aifi.gateway.service import Gateway

    workdir = tmp_path / "new" / "workdir"
    config = load_config(
        _write(
            tmp_path,
            {
                "hospital": HOSPITAL,
                "workdir": str(workdir),
                "exchange": {"url": national.exchange.url, "api_key": national.hospital_key},
                "pacs": [{"name": "main", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
            },
        )
    )
    gateway = Gateway(config)
    try:
        for folder in (workdir, workdir / "spool", workdir / "outbox", workdir / "results"):
            assert folder.stat().st_mode & 0o777 == 0o700, folder
    finally:
        gateway.client.close()


def test_an_api_key_file_that_is_not_there_is_named(site: dict[str, Any], tmp_path: Path) -> None:
    del site["exchange"]["api_key"]
    site["exchange"]["api_key_file"] = str(tmp_path / "exchange.key")
    exchange = _by_name(preflight(load_config(_write(tmp_path, site))))["exchange"]
    assert not exchange.ok and "exchange.key" in exchange.detail, exchange


def test_an_api_key_file_others_may_read_fails_as_the_workers_check_says_it(
    site: dict[str, Any], tmp_path: Path
) -> None:
    """The key works, yet anyone on the host who can read it can act as the hospital: the
    check fails on the file's mode alone, in the words of `aifi worker --check`."""
    key = tmp_path / "exchange.key"
    key.write_text(site["exchange"].pop("api_key") + "\n")
    key.chmod(0o640)
    site["exchange"]["api_key_file"] = str(key)
    config = _write(tmp_path, site)
    checks = _by_name(preflight(load_config(config)))
    assert checks["exchange"].ok, checks["exchange"]
    loose = checks["API key file"]
    assert not loose.ok
    assert loose.detail == f"{key}: mode 0640: others may read it; make it 0600"
    ran = _check(config)
    assert ran.returncode == 1 and "1 of 7 checks failed: API key file" in ran.stdout, ran.stdout
    key.chmod(0o600)
    private = _by_name(preflight(load_config(config)))["API key file"]
    assert private.ok and private.detail == f"{key}, private", private


def test_a_secret_that_cannot_be_created_fails_before_the_first_start(
    site: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    site["secret_file"] = str(tmp_path / "a-file" / "keys" / "pseudonym.key")
    checks = _by_name(preflight(load_config(_write(tmp_path, site))))
    secret = checks["pseudonymisation secret"]
    assert not secret.ok and "is missing and" in secret.detail and "a-file" in secret.detail
    # A folder still to be made (on the first start, with the secret) is no trouble.
    for path in (tmp_path / "pseudonym-new.key", tmp_path / "keys" / "pseudonym.key"):
        site["secret_file"] = str(path)
        checks = _by_name(preflight(load_config(_write(tmp_path, site))))
        assert checks["pseudonymisation secret"].ok, checks["pseudonymisation secret"]


def test_the_result_notice_channels_are_tried_without_sending_a_notice(
    site: dict[str, Any], tmp_path: Path
) -> None:
    with Hl7Listener() as ris, FhirReceiver() as fhir, WebhookReceiver(b"k" * 32) as pager:
        site["notifications"] = {
            "hl7": {"host": "127.0.0.1", "port": ris.port},
            "fhir": {"base_url": fhir.base_url},
            "webhook": {"url": pager.url, "secret": "k" * 32},
        }
        checks = _by_name(preflight(load_config(_write(tmp_path, site))))
        assert checks["HL7 v2 (MLLP)"].ok, checks["HL7 v2 (MLLP)"]
        assert checks["FHIR"].ok and "FHIR 4.0.1" in checks["FHIR"].detail, checks["FHIR"]
        assert checks["STAT webhook"].ok, checks["STAT webhook"]
        assert ris.received.empty() and fhir.received.empty() and pager.received.empty()

        site["notifications"]["hl7"]["port"] = free_port()
        site["notifications"]["fhir"]["base_url"] = fhir.base_url + "/wrong"
        site["notifications"]["fhir"]["bearer_token_file"] = str(tmp_path / "no-token")
        checks = _by_name(preflight(load_config(_write(tmp_path, site))))
        assert not checks["HL7 v2 (MLLP)"].ok and "cannot connect" in checks["HL7 v2 (MLLP)"].detail
        assert not checks["FHIR"].ok and "no-token" in checks["FHIR"].detail
        # A rotation half done, as each notice would read the files: two tokens, an empty key.
        two, empty = tmp_path / "two-tokens", tmp_path / "pager.key"
        two.write_text("old-t0ken\nt0ken\n")
        empty.write_text("")
        site["notifications"]["fhir"]["bearer_token_file"] = str(two)
        site["notifications"]["webhook"] = {"url": pager.url, "secret_file": str(empty)}
        checks = _by_name(preflight(load_config(_write(tmp_path, site))))
        assert not checks["FHIR"].ok and "holds no one bearer token" in checks["FHIR"].detail
        webhook = checks["STAT webhook"]
        assert not webhook.ok and webhook.detail == f"signing key: {empty} is empty"
        site["notifications"]["webhook"] = {"url": pager.url, "secret": "k" * 32}
        del site["notifications"]["fhir"]["bearer_token_file"]
        checks = _by_name(preflight(load_config(_write(tmp_path, site))))
        assert not checks["FHIR"].ok and "not a CapabilityStatement" in checks["FHIR"].detail


def test_the_stow_listener_its_certificate_and_its_senders_are_checked(
    site: dict[str, Any], ca: Any, tmp_path: Path
) -> None:
    """A STOW-RS listener set up as the guide says passes; a port taken, a certificate that
    does not fit its key and a password file others may read each fail with what to change."""
    good, loose = tmp_path / "vna.pw", tmp_path / "router.pw"
    for path, mode in ((good, 0o600), (loose, 0o644)):
        path.write_text("s3cret\n")
        path.chmod(mode)
    server = ca.issue_cert("gateway.hospital.test")
    cert, key = tmp_path / "stow.pem", tmp_path / "stow.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    site["dicomweb"] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "senders": [{"name": "VNA", "password_file": str(good)}],
        "tls_cert_file": str(cert),
        "tls_key_file": str(key),
    }
    checks = _by_name(preflight(load_config(_write(tmp_path, site))))
    assert checks["STOW-RS listener"].ok, checks["STOW-RS listener"].detail
    assert "https://127.0.0.1:" in checks["STOW-RS listener"].detail
    assert checks["STOW-RS sender VNA"].ok

    other = ca.issue_cert("elsewhere.test")  # a key that is not the certificate's
    other.private_key_pem.write_to_path(str(key))
    site["dicomweb"]["senders"].append({"name": "ROUTER", "password_file": str(loose)})
    checks = _by_name(preflight(load_config(_write(tmp_path, site))))
    assert not checks["STOW-RS listener"].ok
    assert "cannot use tls_cert_file and tls_key_file" in checks["STOW-RS listener"].detail
    assert "make it 0600" in checks["STOW-RS sender ROUTER"].detail
    assert checks["STOW-RS sender VNA"].ok

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        site["dicomweb"]["port"] = taken.getsockname()[1]
        checks = _by_name(preflight(load_config(_write(tmp_path, site))))
    assert "another program listens there" in checks["STOW-RS listener"].detail


def test_stow_settings_that_cannot_work_are_refused_when_loaded(
    site: dict[str, Any], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    cases = [
        ({"senders": []}, "dicomweb.senders: List should have at least 1 item"),
        (
            {"senders": [{"name": "VNA:1", "password_file": str(empty)}]},
            "dicomweb.senders.0.name: String should match pattern",
        ),
        ({"senders": [{"name": "VNA", "password_file": str(empty)}]}, "password file is empty"),
        (
            {"senders": [{"name": "VNA", "password_file": str(tmp_path / "none.pw")}]},
            "cannot read password file",
        ),
        (
            {
                "senders": [{"name": "VNA", "password_file": str(empty)}],
                "tls_cert_file": "stow.pem",
            },
            "tls_cert_file and tls_key_file go together",
        ),
    ]
    for web, words in cases:
        site["dicomweb"] = web
        ran = _check(_write(tmp_path, site))
        assert ran.returncode == 2 and words in ran.stderr, (words, ran.stderr)
