"""A lease longer than the exchange grants is refused when the worker starts.

The exchange grants at most an hour (`lease_seconds` at most 3600 in a claim or a
heartbeat). A worker started with more (two hours, for a slow product) used to start, and
then every claim was refused 422: it logged a warning and claimed again every second, for
ever, and never got a job. Now `Worker` refuses it with a ValueError and `aifi worker
--lease-seconds` with a usage error. The SDK keeps its own copy of the limit (it does not
import the exchange); the last test ties the copy to the exchange's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aifi.products import tissue_volume
from aifi.vendor import ExchangeHTTPError, VendorClient, Worker
from aifi.vendor.client import LONGEST_LEASE_SECONDS
from vendor.network import PRODUCT, vendor_exchange

AIFI = Path(sys.executable).with_name("aifi")


@pytest.mark.parametrize("lease_seconds", [7200.0, LONGEST_LEASE_SECONDS + 1, 0.0, -60.0])
def test_a_worker_refuses_a_lease_the_exchange_cannot_grant(lease_seconds: float) -> None:
    with VendorClient("http://exchange.invalid", "aifi_k") as client:
        with pytest.raises(ValueError, match="at most 3600 s"):
            Worker(client, tissue_volume.run, lease_seconds=lease_seconds)
        assert Worker(client, tissue_volume.run, lease_seconds=LONGEST_LEASE_SECONDS)


def test_the_worker_command_refuses_it_before_it_claims(tmp_path: Path) -> None:
    key = tmp_path / "vendor.key"
    key.write_text("aifi_some-key\n")
    key.chmod(0o600)
    started = subprocess.run(
        [AIFI, "worker", "--product", tissue_volume.PRODUCT_ID, "--exchange",
         "http://exchange.invalid", "--api-key-file", str(key), "--lease-seconds", "7200"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 2, started.stdout + started.stderr  # a usage error
    said = " ".join(started.stderr.replace("│", " ").split())  # as read, however it wraps
    assert "Invalid value for '--lease-seconds'" in said and "3600" in said, started.stderr


def test_the_sdks_limit_is_the_exchanges(tmp_path: Path) -> None:
    with (
        vendor_exchange(tmp_path) as exchange,
        VendorClient(exchange.url, exchange.vendor_key, retries=0) as client,
    ):
        longest = LONGEST_LEASE_SECONDS
        assert client.claim([PRODUCT], lease_seconds=longest, wait_seconds=0) is None  # no job
        with pytest.raises(ExchangeHTTPError) as refused:
            client.claim([PRODUCT], lease_seconds=longest + 1, wait_seconds=0)
    assert refused.value.status == 422
