"""The de-identification engine: Table E.1-1 applied to a dataset, with keyed pseudonyms.

One `Deidentifier` holds a hospital's key and the option set a product needs; it resolves the
table once for those options and then applies it to every instance (at every sequence depth),
records what it replaced (for the gateway's vault) and marks the output as de-identified.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pydicom.datadict import DicomDictionary, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    UID_dictionary,
)

from aifi.dicom.deid.burned_in import burned_in_reason, document_reason
from aifi.dicom.deid.elements import (
    STRING_VRS,
    Element,
    decode_text,
    element_store,
    element_vr,
    peek_text,
    remove,
    set_empty,
    set_one_empty_item,
    set_text,
    tags_of,
)
from aifi.dicom.deid.errors import DeidError, DeidRefused
from aifi.dicom.deid.iod import conditional_action, iod_attribute_types
from aifi.dicom.deid.marking import mark_deidentified, marking_raw_elements
from aifi.dicom.deid.options import validate_options
from aifi.dicom.deid.pixels import Region, blank_dataset_pixels, native_layout, parse_regions
from aifi.dicom.deid.private import SAFE_PRIVATE_ATTRIBUTES
from aifi.dicom.deid.table import CONDITIONAL_ACTIONS, Action, load_table
from aifi.dicom.deid.values import FREE_TEXT_VRS, TEXT_VRS, TextCleaner, dummy_value, shift_date
from aifi.dicom.deid.values import shift_datetime as shift_dt
from aifi.dicom.deid.writer import IMPLEMENTATION_VERSION_NAME
from aifi.dicom.pseudonym import PseudonymKey

#: The originals the vault keeps so results can be re-identified (top-level keywords).
ORIGINAL_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
    "InstitutionName",
)

_ORIGINAL_TAGS = tuple((k, int(tag_for_keyword(k) or 0)) for k in ORIGINAL_KEYWORDS)
#: VRs whose "C" needs the text cleaner (sequences: free text inside them is cleaned).
_CLEANED_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT", "CS", "UR", "SQ"})
#: What happens to free text that Table E.1-1 does not list, inside a sequence.
KEEP_TEXT, CLEAN_TEXT, DUMMY_TEXT = "keep", "clean", "dummy"
_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_ACCESSION = 0x00080050
_OVERLAY_DATA = 0x3000
_OVERLAY_COMMENTS = 0x4000
_OVERLAY_TYPE = 0x0040
_OVERLAY_TEXT = frozenset({0x0022, 0x1500, 0x4000})  # description, label, comments

#: Unlisted UI attributes that name a kind of thing (class, syntax, scheme), not an instance.
_KEEP_UID_KEYWORDS = frozenset(
    {
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "ContextUID",
        "MappingResourceUID",
        "CreatorVersionUID",
        "SegmentationTemplateUID",
    }
)
_KEEP_UID_PARTS = ("SOPClass", "TransferSyntax")

#: Text attributes whose original values identify someone: their words are scrubbed from
#: descriptors under the clean options.
_IDENTITY_WORDS = ("Name", "ID", "IDs", "Address", "Telephone", "Number", "Locator", "BirthDate")


class DeidOptions(frozenset[str]):
    """A validated set of option identifiers (see `OPTION_NAMES`); raises ValueError if not."""

    def __new__(cls, options: Iterable[str] = ()) -> DeidOptions:
        return super().__new__(cls, validate_options(options))


@dataclass(frozen=True)
class DeidResult:
    """What the engine replaced in one instance: the vault's re-identification record.

    `uid_map` maps every original UID to its pseudonym; `original_patient` holds the originals
    (DICOM JSON-friendly strings keyed by keyword) of the patient and study attributes a result
    needs back; `date_shift_days` is set when dates were shifted (Modified Dates).
    """

    uid_map: dict[str, str]
    patient_pseudonym: str
    original_patient: dict[str, str]
    date_shift_days: int | None
    options: frozenset[str]
    pixels_cleaned: bool = False


@dataclass
class _Instance:
    """Per-instance working state."""

    patient_pseudonym: str
    shift_days: int
    iod_types: dict[int, str] | None
    uid_map: dict[str, str] = field(default_factory=dict)
    #: Identifying elements as they were before the walk changed them (for the text cleaner).
    identity: list[tuple[Dataset, Element]] = field(default_factory=list)
    #: Free text to clean once the walk has seen every identity (dataset, tag, VR).
    pending_text: list[tuple[Dataset, int, str]] = field(default_factory=list)


class Deidentifier:
    """Applies PS3.15 Annex E (Basic Profile plus exactly the given options) to instances.

    Parameters
    ----------
    key:
        The hospital's pseudonym key: the same key gives the same pseudonyms.
    options:
        Option identifiers (`OPTION_NAMES`); exactly these are applied, no more.
    clean_pixel_regions:
        Rectangles (x, y, w, h) to blank in instances with burned-in text; used only together
        with the option ``clean-pixel-data``.

    Raises
    ------
    ValueError
        An unknown or conflicting option, or a malformed region.
    """

    def __init__(
        self,
        key: PseudonymKey,
        options: Iterable[str] = frozenset(),
        clean_pixel_regions: Sequence[tuple[int, int, int, int]] | None = None,
    ) -> None:
        self.key = key
        self.options: frozenset[str] = DeidOptions(options)
        self.regions: tuple[Region, ...] = parse_regions(clean_pixel_regions)
        table = load_table()
        self._actions: dict[int, Action] = {
            tag: row.action_for(self.options) for tag, row in table.by_tag.items()
        }
        self._curve = table.curve.action_for(self.options)
        self._overlay_data = table.overlay_data.action_for(self.options)
        self._overlay_comments = table.overlay_comments.action_for(self.options)
        self._private = table.private.action_for(self.options)
        # Text cleaning needs the instance's identity words; collect them only if these
        # options clean some free text (not for dates or UIDs, which C shifts or remaps).
        self._cleans_text = any(
            action is Action.C and _dictionary_vr(tag) in _CLEANED_TEXT_VRS
            for tag, action in self._actions.items()
        ) or Action.C in (self._curve, self._overlay_comments, self._overlay_data)
        self._identity_tags = frozenset(
            tag
            for tag, action in self._actions.items()
            if action is not Action.K
            and (_is_identity_keyword(keyword_for_tag(tag)) or _dictionary_vr(tag) == "PN")
        )
        self._retain_uids = "retain-uids" in self.options
        self._shift_dates = "retain-long-modified-dates" in self.options

    # ------------------------------------------------------------------ public API

    def deidentify_dataset(self, ds: Dataset) -> DeidResult:
        """De-identify `ds` in place (pixel data included, if present) and mark it.

        Raises
        ------
        DeidRefused
            The instance may show identity in its pixels and cannot be cleaned as configured.
        DeidError
            The instance lacks what the engine needs (SOP Class UID, an identity to key on).
        """
        transfer_syntax = _transfer_syntax(ds)
        blank = self.pixel_cleaning_needed(ds, transfer_syntax)
        result = self.deidentify_header(ds, pixels_cleaned=blank)
        if blank and "PixelData" in ds:
            blank_dataset_pixels(ds, transfer_syntax, self.regions)
        return result

    def pixel_cleaning_needed(self, ds: Dataset, transfer_syntax: UID) -> bool:
        """Whether the regions must be blanked; DeidRefused if the instance must not go.

        Called before anything is changed, so a refused dataset is left untouched.
        """
        reason = document_reason(ds)
        if reason is not None:
            raise DeidRefused(reason)
        if "clean-recognizable-visual-features" in self.options and (
            "".join(peek_text(ds, 0x00280302)).upper() == "YES"
        ):
            raise DeidRefused(
                "Clean Recognizable Visual Features: Recognizable Visual Features (0028,0302) "
                "is YES and the engine does not deface images"
            )
        reason = burned_in_reason(ds)
        if reason is None:
            return False
        if "clean-pixel-data" not in self.options or not self.regions:
            raise DeidRefused(
                f"{reason}; to send such instances, configure the option 'clean-pixel-data' "
                "with the pixel regions to blank for this source"
            )
        native_layout(ds, transfer_syntax)  # refuses compressed or unusual layouts up front
        return True

    def deidentify_header(
        self, ds: Dataset, *, pixels_cleaned: bool = False, file_meta: bool = True
    ) -> DeidResult:
        """Apply the profile to every attribute except the pixel data, and mark the dataset.

        The file streaming path calls this on a header read without pixel data; it assumes
        :meth:`pixel_cleaning_needed` has passed, and writes a new file meta itself
        (`file_meta=False`).
        """
        sop_class = "".join(peek_text(ds, 0x00080016))
        if not sop_class:
            raise DeidError("SOP Class UID (0008,0016) is missing: not a composite instance")
        original = _originals(ds)
        patient_ref = _patient_reference(ds)
        state = _Instance(
            patient_pseudonym=self.key.patient_id(patient_ref),
            shift_days=self.key.date_shift_days(patient_ref),
            iod_types=iod_attribute_types(sop_class),
        )
        self._clean_dataset(ds, state, top=True, text=KEEP_TEXT)
        self._clean_pending_text(state)
        set_text(ds, _PATIENT_ID, "LO", [state.patient_pseudonym])
        # A family name alone, written "FAMILY^" so readers (and highdicom) see one component
        # on purpose rather than a malformed name.
        set_text(ds, _PATIENT_NAME, "PN", [state.patient_pseudonym + "^"])
        if pixels_cleaned:
            set_text(ds, 0x00280301, "CS", ["NO"])
        self._mark(ds)
        if file_meta:
            self._clean_file_meta(ds)
        return DeidResult(
            uid_map=state.uid_map,
            patient_pseudonym=state.patient_pseudonym,
            original_patient=original,
            date_shift_days=state.shift_days if self._shift_dates else None,
            options=self.options,
            pixels_cleaned=pixels_cleaned,
        )

    def deidentify_file(self, src: Path, dst: Path, *, fsync: bool = False) -> DeidResult:
        """De-identify the file `src` into `dst`, atomically, streaming the pixel data.

        The header is read without the pixel data; the pixel data element is copied from `src`
        in chunks (and blanked frame by frame when cleaning), so memory stays flat whatever the
        file size. `dst` appears complete or not at all (temporary file + rename); `fsync=True`
        also makes it durable before returning.

        Raises
        ------
        DeidRefused, DeidError
            As :meth:`deidentify_dataset`; DeidError also for unreadable or truncated files.
        """
        from aifi.dicom.deid.fileio import deidentify_file

        return deidentify_file(self, Path(src), Path(dst), fsync=fsync)

    def _mark(self, ds: Dataset) -> None:
        implicit, little = ds.original_encoding
        if implicit is None or little is None:
            mark_deidentified(ds, self.options)  # built in memory: plain elements
            return
        store = element_store(ds)
        for elem in marking_raw_elements(self.options, implicit, little):
            store[elem.tag] = elem

    # ------------------------------------------------------------------ the walk

    def _clean_dataset(self, ds: Dataset, state: _Instance, *, top: bool, text: str) -> None:
        """Apply the profile to one dataset (the instance, or a sequence item).

        `text` says what happens to free text the table does not list: kept (KEEP_TEXT), cleaned
        (CLEAN_TEXT, inside a sequence under action C) or replaced by a dummy (DUMMY_TEXT,
        inside a sequence under action D, e.g. SR content under the Basic Profile).
        """
        overlay_groups: set[int] = set()
        curve_groups: set[int] = set()
        has_private = False
        for tag in tags_of(ds):
            tag_int = int(tag)
            group = tag_int >> 16
            if group & 1:
                has_private = True
                continue  # private: handled per block below
            if tag_int & 0xFFFF == 0:
                remove(ds, tag)  # group lengths are retired and would be wrong after changes
                continue
            if 0x6000 <= group <= 0x60FF:
                overlay_groups.add(group)
                continue
            if 0x5000 <= group <= 0x50FF:
                curve_groups.add(group)
                continue
            action = self._actions.get(tag_int)
            if self._cleans_text and tag_int in self._identity_tags:
                original = element_store(ds)[tag]
                # Raw elements are replaced, never changed; decoded ones change in place.
                keep = original if isinstance(original, RawDataElement) else copy.copy(original)
                state.identity.append((ds, keep))
            if action is None:
                self._unlisted(ds, tag, state, text)
            else:
                self._apply(ds, tag, action, state, top=top, text=text)
        if has_private:
            self._clean_private(ds)
        for group in overlay_groups:
            self._clean_overlay(ds, group, state)
        for group in curve_groups:
            self._clean_curve(ds, group, state)

    def _apply(
        self, ds: Dataset, tag: int, action: Action, state: _Instance, *, top: bool, text: str
    ) -> None:
        if action is Action.X:
            remove(ds, tag)
            return
        vr = element_vr(ds, tag)
        if action in CONDITIONAL_ACTIONS:
            attribute_type = None
            if top and state.iod_types is not None:
                attribute_type = state.iod_types.get(int(tag), "3")  # outside the IOD: Type 3
            action = conditional_action(action, attribute_type, vr)
            if action is Action.X:
                remove(ds, tag)
                return
        if int(tag) in (_PATIENT_ID, _ACCESSION) and action is not Action.K:
            self._pseudonymise_identifier(ds, tag, state)
        elif action is Action.K:
            if vr == "SQ":
                self._clean_items(ds[tag], state, text=text)
        elif action is Action.Z:
            set_empty(ds, tag)
        elif action is Action.U or (action is Action.D and vr == "UI"):
            if vr == "SQ":
                self._clean_items(ds[tag], state, text=text)  # X/Z/U*: keep, remap inside
            else:
                self._remap_uids(ds, tag, state)
        elif action is Action.D:
            self._dummy(ds, tag, vr, state)
        else:
            self._clean_value(ds, tag, vr, state, text)  # Action.C

    def _dummy(self, ds: Dataset, tag: int, vr: str, state: _Instance) -> None:
        if vr == "SQ":
            # A dummy sequence keeps its items (so Type 1 content stays present, e.g. SR
            # verification), with every listed attribute inside replaced and free text dummied.
            items = ds[tag].value
            if items:
                for item in items:
                    self._clean_dataset(item, state, top=False, text=DUMMY_TEXT)
            else:
                set_one_empty_item(ds, tag)
        elif vr in STRING_VRS:
            set_text(ds, tag, vr, [str(dummy_value(vr))])
        else:
            ds[tag].value = dummy_value(vr)

    def _unlisted(self, ds: Dataset, tag: int, state: _Instance, text: str) -> None:
        """Attributes Table E.1-1 does not list are standard and kept, with three exceptions:
        unknown public tags (no dictionary entry: could be anything) are removed, instance UIDs
        are still remapped, and free text inside a cleaned sequence is cleaned."""
        if int(tag) not in DicomDictionary:
            remove(ds, tag)
            return
        vr = element_vr(ds, tag)
        if vr == "SQ":
            self._clean_items(ds[tag], state, text=text)
        elif vr == "UI":
            if not self._retain_uids and tag not in _class_uid_tags():
                values = peek_text(ds, tag)
                if any(v and v not in UID_dictionary for v in values):
                    self._remap_uids(ds, tag, state)
        elif text != KEEP_TEXT and vr in FREE_TEXT_VRS:
            if text == DUMMY_TEXT:
                set_text(ds, tag, vr, [str(dummy_value(vr))])
            else:
                state.pending_text.append((ds, tag, vr))

    def _clean_items(self, elem: DataElement, state: _Instance, *, text: str) -> None:
        for item in elem.value or ():
            self._clean_dataset(item, state, top=False, text=text)

    def _clean_value(self, ds: Dataset, tag: int, vr: str, state: _Instance, text: str) -> None:
        """Action C: keep the meaning, drop the identity (by VR)."""
        if vr == "SQ":
            self._clean_items(ds[tag], state, text=DUMMY_TEXT if text == DUMMY_TEXT else CLEAN_TEXT)
        elif vr == "DA":
            shifted = [shift_date(v, state.shift_days) for v in peek_text(ds, tag)]
            set_text(ds, tag, vr, [v for v in shifted if v])
        elif vr == "DT":
            shifted = [shift_dt(v, state.shift_days) for v in peek_text(ds, tag)]
            set_text(ds, tag, vr, [v for v in shifted if v])
        elif vr == "TM":
            pass  # whole-day shifts leave the time of day as it was
        elif vr == "UI":
            if not self._retain_uids:
                self._remap_uids(ds, tag, state)
        elif vr == "AE":
            set_text(ds, tag, vr, [self.key.text("ae", v, 16) for v in peek_text(ds, tag)])
        elif vr == "PN":
            names = peek_text(ds, tag)
            set_text(ds, tag, vr, ["X" + self.key.text("person", v, 15) for v in names])
        elif vr in TEXT_VRS:
            state.pending_text.append((ds, tag, vr))

    def _pseudonymise_identifier(self, ds: Dataset, tag: int, state: _Instance) -> None:
        """Patient ID and Accession Number become keyed pseudonyms (a dummy that links)."""
        value = "\\".join(peek_text(ds, tag)).strip()
        if tag == _PATIENT_ID:
            pseudonym = self.key.patient_id(value) if value else state.patient_pseudonym
        else:
            pseudonym = self.key.accession(value) if value else ""
        set_text(ds, tag, "LO" if tag == _PATIENT_ID else "SH", [pseudonym] if pseudonym else [])

    def _remap_uids(self, ds: Dataset, tag: int, state: _Instance) -> None:
        mapped = []
        for original in peek_text(ds, tag):
            if not original:
                continue
            new = state.uid_map.get(original)
            if new is None:
                new = state.uid_map[original] = self.key.uid(original)
            mapped.append(new)
        set_text(ds, tag, "UI", mapped)

    def _clean_private(self, ds: Dataset) -> None:
        """Remove private elements, keeping only the safe list under Retain Safe Private."""
        private = [t for t in tags_of(ds) if t.group & 1]
        creators: dict[tuple[int, int], str] = {}
        if self._private is Action.C:
            for tag in private:
                if 0x0010 <= tag.element <= 0x00FF:
                    creators[(tag.group, tag.element)] = " ".join(peek_text(ds, tag)).strip()
        kept_blocks: set[tuple[int, int]] = set()
        for tag in private:
            element = tag.element
            if 0x0010 <= element <= 0x00FF and self._private is Action.C:
                continue  # creators: decided once their blocks are known
            block = (tag.group, element >> 8)
            creator = creators.get(block)
            if (
                element >= 0x1000
                and creator is not None
                and (creator, tag.group, element & 0xFF) in SAFE_PRIVATE_ATTRIBUTES
            ):
                kept_blocks.add(block)
            else:
                remove(ds, tag)
        for block in creators.keys() - kept_blocks:
            remove(ds, (block[0] << 16) | block[1])

    def _clean_overlay(self, ds: Dataset, group: int, state: _Instance) -> None:
        """Overlays: removed as a whole under the Basic Profile (their data is X and their text
        has no row of its own); under Clean Graphics a ROI overlay keeps its bitmap and loses
        its text, a graphics overlay (which may draw text) is removed."""
        tags = [t for t in tags_of(ds) if t.group == group]
        overlay_type = " ".join(peek_text(ds, (group << 16) | _OVERLAY_TYPE)).strip().upper()
        keep = self._overlay_data is Action.C and overlay_type == "R"
        for tag in tags:
            if not keep:
                remove(ds, tag)
            elif tag.element in _OVERLAY_TEXT:
                state.pending_text.append((ds, tag, element_vr(ds, tag)))

    def _clean_curve(self, ds: Dataset, group: int, state: _Instance) -> None:
        """Curves (retired): removed under the Basic Profile; under Clean Graphics the numeric
        data stays and the text (labels, descriptions) is cleaned."""
        for tag in [t for t in tags_of(ds) if t.group == group]:
            if self._curve is not Action.C:
                remove(ds, tag)
            elif element_vr(ds, tag) in TEXT_VRS:
                state.pending_text.append((ds, tag, element_vr(ds, tag)))

    def _clean_pending_text(self, state: _Instance) -> None:
        """Clean the free text the walk set aside, with every identity of the instance known."""
        if not state.pending_text:
            return
        identity = [v for item, elem in state.identity for v in decode_text(item, elem)]
        cleaner = TextCleaner(identity)
        for ds, tag, vr in state.pending_text:
            if tag in element_store(ds):
                # A value cleaned away entirely becomes a dummy: a Type 1 label stays valid.
                cleaned = [cleaner.clean(v) or str(dummy_value(vr)) for v in peek_text(ds, tag)]
                set_text(ds, tag, vr, cleaned)

    def _clean_file_meta(self, ds: Dataset) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            meta = ds.file_meta = FileMetaDataset()
        for keyword in (
            "SourceApplicationEntityTitle",
            "SendingApplicationEntityTitle",
            "ReceivingApplicationEntityTitle",
            "SourcePresentationAddress",
            "SendingPresentationAddress",
            "ReceivingPresentationAddress",
            "PrivateInformationCreatorUID",
            "PrivateInformation",
        ):
            if keyword in meta:
                delattr(meta, keyword)
        meta.MediaStorageSOPClassUID = peek_text(ds, 0x00080016)[0]
        sop_instance = peek_text(ds, 0x00080018)
        if sop_instance:
            meta.MediaStorageSOPInstanceUID = sop_instance[0]
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME


# ---------------------------------------------------------------------- helpers


def _dictionary_vr(tag: int) -> str:
    entry = DicomDictionary.get(tag)
    return entry[0] if entry else "UN"


def _is_identity_keyword(keyword: str) -> bool:
    return any(keyword.endswith(word) or f"{word}s" in keyword for word in _IDENTITY_WORDS) or (
        "Institution" in keyword or "Station" in keyword or "Physician" in keyword
    )


@lru_cache(maxsize=1)
def _class_uid_tags() -> frozenset[int]:
    """UI attributes that name a kind of thing (a class, a transfer syntax, a coding scheme),
    not an instance: never remapped."""
    return frozenset(
        tag
        for tag, entry in DicomDictionary.items()
        if entry[0] == "UI"
        and (entry[4] in _KEEP_UID_KEYWORDS or any(part in entry[4] for part in _KEEP_UID_PARTS))
    )


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(str(meta.TransferSyntaxUID))
    implicit, little = ds.original_encoding
    if implicit is False and little is False:
        return UID("1.2.840.10008.1.2.2")
    if implicit is False:
        return UID("1.2.840.10008.1.2.1")
    return UID("1.2.840.10008.1.2")


def _patient_reference(ds: Dataset) -> str:
    """The original on which the patient pseudonym is keyed: Patient ID, or when a source sends
    none, the study (so one unknown patient never merges with another)."""
    patient_id = "\\".join(peek_text(ds, _PATIENT_ID)).strip()
    if patient_id:
        return patient_id
    for keyword, tag in (("StudyInstanceUID", 0x0020000D), ("SOPInstanceUID", 0x00080018)):
        value = "".join(peek_text(ds, tag))
        if value:
            return f"{keyword}:{value}"
    raise DeidError(
        "Patient ID (0010,0020), Study Instance UID and SOP Instance UID are all missing: "
        "no identity to key a pseudonym on"
    )


def _originals(ds: Dataset) -> dict[str, str]:
    originals: dict[str, str] = {}
    store = element_store(ds)
    for keyword, tag in _ORIGINAL_TAGS:
        if tag in store:
            text = "\\".join(peek_text(ds, tag))
            if text.strip():
                originals[keyword] = text
    study_uid = "".join(peek_text(ds, 0x0020000D))
    if study_uid:
        originals["StudyInstanceUID"] = study_uid
    return originals
