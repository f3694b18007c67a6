"""`aifi worker --check`: a vendor setting up a worker sees every problem at once, each with
what to change, against a real exchange; nothing is registered or claimed by looking."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aifi.checks import Check
from aifi.products import lung_nodules, tissue_volume
from aifi.vendor import VendorClient
from aifi.vendor.preflight import preflight
from support.national import OPERATOR_KEY, VENDOR, National, national_path
from support.peers import small_disk

AIFI = Path(sys.executable).with_name("aifi")


@pytest.fixture
def national(tmp_path: Path) -> Iterator[National]:
    with national_path(tmp_path / "national") as path:
        yield path


def key_file(folder: Path, key: str, mode: int = 0o600) -> Path:
    path = folder / "vendor.key"
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def checks_of(
    national: National, product: str, key_path: Path, workdir: Path | None
) -> dict[str, Check]:
    key = key_path.read_text().strip()
    with VendorClient(national.exchange.url, key, retries=0) as client:
        return {check.name: check for check in preflight(client, product, key_path, workdir)}


def operator(national: National) -> httpx.Client:
    return httpx.Client(
        base_url=national.exchange.url,
        headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
        timeout=60,
    )


def test_a_worker_set_up_as_the_guide_says_passes_every_check(
    national: National, tmp_path: Path
) -> None:
    key = key_file(tmp_path, national.vendor_key)
    checked = subprocess.run(
        [AIFI, "worker", "--check", "--product", tissue_volume.PRODUCT_ID, "--exchange",
         national.exchange.url, "--api-key-file", str(key), "--workdir", str(tmp_path / "jobs")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "all 4 checks passed" in checked.stdout
    assert f"as vendor {VENDOR}" in checked.stdout
    assert "(created at start)" in checked.stdout
    assert not (tmp_path / "jobs").exists()  # looking changes nothing


def test_each_problem_is_named_with_what_to_change(national: National, tmp_path: Path) -> None:
    # Others may read the key; the product was never registered; the folder has no room.
    key = key_file(tmp_path, national.vendor_key, mode=0o644)
    with small_disk(tmp_path / "disk", "1m") as disk:
        found = checks_of(national, lung_nodules.PRODUCT_ID, key, disk)
    assert not found["API key file"].ok
    assert "make it 0600" in found["API key file"].detail
    assert not found["workdir"].ok and "GiB free" in found["workdir"].detail
    assert "--workdir" in found["workdir"].detail
    assert found["exchange"].ok
    product = found[f"product {lung_nodules.PRODUCT_ID}"]
    assert not product.ok and f"register it (--register {VENDOR})" in product.detail
    with operator(national) as op:  # looking registered nothing
        assert op.get(f"/products/{lung_nodules.PRODUCT_ID}").status_code == 404


def test_a_key_the_exchange_refuses_or_that_is_not_a_vendors_fails_the_exchange_check(
    national: National, tmp_path: Path
) -> None:
    wrong = checks_of(national, tissue_volume.PRODUCT_ID, key_file(tmp_path, "not-a-key"), None)
    assert not wrong["exchange"].ok and "refused the API key (401)" in wrong["exchange"].detail
    assert f"product {tissue_volume.PRODUCT_ID}" not in wrong  # nothing to ask it with
    hospitals = checks_of(
        national, tissue_volume.PRODUCT_ID, key_file(tmp_path, national.hospital_key), None
    )
    assert not hospitals["exchange"].ok
    assert "hospital-1 (hospital), not to a vendor" in hospitals["exchange"].detail


def test_a_product_of_another_vendor_or_not_admitted_gets_no_jobs_and_says_so(
    national: National, tmp_path: Path
) -> None:
    with operator(national) as op:
        other = op.post(
            "/organisations", json={"id": "other-vendor", "name": "Other", "kind": "vendor"}
        )
        other.raise_for_status()
        with VendorClient(national.exchange.url, other.json()["api_key"]) as client:
            client.register_product(lung_nodules.manifest("other-vendor"))
        key = key_file(tmp_path, national.vendor_key)
        theirs = checks_of(national, lung_nodules.PRODUCT_ID, key, None)
        product = theirs[f"product {lung_nodules.PRODUCT_ID}"]
        assert not product.ok and "is other-vendor's" in product.detail

        suspended = op.post(
            f"/products/{tissue_volume.PRODUCT_ID}/admission", json={"action": "suspend"}
        )
        assert suspended.status_code == 200, suspended.text
    ours = checks_of(national, tissue_volume.PRODUCT_ID, key, None)
    product = ours[f"product {tissue_volume.PRODUCT_ID}"]
    assert not product.ok and "is suspended" in product.detail
    assert "until the national operator admits it" in product.detail


def test_the_worker_command_says_why_it_cannot_start(national: National, tmp_path: Path) -> None:
    """A missing key file, and a registration the exchange refuses: a message, not a trace."""
    base = [AIFI, "worker", "--product", tissue_volume.PRODUCT_ID, "--exchange",
            national.exchange.url]  # fmt: skip
    missing = subprocess.run(
        [*base, "--api-key-file", str(tmp_path / "nowhere.key")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "400"},  # the path on one line of the error's box
    )  # fmt: skip
    assert missing.returncode == 2
    assert "nowhere.key" in missing.stderr and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    as_hospital = key_file(tmp_path, national.hospital_key)
    refused = subprocess.run(
        [*base, "--api-key-file", str(as_hospital), "--register", VENDOR],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"error: {tissue_volume.PRODUCT_ID} could not be registered as {VENDOR}'s" in (
        refused.stderr
    )
    assert "403" in refused.stderr and "Traceback" not in refused.stderr
