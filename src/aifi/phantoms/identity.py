"""Patient and study identity of a synthetic study: real-looking, yet invented from a seed.

The demo makes many patients per hospital and the pseudonymisation tests need identities that
look like real ones (names, birth dates, accession numbers) so that their removal can be checked.
Every value is either given or derived deterministically from the seed, so the same seed gives
the same patient.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Sex = Literal["F", "M", "O"]

_FAMILY_NAMES = (
    "de Vries",
    "Jansen",
    "van den Berg",
    "Bakker",
    "Visser",
    "Smit",
    "Meijer",
    "de Boer",
    "Mulder",
    "de Groot",
    "Bos",
    "Vos",
    "Peters",
    "Hendriks",
    "van Leeuwen",
    "Dekker",
    "Brouwer",
    "de Wit",
    "Dijkstra",
    "Smits",
    "de Graaf",
    "van der Meer",
    "van der Linden",
    "Kok",
    "Jacobs",
    "de Haan",
    "Vermeulen",
    "van Dijk",
    "Schouten",
    "Willems",
)
_GIVEN_NAMES: dict[str, tuple[str, ...]] = {
    "F": (
        "Anna",
        "Emma",
        "Sophie",
        "Julia",
        "Lotte",
        "Eva",
        "Sanne",
        "Fleur",
        "Maria",
        "Ingrid",
        "Anouk",
        "Marieke",
        "Noor",
        "Femke",
        "Wilma",
    ),
    "M": (
        "Jan",
        "Pieter",
        "Daan",
        "Sem",
        "Lucas",
        "Thomas",
        "Bram",
        "Kees",
        "Henk",
        "Willem",
        "Joost",
        "Ruben",
        "Gerrit",
        "Bas",
        "Maarten",
    ),
}
_INSTITUTIONS = (
    "AIFI Demo Ziekenhuis Noord",
    "AIFI Demo Ziekenhuis Zuid",
    "AIFI Demo Medisch Centrum Oost",
    "AIFI Demo Streekziekenhuis West",
)
_REFERRERS = (
    "Kuipers^Johan",
    "Maas^Esther",
    "Postma^Rik",
    "Koster^Linda",
    "Verbeek^Marco",
    "Prins^Hanna",
)


class PatientIdentity(BaseModel):
    """The patient, study and requester attributes written into every instance of a study.

    Names use the DICOM PN form ``Family^Given``; dates and times are plain Python values and
    are encoded as DA/TM when written.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient_id: str = Field(min_length=1, max_length=64)
    patient_name: str = Field(min_length=1, max_length=64)
    birth_date: dt.date
    sex: Sex
    accession_number: str = Field(max_length=16)
    study_date: dt.date
    study_time: dt.time
    institution_name: str = Field(max_length=64)
    referring_physician: str = Field(max_length=64)
    study_description: str = Field(max_length=64)

    def age_at_study(self) -> int:
        """Whole years between birth and the study date (for Patient's Age, 0010,1010)."""
        before_birthday = (self.study_date.month, self.study_date.day) < (
            self.birth_date.month,
            self.birth_date.day,
        )
        return self.study_date.year - self.birth_date.year - int(before_birthday)


def identity_from_seed(seed: int, study_description: str, **overrides: object) -> PatientIdentity:
    """A deterministic, real-looking identity for `seed`; keyword `overrides` replace fields.

    The seed goes through SHA-256 first so that neighbouring seeds give unrelated patients.
    """
    digest = hashlib.sha256(f"aifi-phantom-identity:{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    sex: Sex = "F" if rng.random() < 0.5 else "M"
    family = _FAMILY_NAMES[int(rng.integers(len(_FAMILY_NAMES)))]
    given = _GIVEN_NAMES[sex][int(rng.integers(len(_GIVEN_NAMES[sex])))]
    study_date = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 730)))
    age_days = int(rng.integers(25 * 365, 90 * 365))
    study_time = dt.time(
        int(rng.integers(7, 20)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    )
    values: dict[str, object] = {
        "patient_id": f"{int(rng.integers(10**6, 10**7))}",
        "patient_name": f"{family}^{given}",
        "birth_date": study_date - dt.timedelta(days=age_days),
        "sex": sex,
        "accession_number": f"ACC{int(rng.integers(10**8, 10**9))}",
        "study_date": study_date,
        "study_time": study_time,
        "institution_name": _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
        "referring_physician": _REFERRERS[int(rng.integers(len(_REFERRERS)))],
        "study_description": study_description,
    }
    values.update(overrides)
    return PatientIdentity.model_validate(values)
