"""Request dependencies: the authenticated principal and its scope."""

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from app.auth import service
from app.auth.models import AuthToken, Device, Role, User
from app.auth.scope import Scope, scope_for
from app.org.models import OrgUnit
from app.config import Settings
from app.db import SessionDep
from app.errors import Forbidden, Unauthorized

bearer = HTTPBearer(auto_error=False)


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # async: no worker-thread hop for an attribute


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


@dataclass
class Principal:
    user: User
    device: Device
    token: AuthToken
    session: Session
    unit: OrgUnit | None = None  # the user's unit, as authentication loaded it

    @cached_property
    def scope(self) -> Scope:
        return scope_for(self.session, self.user, self.unit)

    def require_role(self, *roles: Role) -> None:
        if self.user.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(r.value for r in roles)}")


def require_bearer(creds: HTTPAuthorizationCredentials | None) -> str:
    """The token of an ``Authorization: Bearer`` header, or 401."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return creds.credentials


def current_principal(
    session: SessionDep,
    settings: SettingsDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    user, device, token, unit = service.authenticate(session, settings, require_bearer(creds))
    return Principal(user=user, device=device, token=token, session=session, unit=unit)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
