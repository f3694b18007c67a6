"""Every DICOM file pydicom and pydicom-data ship: no crash, no leak.

A clean DeidError (malformed, not an instance) or DeidRefused (burned-in rules) is a correct
answer; anything else raised is a crash. For every output written, the source's Patient's Name
and Patient ID (where non-trivial) must be absent from the output bytes.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pydicom
import pytest

from aifi.dicom.deid import Deidentifier, DeidError, DeidRefused
from aifi.dicom.pseudonym import PseudonymKey

#: Values too short or too generic to search for in bytes without false alarms.
_TRIVIAL = {"", "anonymous", "anonymized", "none", "unknown", "test", "id", "0", "1"}


def _corpus() -> list[Path]:
    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    roots.append(Path(pydicom.data.__file__).parent / "charset_files")
    spec = importlib.util.find_spec("data_store")  # the pydicom-data package
    if spec is None or spec.origin is None:
        pytest.fail("pydicom-data is not installed in this environment")
    roots.append(Path(spec.origin).parent / "data")
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


CORPUS = _corpus()

ENGINES = {
    "basic": ({}, None),
    "pixel-cleaning": (
        {
            "clean-pixel-data",
            "retain-safe-private",
            "clean-descriptors",
            "clean-structured-content",
            "clean-graphics",
            "retain-long-modified-dates",
            "retain-patient-characteristics",
        },
        [(0, 0, 8, 4)],
    ),
}


def _identity_needles(src: Path) -> list[bytes]:
    """The source's name and ID as stored (raw bytes), where worth searching for."""
    try:
        ds = pydicom.dcmread(src, stop_before_pixels=True, force=True)
    except Exception:
        return []
    needles = []
    for keyword in ("PatientName", "PatientID"):
        raw = ds.get_item(keyword) if keyword in ds else None
        value = bytes(raw.value or b"") if raw is not None and raw.is_raw else b""
        value = value.strip(b" \x00")
        long_enough = len(value) >= (6 if value.isdigit() else 4)  # short numbers occur anyway
        if long_enough and value.decode("latin-1").lower() not in _TRIVIAL:
            needles.append(value)
    return needles


def test_corpus_is_there() -> None:
    assert len(CORPUS) > 150
    assert any(p.parent.name == "data" for p in CORPUS)  # pydicom-data's own files


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
def test_no_crash_and_no_leak_over_the_corpus(
    engine_name: str, key: PseudonymKey, tmp_path: Path
) -> None:
    options, regions = ENGINES[engine_name]
    engine = Deidentifier(key, options, clean_pixel_regions=regions)
    crashes, leaks, written, searched, pixels_compared = [], [], 0, 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for src in CORPUS:
            dst = tmp_path / "out.dcm"
            try:
                engine.deidentify_file(src, dst)
            except (DeidError, DeidRefused):
                continue
            except Exception as exc:  # the point of the test: nothing else may escape
                crashes.append(f"{src.name}: {type(exc).__name__}: {exc}")
                continue
            written += 1
            output = dst.read_bytes()
            out = pydicom.dcmread(dst)
            assert out.PatientIdentityRemoved == "YES", src.name
            if not regions:  # pixel data is streamed across byte for byte
                source = pydicom.dcmread(src, force=True)
                assert out.get("PixelData") == source.get("PixelData"), src.name
                if "PixelData" in source:
                    pixels_compared += 1
            needles = _identity_needles(src)
            searched += len(needles)
            leaks += [f"{src.name}: {n!r}" for n in needles if n in output]
    assert crashes == []
    assert leaks == []
    assert written > 100
    assert searched > 100  # the leak check had real identities to look for
    assert regions or pixels_compared > 50
