"""The clinical service of this app, as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from aifi.governance.service import ClinicalService


def get_clinical(request: Request) -> ClinicalService:
    service: ClinicalService = request.app.state.clinical
    return service


ClinicalDep = Annotated[ClinicalService, Depends(get_clinical)]
