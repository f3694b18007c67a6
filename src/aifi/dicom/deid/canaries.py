"""Leak testing: a CT instance in which every Table E.1-1 attribute, private element, nested
sequence, SR content item, overlay and curve carries a unique canary value.

A check (the test suite, or a gateway's self-test before it goes live) de-identifies the
instance, decides from the table and the option set which canaries the profile must remove, and
looks for each in the output *bytes*: a value that survives in any form (nested, re-encoded,
moved) is found. Canaries are fixed-width so that no canary is a prefix of another.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from aifi.dicom.deid import OPTION_NAMES
from aifi.dicom.deid.table import Action, ProfileRow, load_table

#: Attributes the generator sets itself (the instance must stay a valid CT image).
_STRUCTURAL = {0x00080016, 0x00080018, 0x0020000D, 0x0020000E}
_FIRST_DATE = dt.date(1951, 1, 1)  # shifted dates move back, away from all canary dates


@dataclass(frozen=True)
class Canary:
    """One planted value: where, what bytes to look for, and which row governs it."""

    where: str
    token: bytes
    row: ProfileRow | None  # None: governed by a rule outside the table (private, nested …)
    kind: str  # "row", "nested-neutral", "nested-identity", "nested-uid", "private", …


@dataclass
class CanaryInstance:
    dataset: Dataset
    canaries: list[Canary] = field(default_factory=list)
    patient_name: str = ""
    patient_id: str = ""


def _token(prefix: str, index: int) -> str:
    return f"{prefix}{index:04d}ARY"  # 11 characters: fits SH, AE and CS


def _uid(branch: int, index: int) -> str:
    return f"1.2.826.0.1.3680043.10.{branch}.{index + 1000:04d}7"


def _value_for(vr: str, index: int) -> tuple[object, bytes]:
    """A canary value of the VR and the bytes that betray it."""
    vr = vr.split(" ")[0]
    if vr in {"AE", "CS", "SH", "LO", "LT", "ST", "UT", "UC", "PN"}:
        text = _token("CAN", index)
        return text, text.encode()
    if vr == "UR":
        text = "urn:" + _token("CAN", index)
        return text, _token("CAN", index).encode()
    if vr == "UI":
        text = _uid(999, index)
        return text, text.encode()
    if vr == "DA":
        text = (_FIRST_DATE + dt.timedelta(days=index)).strftime("%Y%m%d")
        return text, text.encode()
    if vr == "DT":
        text = (_FIRST_DATE + dt.timedelta(days=index)).strftime("%Y%m%d") + "101010"
        return text, text.encode()
    if vr == "TM":
        text = f"111111.{index:04d}"
        return text, text.encode()
    if vr == "DS":
        text = f"{index:04d}.97531"
        return text, text.encode()
    if vr == "IS":
        text = f"97{index:04d}"
        return text, text.encode()
    if vr == "AS":
        return f"{index % 1000:03d}W", b""  # too short to find reliably: checked by value
    if vr in {"OB", "OW", "UN", "OF", "OD", "OL", "OV"}:
        text = _token("BIN", index) + "X"  # even length
        return text.encode(), text.encode()
    if vr in {"US", "SS", "UL", "SL"}:
        return 30000 + index % 1000, b""
    if vr in {"FL", "FD"}:
        return 1000.0 + index, b""
    raise ValueError(f"no canary for VR {vr}")


def _item(index: int, instance: CanaryInstance, row: ProfileRow) -> Dataset:
    """A sequence item with a neutral value, a person's name and a reference UID inside."""
    item = Dataset()
    item.CodeValue = _token("NEU", index)
    item.CodingSchemeDesignator = "99CANARY"
    item.CodeMeaning = _token("NEU", index)
    item.PersonName = _token("NPN", index)
    item.ReferencedSOPInstanceUID = _uid(998, index)
    instance.canaries += [
        Canary(f"{row.name} > item value", item.CodeValue.encode(), row, "nested-neutral"),
        Canary(f"{row.name} > Person Name", item.PersonName.encode(), row, "nested-identity"),
        Canary(
            f"{row.name} > Referenced SOP Instance UID",
            item.ReferencedSOPInstanceUID.encode(),
            row,
            "nested-uid",
        ),
    ]
    return item


