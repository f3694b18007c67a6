"""The gateway as the guide's service account runs it (`useradd --system --no-create-home`):
its commands say nothing of the home it lacks, and the running gateway draws its key images
with matplotlib's folder in its workdir instead of a temporary one made at every start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from aifi.phantoms import write_study
from aifi.results.key_image import MATPLOTLIB_FOLDER
from support.peers import free_port

#: What matplotlib logs when it cannot use the home's folders (it then makes a temporary one).
HOMELESS_WARNINGS = ("Matplotlib created a temporary", "mkdir -p failed", "not a writable")


def homeless(tmp_path: Path) -> dict[str, str]:
    """The environment of a service account without a home: HOME names a folder that is not
    there and cannot be made, not even by root (it would lie under a file)."""
    (tmp_path / "a-file").write_text("")
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    }
    env["HOME"] = str(tmp_path / "a-file" / "aifi")
    return env


def test_the_gateway_commands_say_nothing_of_a_home_they_lack(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hospital": "hospital-a",
                "workdir": str(tmp_path / "gateway"),
                "exchange": {"url": f"http://127.0.0.1:{free_port()}", "api_key": "aifi_unused"},
                "dicom": {"host": "127.0.0.1", "port": free_port()},
                "pacs": [
                    {"name": "main", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}
                ],
            }
        )
    )
    env = homeless(tmp_path)
    for command in (["gateway", "--check"], ["gateway-jobs"]):
        ran = subprocess.run(
            [sys.executable, "-m", "aifi.cli", *command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert ran.stdout, (command, ran.stderr)  # it ran: a table, or why it could not read
        assert "matplotlib" not in (ran.stdout + ran.stderr).lower(), (command, ran.stderr)


DRAW = """
import sys
from pathlib import Path

import pydicom

from aifi.results.key_image import render_key_image, use_matplotlib_folder

workdir, image = Path(sys.argv[1]), Path(sys.argv[2])
use_matplotlib_folder(workdir)  # as `aifi gateway` does before it starts
render_key_image(pydicom.dcmread(image), None, workdir / "key-image.png")
"""


def test_the_gateway_draws_with_matplotlib_s_folder_in_its_workdir(tmp_path: Path) -> None:
    write_study("ct-head", tmp_path / "study", seed=1, size="small")
    image = sorted((tmp_path / "study").rglob("*.dcm"))[0]

    def draw(workdir: Path, env: dict[str, str]) -> None:
        workdir.mkdir(mode=0o700)
        ran = subprocess.run(
            [sys.executable, "-c", DRAW, str(workdir), str(image)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert ran.returncode == 0, ran.stderr
        assert not [said for said in HOMELESS_WARNINGS if said in ran.stderr], ran.stderr
        assert (workdir / "key-image.png").is_file()

    draw(tmp_path / "homeless", homeless(tmp_path))
    assert (tmp_path / "homeless" / MATPLOTLIB_FOLDER).is_dir()
    # A home the account can write is left to matplotlib as it is.
    home = tmp_path / "home"
    home.mkdir()
    draw(tmp_path / "at-home", {**homeless(tmp_path), "HOME": str(home)})
    assert not (tmp_path / "at-home" / MATPLOTLIB_FOLDER).exists()
    assert (home / ".config" / "matplotlib").is_dir()
