"""Who is logged in: a signed session cookie holding the user and the organisation they act for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from aifi.exchange.audit import Actor


@dataclass(frozen=True)
class WebUser:
    username: str
    display_name: str
    user_role: str
    organisation_id: str
    organisation_role: str

    @property
    def actor(self) -> Actor:
        return Actor(organisation_id=self.organisation_id, role=self.organisation_role)


class LoginRequired(Exception):
    """No session: the page sends the browser to the login form."""


def current_user(request: Request) -> WebUser:
    data = request.session.get("user")
    if not data:
        raise LoginRequired()
    return WebUser(**data)


UserDep = Annotated[WebUser, Depends(current_user)]
