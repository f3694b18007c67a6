"""The way out of a hospital's network: the gateway reaches the exchange through the hospital's
HTTP proxy (tinyproxy) and the TLS load balancer of docs/deploy.md (nginx), trusting the CA it
is given — and says so plainly when the exchange's certificate does not verify."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import yaml

from aifi.gateway.config import ConfigError, load_config
from aifi.gateway.exchange_client import GatewayClient
from aifi.http import ExchangeNotTrusted, proxy_for, without_password
from aifi.products import tissue_volume
from scale.servers import Nginx, Proxy
from support.national import OPERATOR_KEY, National

pytestmark = pytest.mark.peer


def test_the_gateway_reaches_the_exchange_through_the_proxy_over_tls(
    national: National, balancer: Nginx, proxy: Proxy, ca_file: Path
) -> None:
    client = GatewayClient(balancer.url, national.hospital_key, proxy=proxy.url, ca_file=ca_file)
    try:
        assert client.product(tissue_volume.PRODUCT_ID)["id"] == tissue_volume.PRODUCT_ID
        assert client.request("GET", "/jobs").json() == []
    finally:
        client.close()
    # One tunnel to the balancer, kept open for both requests: TLS ran end to end inside it.
    assert proxy.tunnels() == [f"127.0.0.1:{balancer.port}"]


def test_the_environment_names_the_proxy_unless_no_proxy_covers_the_exchange(
    national: National,
    balancer: Nginx,
    proxy: Proxy,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = GatewayClient(balancer.url, national.hospital_key, ca_file=ca_file)
    try:
        assert client.proxy == proxy.url
        client.request("GET", "/jobs")
    finally:
        client.close()
    assert len(proxy.tunnels()) == 1

    monkeypatch.setenv("NO_PROXY", "example.org,127.0.0.1")
    direct = GatewayClient(balancer.url, national.hospital_key, ca_file=ca_file)
    try:
        assert direct.proxy is None
        assert direct.request("GET", "/jobs").status_code == 200
    finally:
        direct.close()
    assert len(proxy.tunnels()) == 1, "a host NO_PROXY names went through the proxy"


def test_an_untrusted_certificate_is_named_at_once_not_retried(
    national: National, balancer: Nginx, proxy: Proxy
) -> None:
    client = GatewayClient(balancer.url, national.hospital_key, proxy=proxy.url)
    try:
        with pytest.raises(ExchangeNotTrusted) as refused:
            client.request("GET", "/jobs")
    finally:
        client.close()
    message = str(refused.value)
    assert balancer.url in message and "exchange.ca_file" in message, message
    assert "is not trusted (" in message and "certificate" in message.split("(")[1], message
    # The client tries again after connection failures; after this one, it did not.
    assert len(proxy.tunnels()) == 1


def test_a_proxy_password_is_never_shown() -> None:
    assert without_password("http://ict:s3cret@proxy.hospital.local:3128") == (
        "http://ict:***@proxy.hospital.local:3128"
    )
    assert without_password("http://proxy.hospital.local:3128") == (
        "http://proxy.hospital.local:3128"
    )


def test_proxy_for_reads_the_environment_as_curl_does(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
    for name in names + tuple(name.lower() for name in names):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://exchange.aifi.example") is None
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")  # not a proxy these clients use
    assert proxy_for("https://exchange.aifi.example") is None
    monkeypatch.setenv("ALL_PROXY", "proxy.hospital.local:3128")  # no scheme: http://, as curl
    assert proxy_for("https://exchange.aifi.example") == "http://proxy.hospital.local:3128"
    monkeypatch.setenv("NO_PROXY", "fhir.hospital.local:8443")  # a host and port
    assert proxy_for("https://fhir.hospital.local:8443/fhir") is None
    assert proxy_for("https://fhir.hospital.local/fhir") == "http://proxy.hospital.local:3128"
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.hospital.local:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.hospital.local:8080")
    assert proxy_for("https://exchange.aifi.example") == "http://proxy.hospital.local:3128"
    assert proxy_for("http://exchange.aifi.example") == "http://plain.hospital.local:8080"
    monkeypatch.setenv("NO_PROXY", ".aifi.example")
    assert proxy_for("https://exchange.aifi.example") is None
    assert proxy_for("https://elsewhere.example") == "http://proxy.hospital.local:3128"


def _config(folder: Path, **exchange: str) -> Path:
    path = folder / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "hospital": "h",
                "workdir": "work",
                "exchange": {"url": "https://x.example", "api_key": "k", **exchange},
                "pacs": [{"name": "main", "ae_title": "PACS", "host": "pacs.local", "port": 104}],
            }
        )
    )
    return path


def test_the_ca_file_is_read_relative_to_the_configuration(tmp_path: Path, ca_file: Path) -> None:
    config = load_config(_config(tmp_path, ca_file=ca_file.name))
    assert config.exchange.ca_file == ca_file


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"ca_file": "missing.pem"}, "exchange.ca_file: "),
        ({"ca_file": "gateway.yaml"}, "not a readable PEM file of CA certificates"),
        ({"proxy": "proxy.hospital.local:3128"}, "exchange.proxy: String should match"),
    ],
)
def test_a_wrong_proxy_or_ca_file_is_refused_by_name(
    tmp_path: Path, entry: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(_config(tmp_path, **entry))


def test_links_the_exchange_writes_behind_the_tls_balancer_say_https(
    national: National, balancer: Nginx, ca_file: Path
) -> None:
    """docs/deploy.md's balancer tells the replica the scheme the client used: the FHIR
    search's `next` link is one the client can follow, through the balancer, over TLS."""
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    trust = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(base_url=balancer.url, headers=operator, verify=trust) as client:
        search = {"agent.identifier": "operator", "_count": "1"}
        first = client.get("/audit/fhir/AuditEvent", params=search)
        assert first.status_code == 200, first.text
        links = {link["relation"]: link["url"] for link in first.json()["link"]}
        assert links["self"].startswith(f"{balancer.url}/audit/fhir/AuditEvent?")
        assert links["next"].startswith(f"{balancer.url}/audit/fhir/AuditEvent?")
        second = client.get(links["next"])
        assert second.status_code == 200, second.text
        [one], [two] = first.json()["entry"], second.json()["entry"]
        assert one["resource"]["id"] != two["resource"]["id"]


@pytest.mark.parametrize("name", ["missing.pem", "gateway.yaml"])
def test_a_fhir_ca_file_that_is_not_pem_is_refused_by_name(tmp_path: Path, name: str) -> None:
    """Named in the configuration, not found out when the first notice goes."""
    path = _config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["notifications"] = {
        "fhir": {"base_url": "https://fhir.hospital.local/fhir", "verify_tls": name}
    }
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="notifications.fhir.verify_tls: .*not a readable PEM"):
        load_config(path)