def _sr_content(instance: CanaryInstance, row: ProfileRow) -> Sequence:
    """SR content: TEXT, PNAME, DATE, UIDREF and a nested CONTAINER, each with a canary."""

    def concept(meaning: str) -> Sequence:
        code = Dataset()
        code.CodeValue = "121071"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        return Sequence([code])

    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.ConceptNameCodeSequence = concept("Finding")
    text.TextValue = "SRTEXT0001ARY"
    person = Dataset()
    person.RelationshipType = "HAS OBS CONTEXT"
    person.ValueType = "PNAME"
    person.ConceptNameCodeSequence = concept("Person")
    person.PersonName = "SRPNAM0001ARY"
    date = Dataset()
    date.RelationshipType = "HAS OBS CONTEXT"
    date.ValueType = "DATE"
    date.ConceptNameCodeSequence = concept("Date")
    date.Date = "19520303"
    uidref = Dataset()
    uidref.RelationshipType = "HAS OBS CONTEXT"
    uidref.ValueType = "UIDREF"
    uidref.ConceptNameCodeSequence = concept("UID")
    uidref.UID = _uid(997, 1)
    container = Dataset()
    container.RelationshipType = "CONTAINS"
    container.ValueType = "CONTAINER"
    container.ConceptNameCodeSequence = concept("Nested")
    container.ContinuityOfContent = "SEPARATE"
    nested = Dataset()
    nested.RelationshipType = "CONTAINS"
    nested.ValueType = "TEXT"
    nested.ConceptNameCodeSequence = concept("Finding")
    nested.TextValue = "SRTEXT0002ARY"
    container.ContentSequence = Sequence([nested])
    instance.canaries += [
        Canary("SR TEXT", b"SRTEXT0001ARY", row, "sr-text"),
        Canary("SR nested TEXT", b"SRTEXT0002ARY", row, "sr-text"),
        Canary("SR PNAME", b"SRPNAM0001ARY", row, "nested-identity"),
        Canary("SR DATE", b"19520303", row, "sr-date"),
        Canary("SR UIDREF", _uid(997, 1).encode(), row, "nested-uid"),
    ]
    return Sequence([text, person, date, uidref, container])


def _private(ds: Dataset, instance: CanaryInstance) -> None:
    """An unknown vendor's block with text and a nested sequence, and a safe-listed block."""
    block = ds.private_block(0x0099, "CANARY VENDOR", create=True)
    block.add_new(0x01, "LO", "PRIV0001ARY")
    block.add_new(0x02, "UT", "PRIV0002ARY")
    inner = Dataset()
    inner.add_new(0x00100010, "PN", "PRIV0003ARY")
    block.add_new(0x03, "SQ", Sequence([inner]))
    safe = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    safe.add_new(0x0C, "IS", "1000")
    safe.add_new(0x0D, "CS", "PRIVSAFE1ARY")  # listed as safe: kept under Retain Safe Private
    unsafe_same_block = ds.private_block(0x0019, "SIEMENS MR HEADER")
    unsafe_same_block.add_new(0x99, "LO", "PRIV0004ARY")
    instance.canaries += [
        Canary("private LO", b"PRIV0001ARY", None, "private"),
        Canary("private UT", b"PRIV0002ARY", None, "private"),
        Canary("private nested PN", b"PRIV0003ARY", None, "private"),
        Canary("private unlisted element in a safe block", b"PRIV0004ARY", None, "private"),
        Canary("safe private element", b"PRIVSAFE1ARY", None, "private-safe"),
        Canary("private creator", b"CANARY VENDOR", None, "private"),
    ]


def _overlays_and_curves(ds: Dataset, instance: CanaryInstance) -> None:
    table = load_table()
    for group, kind in ((0x6000, "R"), (0x6002, "G")):
        ds.add_new((group, 0x0010), "US", 4)
        ds.add_new((group, 0x0011), "US", 4)
        ds.add_new((group, 0x0022), "LO", f"OVLDESC{group:04X}")
        ds.add_new((group, 0x0040), "CS", kind)
        ds.add_new((group, 0x0050), "SS", [1, 1])
        ds.add_new((group, 0x0100), "US", 1)
        ds.add_new((group, 0x0102), "US", 0)
        ds.add_new((group, 0x1500), "LO", f"OVLLABL{group:04X}")
        ds.add_new((group, 0x3000), "OW", f"OVLDATA{group:04X}X".encode())
        ds.add_new((group, 0x4000), "LT", f"OVLCOMM{group:04X}")
        for what in ("DESC", "LABL", "COMM"):
            instance.canaries.append(
                Canary(
                    f"overlay {group:04X} {what}",
                    f"OVL{what}{group:04X}".encode(),
                    table.overlay_data,
                    f"overlay-text-{kind}",
                )
            )
        instance.canaries.append(
            Canary(
                f"overlay {group:04X} data",
                f"OVLDATA{group:04X}".encode(),
                table.overlay_data,
                f"overlay-data-{kind}",
            )
        )
    ds.add_new(0x50000005, "US", 2)
    ds.add_new(0x50002500, "LO", "CURVLABL01ARY")
    ds.add_new(0x50003000, "OB", b"CURVDATA01ARYX")
    instance.canaries += [
        Canary("curve label", b"CURVLABL01ARY", table.curve, "curve-text"),
        Canary("curve data", b"CURVDATA01ARYX", table.curve, "curve-data"),
    ]


