"""Re-identification of results: the pseudonymised study becomes the hospital's study again.

Every UID the vault knows is mapped back (study, series, referenced instances), and the
patient and study identifiers are restored, so the result lands in the original study in the
PACS. UIDs the vendor created for its own objects are kept: they identify nobody.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from aifi.gateway.vault import Vault

#: Marks of de-identification that no longer hold once identity is restored.
DEID_MARKS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)


class ReidentificationError(RuntimeError):
    """The result cannot be mapped back (its study is not one this gateway sent)."""


def _uid_values(ds: Dataset, found: set[str]) -> None:
    for element in ds:
        if element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            found.update(str(v) for v in values)
        elif element.VR == "SQ":
            for item in element.value:
                _uid_values(item, found)


def _replace_uids(ds: Dataset, mapping: dict[str, str]) -> None:
    for element in ds:
        if element.VR == "UI" and element.value:
            if element.VM > 1:
                element.value = [mapping.get(str(v), str(v)) for v in element.value]
            else:
                element.value = mapping.get(str(element.value), str(element.value))
        elif element.VR == "SQ":
            for item in element.value:
                _replace_uids(item, mapping)


def _in_utf8(ds: Dataset) -> None:
    """Re-encode `ds` in UTF-8 (ISO_IR 192), so that a patient's name the result's own
    character set cannot hold ("Łukasz" in ISO_IR 100, "Müller" in the default repertoire of a
    result that declares none) is stored as it is, not with "?" in its place.

    Every text element is first decoded under the set the product declared, so its own text
    (findings, descriptions) is written again in UTF-8, not left in the old bytes.
    """
    declared = ds.get("SpecificCharacterSet", "")
    if (declared if isinstance(declared, str) else "\\".join(declared)) == "ISO_IR 192":
        return
    ds.decode()
    ds.SpecificCharacterSet = "ISO_IR 192"


def reidentify(ds: Dataset, vault: Vault, *, original_study_uid: str | None = None) -> Dataset:
    """Map `ds` (a result for a study this gateway sent) back to the original study, in place.

    `original_study_uid`: the study of the job the result came with. A result must be about
    that study: re-identified as another, it would be filed under another patient.
    """
    pseudo_study = str(ds.get("StudyInstanceUID", ""))
    known = vault.study(pseudo_study)
    if known is None:
        raise ReidentificationError(
            f"result study {pseudo_study} is not a study this gateway pseudonymised"
        )
    study_uid, attributes = known
    if original_study_uid is not None and study_uid != original_study_uid:
        raise ReidentificationError(
            f"result study {pseudo_study} is not the study of the job it came with"
        )
    found: set[str] = set()
    _uid_values(ds, found)
    mapping = vault.original_uids(found)
    _refuse_reused_uids(ds, mapping)
    mapping[pseudo_study] = study_uid
    _replace_uids(ds, mapping)
    restored = {k: v for k, v in attributes.items() if k != "StudyInstanceUID"}
    if not all(value.isascii() for value in restored.values()):
        _in_utf8(ds)
    for keyword, value in restored.items():
        setattr(ds, keyword, value)
    for keyword in DEID_MARKS:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _refuse_reused_uids(ds: Dataset, mapping: dict[str, str]) -> None:
    """A result is a new object in a series of its own. One that took an input's SOP Instance
    UID would be mapped onto the hospital's image (the PACS keeps one of the two, or shows an
    AI object as part of the acquisition); one in an input's series would be filed among the
    images as they were acquired."""
    for keyword, what in (("SOPInstanceUID", "an instance"), ("SeriesInstanceUID", "a series")):
        if str(ds.get(keyword, "")) in mapping:
            raise ReidentificationError(
                f"the result's {keyword} is that of {what} of the study as sent: a result "
                "needs UIDs of its own"
            )


def reidentify_file(
    source: Path, target: Path, vault: Vault, *, original_study_uid: str | None = None
) -> str:
    """Write the re-identified copy of `source` to `target`; returns its SOP Instance UID."""
    ds = pydicom.dcmread(source)
    reidentify(ds, vault, original_study_uid=original_study_uid)
    partial = target.with_name(target.name + ".part")
    try:
        ds.save_as(partial, enforce_file_format=True)
    except BaseException:  # a full disk: no half-written result stays to take up its room
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return str(ds.SOPInstanceUID)
