"""docs/hospital-guide.md, followed as a hospital IT engineer would: its configuration file as
printed (only the site's own names, addresses and paths filled in), its commands (echoscu, the
phantom, storescu) as printed, and its monitoring table against what the gateway exports — with
a real exchange, Orthanc as the PACS and dcmtk as the sender."""

from __future__ import annotations

import glob
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml

from aifi.gateway.config import GatewayConfig
from support.national import HOSPITAL, National
from support.peers import free_port, require_executable

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "hospital-guide.md"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
#: The example host and port the guide's commands address the gateway by.
GUIDE_HOST, GUIDE_PORT = "gateway.hospital.local", "11112"

pytestmark = pytest.mark.peer


def _section(number: int) -> str:
    text = GUIDE.read_text()
    start = text.index(f"\n## {number}. ")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _example_config() -> dict[str, Any]:
    [block] = re.findall(r"```yaml\n(.*?)```", _section(3), re.S)
    config: dict[str, Any] = yaml.safe_load(block)
    return config


def _commands(section: int, program: str) -> list[list[str]]:
    """The guide's inline commands (in backticks) that run `program`, split as a shell would."""
    found = re.findall(rf"`({re.escape(program)} [^`]+)`", _section(section))
    return [shlex.split(command) for command in found]


def _at_site(command: list[str], port: int, phantom: Path) -> list[str]:
    """The guide's command with this site's gateway address and phantom folder; globs expanded
    as the shell would."""
    site = []
    for word in command:
        word = word.replace("/tmp/phantom", str(phantom))
        word = {GUIDE_HOST: "127.0.0.1", GUIDE_PORT: str(port)}.get(word, word)
        site.extend(sorted(glob.glob(word)) if "*" in word else [word])
    return site


def test_every_key_of_the_example_and_the_table_is_one_the_gateway_reads() -> None:
    example = _example_config()
    GatewayConfig.model_validate(
        {**example, "exchange": {"url": "https://x.example", "api_key": "k"}}
    )
    table = re.findall(r"^\| `([a-z_.\[\]]+)`", _section(3), re.M)
    keys = {part for row in table for part in re.split(r"` / `|`, `", row)}
    for key in keys:
        head, _, rest = key.removesuffix("[]").partition(".")
        assert head in GatewayConfig.model_fields, f"the guide documents unknown key {key!r}"
        if rest:
            nested = GatewayConfig.model_fields[head].annotation
            assert rest in nested.model_fields, f"the guide documents unknown key {key!r}"  # type: ignore[union-attr]
    undocumented = set(example) - {k.partition(".")[0].removesuffix("[]") for k in keys}
    assert not undocumented, f"example keys missing from the table: {undocumented}"


def test_following_the_guide_brings_a_phantom_result_into_the_pacs(
    national: National, orthanc_factory: Any, tmp_path: Path
) -> None:
    gateway_port, metrics_port = free_port(), free_port()
    pacs = orthanc_factory({"aifi": ("AIFI_GW", gateway_port)})

    # Section 2: the key in a file of its own, mode 0600; section 3: the example, filled in.
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    key_file = etc / "exchange.key"
    key_file.write_text(national.hospital_key + "\n")
    key_file.chmod(0o600)
    config = _example_config()
    config["hospital"] = HOSPITAL
    config["workdir"] = str(tmp_path / "workdir")
    config["secret_file"] = str(etc / "pseudonym.key")
    config["exchange"] = {"url": national.exchange.url, "api_key_file": str(key_file)}
    config["dicom"].update(host="127.0.0.1", port=gateway_port)
    [destination] = config["pacs"]
    destination.update(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.dicom_port)
    config["metrics_port"] = metrics_port  # section 8
    config_file = etc / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))

    gateway = subprocess.Popen(
        [sys.executable, "-m", "aifi.cli", "gateway", "--config", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert gateway.stdout is not None
        for line in gateway.stdout:  # the gateway prints a line once it listens
            if "listening on" in line:
                break
        else:
            raise AssertionError(f"gateway did not start (exit {gateway.wait()})")
        # "On its first start the gateway creates the pseudonymisation secret … mode 0600".
        assert stat.S_IMODE(os.stat(etc / "pseudonym.key").st_mode) == 0o600

        # Section 4: echo, a phantom, and storescu as the PACS — each command as printed.
        phantom = tmp_path / "phantom"
        [echo] = _commands(4, "echoscu")
        [make_phantom] = _commands(4, "aifi phantom")
        [send] = _commands(4, "storescu")
        echoscu = require_executable("echoscu", "dcmtk")
        storescu = require_executable("storescu", "dcmtk")
        subprocess.run(
            [echoscu, *_at_site(echo, gateway_port, phantom)[1:]], check=True, timeout=30
        )
        subprocess.run(
            [sys.executable, "-m", "aifi.cli", *_at_site(make_phantom, gateway_port, phantom)[1:]],
            check=True,
            capture_output=True,
            timeout=120,
        )
        sent = _at_site(send, gateway_port, phantom)
        files = [Path(word) for word in sent if word.endswith(".dcm")]
        assert files, f"the guide's storescu command names no files: {shlex.join(send)}"
        subprocess.run([storescu, *sent[1:]], check=True, capture_output=True, timeout=300)

        # "look for the result series in the PACS a little later".
        with national.api() as api:
            done = api.get("/jobs", params={"acknowledged": "true", "wait": 120}).json()
            assert len(done) == 1, api.get("/jobs").json()
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        found = httpx.post(
            pacs.url + "/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": header.StudyInstanceUID}},
        ).json()
        sop_classes = [
            httpx.get(f"{pacs.url}/instances/{instance}/simplified-tags").json()["SOPClassUID"]
            for instance in found
        ]
        assert sop_classes.count(COMPREHENSIVE_3D_SR) == 1

        # Section 8: every gateway metric the monitoring table names is exported.
        exposition = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        exported = set(re.findall(r"^# TYPE (\S+)", exposition, re.M))
        named = set(re.findall(r"`(aifi_gateway_\w+)", _section(8)))
        assert named and named - exported == set(), sorted(exported)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
