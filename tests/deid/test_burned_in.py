"""Burned-in text is never sent silently: refused, or blanked where the hospital said."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit

from aifi.dicom.deid import (
    BURNED_IN_SOP_CLASSES,
    DOCUMENT_SOP_CLASSES,
    Deidentifier,
    DeidRefused,
)
from aifi.dicom.pseudonym import PseudonymKey

US = "1.2.840.10008.5.1.4.1.1.6.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
CLEAN = {"clean-pixel-data"}
REGIONS = [(2, 1, 4, 3)]


def _refusal(key: PseudonymKey, ds) -> str:
    with pytest.raises(DeidRefused) as caught:
        Deidentifier(key).deidentify_dataset(ds)
    return caught.value.reason


@pytest.mark.parametrize(
    ("attributes", "rule"),
    [
        ({"BurnedInAnnotation": "YES"}, "Burned In Annotation (0028,0301) is YES"),
        ({"sop_class": SC}, "Secondary Capture Image"),
        ({"sop_class": US}, "Ultrasound Image"),
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.3.1"}, "Ultrasound Multi-frame"),
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.77.1.4"}, "VL Photographic"),
        ({"sop_class": WSI, "ImageType": ["ORIGINAL", "PRIMARY", "LABEL"]}, "LABEL"),
        ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, "SCREEN SAVE"),
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.104.1"}, "Encapsulated PDF"),
    ],
)
def test_refused_with_a_reason_that_names_the_rule(
    attributes: dict, rule: str, key: PseudonymKey, make_instance
) -> None:
    ds = make_instance(**attributes)
    before = ds.to_json_dict()
    reason = _refusal(key, ds)
    assert rule in reason
    assert "Jansen" not in reason and "PID-4711" not in reason
    assert ds.to_json_dict() == before  # a refused dataset is left untouched


def test_ordinary_images_and_wsi_volumes_pass(key: PseudonymKey, make_instance) -> None:
    Deidentifier(key).deidentify_dataset(make_instance(BurnedInAnnotation="NO"))
    Deidentifier(key).deidentify_dataset(
        make_instance(sop_class=WSI, ImageType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"])
    )


def test_class_lists_are_documented() -> None:
    assert SC in BURNED_IN_SOP_CLASSES and US in BURNED_IN_SOP_CLASSES
    assert "1.2.840.10008.5.1.4.1.1.104.2" in DOCUMENT_SOP_CLASSES
    assert all(reason for reason in BURNED_IN_SOP_CLASSES.values())


def test_regions_without_the_option_still_refuse(key: PseudonymKey, make_instance) -> None:
    with pytest.raises(DeidRefused, match="clean-pixel-data"):
        Deidentifier(key, clean_pixel_regions=REGIONS).deidentify_dataset(
            make_instance(sop_class=US)
        )
    with pytest.raises(DeidRefused, match="clean-pixel-data"):
        Deidentifier(key, CLEAN).deidentify_dataset(make_instance(sop_class=US))


def _expected_blank(pixels: np.ndarray) -> np.ndarray:
    out = pixels.copy()
    out[..., 1:4, 2:6, :] = 0
    return out


@pytest.mark.parametrize(
    ("samples", "planar", "bits", "frames"),
    [(1, 0, 16, 1), (1, 0, 8, 3), (3, 0, 8, 2), (3, 1, 8, 2)],
    ids=["mono16", "mono8-multiframe", "rgb-interleaved", "rgb-planar"],
)
def test_regions_are_blanked_in_every_frame(
    samples: int,
    planar: int,
    bits: int,
    frames: int,
    key: PseudonymKey,
    write_instance,
    tmp_path: Path,
) -> None:
    src = write_instance(
        sop_class=US, samples=samples, planar=planar, bits=bits, frames=frames, rows=8, columns=10
    )
    original = pydicom.dcmread(src).pixel_array.reshape(frames, 8, 10, samples)
    engine = Deidentifier(key, CLEAN, clean_pixel_regions=REGIONS)

    result = engine.deidentify_file(src, tmp_path / "out.dcm")
    in_memory = pydicom.dcmread(src)
    engine.deidentify_dataset(in_memory)

    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert result.pixels_cleaned and out.BurnedInAnnotation == "NO"
    expected = _expected_blank(original)
    assert np.array_equal(out.pixel_array.reshape(expected.shape), expected)
    assert np.array_equal(in_memory.pixel_array.reshape(expected.shape), expected)
    assert original[..., 1:4, 2:6, :].any()  # the test would notice if nothing were blanked


def test_compressed_pixel_data_is_refused_for_cleaning(key: PseudonymKey, make_instance):
    ds = make_instance(sop_class=US)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    with pytest.raises(DeidRefused, match="compressed"):
        Deidentifier(key, CLEAN, clean_pixel_regions=REGIONS).deidentify_dataset(ds)


def test_documents_are_refused_even_with_cleaning(key: PseudonymKey, make_instance) -> None:
    ds = make_instance(sop_class="1.2.840.10008.5.1.4.1.1.104.1")
    with pytest.raises(DeidRefused, match="Encapsulated PDF"):
        Deidentifier(key, CLEAN, clean_pixel_regions=REGIONS).deidentify_dataset(ds)


def test_recognizable_features_refused_when_cleaning_them_is_asked(key, make_instance):
    ds = make_instance(RecognizableVisualFeatures="YES")
    Deidentifier(key).deidentify_dataset(copy.deepcopy(ds))  # without the option: sent
    with pytest.raises(DeidRefused, match="deface"):
        Deidentifier(key, {"clean-recognizable-visual-features"}).deidentify_dataset(ds)


@pytest.mark.parametrize("region", [(0, 0, 0, 4), (-1, 0, 2, 2), (1, 2, 3)])
def test_malformed_regions_are_rejected(region, key: PseudonymKey) -> None:
    with pytest.raises(ValueError, match="clean_pixel_regions"):
        Deidentifier(key, CLEAN, clean_pixel_regions=[region])
