"""The codes every channel shares: DICOM coding schemes as HL7 v2 and FHIR name them.

The summary carries codes the DICOM way (``SCT:50960005``); HL7 v2 names the coding system
from table 0396 (``SCT``) and FHIR by URI (``http://snomed.info/sct``). Keeping the mapping in
one place means the ORU and the DiagnosticReport always code a finding the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: HL7 v2 table 0396 name of AIFI's local codes (``99zzz`` is the local range).
LOCAL_HL7_SYSTEM = "99AIFI"

#: DICOM scheme designator -> HL7 v2 table 0396 coding system.
HL7_SYSTEMS = {"SCT": "SCT", "SRT": "SCT", "DCM": "DCM", "LN": "LN", "UCUM": "UCUM"}

#: DICOM scheme designator -> FHIR system URI.
FHIR_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "SRT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
}

UCUM_URI = FHIR_SYSTEMS["UCUM"]
#: FHIR identifier system for DICOM UIDs (values are ``urn:oid:<uid>``).
DICOM_UID_SYSTEM = "urn:dicom:uid"


@dataclass(frozen=True)
class Concept:
    """A coded concept: code value, DICOM scheme designator, and its meaning."""

    code: str
    scheme: str
    meaning: str

    @property
    def hl7_system(self) -> str | None:
        return HL7_SYSTEMS.get(self.scheme)

    @property
    def fhir_system(self) -> str | None:
        return FHIR_SYSTEMS.get(self.scheme)


#: DCM 121071: the finding of a measurement group (TID 1500).
FINDING = Concept("121071", "DCM", "Finding")
#: SCT 363698007: where the finding is.
FINDING_SITE = Concept("363698007", "SCT", "Finding Site")
#: DCM 110180: the study the result belongs to.
STUDY_INSTANCE_UID = Concept("110180", "DCM", "Study Instance UID")
#: TID 4019 algorithm identification.
ALGORITHM_NAME = Concept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Concept("111003", "DCM", "Algorithm Version")
ALGORITHM_MANUFACTURER = Concept("122405", "DCM", "Algorithm Manufacturer")
#: LOINC 18748-4: a diagnostic imaging report (the kind of DiagnosticReport we post).
DIAGNOSTIC_IMAGING_STUDY = Concept("18748-4", "LN", "Diagnostic imaging study")


def parse_scheme_code(text: str, meaning: str) -> Concept | None:
    """``"SCT:50960005"`` -> Concept; None when the text is not ``scheme:code``."""
    scheme, sep, code = text.partition(":")
    if not sep or not scheme.strip() or not code.strip():
        return None
    return Concept(code.strip(), scheme.strip(), meaning)


_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def is_oid(text: str) -> bool:
    """Whether `text` is an ISO object identifier (as DICOM UIDs and many issuers are)."""
    return len(text) <= 64 and _OID.match(text) is not None


def local_code(name: str) -> str:
    """A stable local code for a name the summary gives without a code (``"Volume"`` ->
    ``"VOLUME"``): receivers key HL7 OBX-3 on the identifier, so it must not be empty."""
    code = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")
    return code[:20].rstrip("_") or "UNNAMED"
