"""Who made a result: the algorithm identification every AIFI result object carries (TID 4019).

A hospital must be able to see, in the PACS, which product and version produced a finding, and
the reference products that ship with AIFI must say plainly that they are not for clinical use.
One :class:`AlgorithmInfo` feeds the SR (TID 4019 content items), the SEG (Segment Algorithm
Identification) and the JSON summary, so the three cannot disagree.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import highdicom as hd
from highdicom.sr import CodedConcept

#: The label every AIFI reference product carries, in its algorithm parameters and summary.
NOT_FOR_CLINICAL_USE = "reference algorithm, not for clinical use"

#: CID 7162 "Surface Processing Algorithm Families": what kind of algorithm made a result.
ARTIFICIAL_INTELLIGENCE = CodedConcept("123110", "DCM", "Artificial Intelligence")

#: A fixed namespace so that one algorithm (manufacturer, name, version) has one device UID.
_DEVICE_NAMESPACE = uuid.UUID("5b1f3c1e-6a0e-4c8e-9d52-2f2f5a9b7c41")

#: Longest value of a DICOM LO (Long String) element: names and versions must fit.
_LO_MAX = 64


@dataclass(frozen=True)
class AlgorithmInfo:
    """Name, version and manufacturer of the algorithm that produced a result.

    Parameters
    ----------
    name, version, manufacturer:
        Written as TID 4019 Algorithm Name (111001), Algorithm Version (111003) and Algorithm
        Manufacturer (122405), and as the SEG's Segment Algorithm Name, Software Versions and
        Manufacturer. Each must fit a DICOM LO (64 characters, no backslash).
    parameters:
        Settings worth recording with the result (thresholds, model file); written as
        Algorithm Parameters (111002) ``key=value``.
    clinical_use_label:
        A plain-language statement of intended use, written as one more Algorithm Parameter;
        AIFI's reference products keep the default :data:`NOT_FOR_CLINICAL_USE`.

    Raises
    ------
    ValueError
        If a name, version or manufacturer is empty, too long for LO, or contains a backslash.
    """

    name: str
    version: str
    manufacturer: str
    parameters: Mapping[str, str | int | float] | None = None
    clinical_use_label: str | None = field(default=NOT_FOR_CLINICAL_USE)

    def __post_init__(self) -> None:
        for attribute in ("name", "version", "manufacturer"):
            value = getattr(self, attribute)
            if not value or not value.strip():
                raise ValueError(f"algorithm {attribute} must not be empty")
            if len(value) > _LO_MAX or "\\" in value:
                raise ValueError(
                    f"algorithm {attribute} must fit a DICOM LO (at most {_LO_MAX} characters, "
                    f"no backslash): {value!r}"
                )

    @property
    def parameter_texts(self) -> list[str]:
        """The Algorithm Parameters (111002) as ``key=value`` texts, the use label last."""
        texts = [f"{key}={value}" for key, value in (self.parameters or {}).items()]
        if self.clinical_use_label:
            texts.append(self.clinical_use_label)
        return texts

    @property
    def device_uid(self) -> str:
        """A stable UID for this algorithm release, used as the SR's Device Observer UID."""
        key = f"{self.manufacturer}\x00{self.name}\x00{self.version}"
        return f"2.25.{uuid.uuid5(_DEVICE_NAMESPACE, key).int}"

    @property
    def device_serial_number(self) -> str:
        """A short stable identifier of this release (the SEG requires a Device Serial Number)."""
        digest = hashlib.sha256(f"{self.manufacturer}\x00{self.name}\x00{self.version}".encode())
        return digest.hexdigest()[:16].upper()

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification content items for an SR measurement group.

        The optional Algorithm Family is left out: readers such as highdicom take a CODE item
        in a measurement group for a qualitative evaluation of the finding.
        """
        return hd.sr.AlgorithmIdentification(
            name=self.name,
            version=self.version,
            manufacturer=self.manufacturer,
            parameters=self.parameter_texts or None,
        )

    def seg_identification(self) -> hd.AlgorithmIdentificationSequence:
        """The Segment Algorithm Identification of a SEG's Segment Sequence items."""
        parameters = {key: str(value) for key, value in (self.parameters or {}).items()}
        if self.clinical_use_label:
            parameters["intended use"] = self.clinical_use_label
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=ARTIFICIAL_INTELLIGENCE,
            version=self.version,
            source=self.manufacturer,
            parameters=parameters or None,
        )
