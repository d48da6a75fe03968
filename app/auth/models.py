"""Users, their devices and the bearer tokens bound to them."""

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime, new_id, utcnow


class Role(StrEnum):
    grid_worker = "grid_worker"
    town_office = "town_office"
    police_station = "police_station"
    brigade = "brigade"
    admin = "admin"


# The unit kind a user of each role must belong to (a grid worker may hold a whole community).
ROLE_UNIT_KINDS: dict[Role, tuple[str, ...]] = {
    Role.grid_worker: ("grid", "community"),
    Role.town_office: ("town_office",),
    Role.police_station: ("police_station",),
    Role.brigade: ("brigade",),
    Role.admin: ("county",),
}


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    username: str = Field(max_length=64, unique=True)
    display_name: str = Field(default="", max_length=100)
    password_hash: str = Field(max_length=255)
    role: Role = Field(sa_type=sa.String(32))
    org_unit_id: str = Field(foreign_key="org_units.id", index=True, max_length=36)
    is_active: bool = Field(default=True)
    is_demo: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# One account per username in any case ('Zhangsan' is 'zhangsan'), the username kept as typed for display;
# found by lower(username) at login (app/auth/service.py username_key).
sa.Index("uq_users_lower_username", sa.func.lower(User.username), unique=True)


class Device(SQLModel, table=True):
    __tablename__ = "devices"
    __table_args__ = (sa.UniqueConstraint("user_id", "device_key"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=36)
    device_key: str = Field(max_length=128, description="the phone's own id (device_id at login)")
    name: str = Field(default="", max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # device health: data stuck on a phone that stopped syncing is the commonest way records are lost
    last_push_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_pull_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    app_version: str | None = Field(default=None, max_length=40)
    clock_offset_s: float | None = None  # device clock minus server clock at its last push


class AuthToken(SQLModel, table=True):
    __tablename__ = "auth_tokens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    # Only a keyed hash is stored: a leaked database does not hand out live tokens.
    token_hash: str = Field(max_length=64, unique=True)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=36)
    device_id: str = Field(foreign_key="devices.id", index=True, max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class LoginFailure(SQLModel, table=True):
    """Failed logins, kept in the database so the limit holds across every worker process."""

    __tablename__ = "login_failures"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, index=True)
    address: str = Field(max_length=64, index=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
