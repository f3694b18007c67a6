"""`aifi worker --check` pointed at a server that is not an AIFI exchange: a typo in
--exchange landing on some web server or single-page app, a captive portal, a TLS proxy's
block page. Each answers, but not as the exchange's API does. The check used to crash with a
JSON or type error traceback instead of printing its table (or, for a 404, to say only that
"the exchange" answered 404); now its "exchange" line fails, saying the server is not an AIFI
exchange, and the product is not asked after.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aifi.products import tissue_volume
from aifi.vendor import VendorClient
from aifi.vendor.preflight import preflight

AIFI = Path(sys.executable).with_name("aifi")

#: What the server answers any GET with: status, Content-Type, body, and other headers.
ANSWERS: dict[str, tuple[int, str, bytes, dict[str, str]]] = {
    "an HTML page": (200, "text/html", b"<html><body>Welcome to nginx!</body></html>", {}),
    "JSON of another shape": (200, "application/json", b'{"status": "ok"}', {}),
    "a redirect to a login page": (302, "text/html", b"", {"Location": "/login"}),
    "404 for the API's path": (404, "text/html", b"<html>Not Found</html>", {}),
}


def serving(answer: tuple[int, str, bytes, dict[str, str]]) -> http.server.ThreadingHTTPServer:
    code, media_type, body, headers = answer

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.send_response(code)
            for name, value in {**headers, "Content-Type": media_type}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture(params=list(ANSWERS))
def not_an_exchange(request: pytest.FixtureRequest) -> Iterator[str]:
    server = serving(ANSWERS[request.param])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def key_file(folder: Path) -> Path:
    path = folder / "vendor.key"
    path.write_text("aifi_some-key\n")
    path.chmod(0o600)
    return path


def test_the_check_says_a_server_is_not_an_exchange(not_an_exchange: str, tmp_path: Path) -> None:
    key = key_file(tmp_path)
    with VendorClient(not_an_exchange, "aifi_some-key", retries=0) as client:
        checks = {c.name: c for c in preflight(client, tissue_volume.PRODUCT_ID, key, tmp_path)}
    exchange = checks["exchange"]
    assert not exchange.ok
    assert f"{not_an_exchange} is not an AIFI exchange" in exchange.detail, exchange.detail
    assert "check --exchange" in exchange.detail
    assert f"product {tissue_volume.PRODUCT_ID}" not in checks  # nothing to ask it with


def test_the_worker_command_prints_its_table_not_a_traceback(tmp_path: Path) -> None:
    server = serving(ANSWERS["an HTML page"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        checked = subprocess.run(
            [AIFI, "worker", "--check", "--product", tissue_volume.PRODUCT_ID, "--exchange", url,
             "--api-key-file", str(key_file(tmp_path)), "--workdir", str(tmp_path / "jobs")],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "NO_PROXY": "127.0.0.1"},
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    said = checked.stdout + checked.stderr
    assert checked.returncode == 1, said
    assert "Traceback" not in said
    table = " ".join(said.replace("│", " ").split())  # as read, however the table wraps
    assert "is not an AIFI exchange" in table, said
