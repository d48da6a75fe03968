from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, field_validator
from sqlmodel import Field, SQLModel

from app.auth.models import Role
from app.errors import reject_nul, reject_unencodable


NoNul = AfterValidator(reject_nul)


class TokenResponse(SQLModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    device_id: str


class MePublic(SQLModel):
    id: str
    username: str
    display_name: str
    role: Role
    org_unit_id: str
    org_unit_name: str
    org_unit_kind: str
    town_id: str | None
    county_id: str | None
    grid_ids: list[str] | None
    device_id: str


class UserCreate(SQLModel):
    username: str = Field(min_length=2, max_length=64, regex=r"^[A-Za-z0-9_.\-]+$")
    password: str = Field(min_length=8, max_length=200)
    role: Role
    org_unit_id: Annotated[str, NoNul] = Field(max_length=36)
    display_name: Annotated[str, NoNul] = Field(default="", max_length=100)


class UserPublic(SQLModel):
    id: str
    username: str
    display_name: str
    role: Role
    org_unit_id: str
    is_active: bool


class DevicePublic(SQLModel):
    id: str
    user_id: str
    device_key: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_seen_at: datetime | None


# Passwords are hashed, never stored: a NUL in one is harmless (as at login). The new one has no length
# bounds here: app/auth/service.py check_password_rules answers weak_password / password_too_long, as
# create_user does. A current password longer than any can be is refused before it is hashed.
class PasswordChange(SQLModel):
    current_password: str = Field(max_length=200)
    new_password: str

    _encodable = field_validator("new_password")(reject_unencodable)


class PasswordReset(SQLModel):
    new_password: str

    _encodable = field_validator("new_password")(reject_unencodable)