def _unlisted_nesting(ds: Dataset, instance: CanaryInstance) -> None:
    """Sequences the table does not list (kept) holding what it does list, three levels deep:
    a multi-frame's functional groups > derivation > source image reference, and a referenced
    series with a person's name where none belongs."""
    source = Dataset()
    source.ReferencedSOPClassUID = CTImageStorage
    source.ReferencedSOPInstanceUID = _uid(995, 1)
    derivation = Dataset()
    derivation.SourceImageSequence = Sequence([source])
    derivation.DerivationDescription = "DERIVDESC1ARY"
    frame = Dataset()
    frame.DerivationImageSequence = Sequence([derivation])
    content = Dataset()
    content.FrameAcquisitionDateTime = "19530101101010"
    frame.FrameContentSequence = Sequence([content])
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame])
    series = Dataset()
    series.SeriesInstanceUID = _uid(995, 2)
    series.PersonName = "UNLPNAME1ARY"
    ds.ReferencedSeriesSequence = Sequence([series])
    instance.canaries += [
        Canary("functional groups > source image UID", _uid(995, 1).encode(), None, "nested-uid"),
        Canary("referenced series UID", _uid(995, 2).encode(), None, "nested-uid"),
        Canary("referenced series > person name", b"UNLPNAME1ARY", None, "nested-identity"),
        Canary("functional groups > frame datetime", b"19530101101010", None, "nested-date"),
        Canary("functional groups > derivation description", b"DERIVDESC1ARY", None, "nested-desc"),
    ]


def _base_ct() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _uid(996, 1)
    ds.StudyInstanceUID = _uid(996, 2)
    ds.SeriesInstanceUID = _uid(996, 3)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    return ds


def canary_instance() -> CanaryInstance:
    """The CT instance with a canary in every place the profile governs."""
    table = load_table()
    ds = _base_ct()
    instance = CanaryInstance(ds)
    for index, (tag, row) in enumerate(sorted(table.by_tag.items()), start=1):
        if tag in _STRUCTURAL or tag >> 16 in (0x0000, 0x0002):  # command / meta groups
            continue
        vr = dictionary_VR(tag)
        if vr == "SQ":
            if tag == 0x0040A730:  # Content Sequence: an SR tree
                ds.add_new(tag, "SQ", _sr_content(instance, row))
            else:
                ds.add_new(tag, "SQ", Sequence([_item(index, instance, row)]))
            continue
        value, token = _value_for(vr, index)
        ds.add_new(tag, vr.split(" ")[0], value)
        instance.canaries.append(Canary(row.name, token, row, "row"))
    instance.patient_name = str(ds.PatientName)
    instance.patient_id = str(ds.PatientID)
    _private(ds, instance)
    _overlays_and_curves(ds, instance)
    _unlisted_nesting(ds, instance)
    return instance


def must_be_removed(canary: Canary, options: frozenset[str]) -> bool:
    """Whether the profile under `options` must leave no trace of the canary's bytes.

    This is the specification side of the test, written from PS3.15 E.3 rather than from the
    engine: K keeps; C keeps the meaning (a canary token is not identity, so cleaned text may
    keep it), except that C moves dates (Modified Dates) and replaces UIDs, AE titles and
    names; everything else (D, Z, X, U and their combinations) removes the original.
    """
    kind = canary.kind
    if kind == "private":
        return True
    if kind == "private-safe":
        return "retain-safe-private" not in options
    if kind == "nested-identity":
        return True  # person names have no option that keeps them
    if kind == "nested-uid":
        return "retain-uids" not in options
    if kind == "nested-date":
        return "retain-long-full-dates" not in options
    if kind == "nested-desc":
        return "clean-descriptors" not in options
    row = canary.row
    assert row is not None
    action = row.action_for(options)
    if kind == "nested-neutral":
        # A coded value inside a sequence goes only with the sequence (X, Z): K, C, D (items
        # kept, their listed attributes replaced) and the references of X/Z/U* keep it.
        return action in {Action.X, Action.Z, Action.X_Z}
    if kind == "sr-text":
        # Free text in SR content: a dummy under D, cleaned (not removed) under C, kept under K.
        return action not in {Action.K, Action.C}
    if kind == "sr-date":
        return "retain-long-full-dates" not in options  # D removes it, C shifts it
    if kind.startswith("overlay-") or kind.startswith("curve-"):
        if action is not Action.C:
            return True
        return kind == "overlay-data-G" or kind == "overlay-text-G"
    vr = dictionary_VR(_tag_of(row)).split(" ")[0]
    if action is Action.K:
        return False
    if action is Action.C:
        return vr in {"DA", "DT", "UI", "AE", "PN"}
    return True


def _tag_of(row: ProfileRow) -> int:
    return int(row.tag_text[1:5] + row.tag_text[6:10], 16)


def find_leaks(output: bytes, canaries: list[Canary], options: frozenset[str]) -> list[str]:
    """Where each canary the profile must remove still shows in `output` (empty: no leak)."""
    return [
        c.where for c in canaries if c.token and must_be_removed(c, options) and c.token in output
    ]


def option_sets_in_use() -> list[frozenset[str]]:
    """The option sets products use (the issue's list), plus each option alone."""
    sets = [
        frozenset(),
        frozenset({"retain-patient-characteristics"}),
        frozenset({"retain-long-modified-dates"}),
        frozenset({"retain-patient-characteristics", "retain-long-modified-dates"}),
        frozenset({"clean-descriptors"}),
    ]
    for name in sorted(OPTION_NAMES):
        if frozenset({name}) not in sets:
            sets.append(frozenset({name}))
    sets.append(frozenset(OPTION_NAMES) - {"retain-long-full-dates"})
    return sets
