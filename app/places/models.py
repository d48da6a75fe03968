"""Premises (场所) and their class, which decides the supervising tier."""

import re
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from pydantic import field_validator
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime, new_id, utcnow
from app.errors import reject_bool_as_number, reject_nul

# a client-made UUID (offline creation), as the push's place.upsert takes it: never "" or one with a "/",
# which no /places/{id} could reach
CLIENT_ID = r"^[0-9A-Za-z][0-9A-Za-z\-]{7,63}$"
_TEXT = ("name", "address", "grid_id", "owner_name", "owner_phone", "sector_regulator_id")
# "" is a text field's "none" (the columns are NOT NULL): a PATCH's null clears it
_CLEARABLE = ("address", "owner_name", "owner_phone")


def _stripped(value: str | None) -> str | None:
    """Text stored as a phone's push stores it (its ops strip every text): else a blank the office typed after
    a name would make the phone's copy differ from what is stored, and the phone's next edit rewrite it."""
    return value.strip() if isinstance(value, str) else value


class PlaceClass(StrEnum):
    key_unit_1 = "key_unit_1"  # 一级消防安全重点单位 → brigade
    key_unit_2 = "key_unit_2"  # 二级消防安全重点单位 → brigade
    key_unit_3 = "key_unit_3"  # 三级消防安全重点单位 → police station
    police_list = "police_list"  # 派出所日常消防监督检查范围 → police station
    nine_small = "nine_small"  # 九小场所
    three_in_one = "three_in_one"  # 三合一场所
    rental = "rental"  # 出租屋/群租房
    self_built = "self_built"  # 经营性自建房
    crowded = "crowded"  # 人员密集场所 (not a key unit)
    residential = "residential"
    other = "other"


PLACE_CLASS_NAMES: dict[PlaceClass, tuple[str, str]] = {
    PlaceClass.key_unit_1: ("一级消防安全重点单位", "Level-1 fire safety key unit"),
    PlaceClass.key_unit_2: ("二级消防安全重点单位", "Level-2 fire safety key unit"),
    PlaceClass.key_unit_3: ("三级消防安全重点单位", "Level-3 fire safety key unit"),
    PlaceClass.police_list: ("派出所监督检查范围单位", "On the police-station check list"),
    PlaceClass.nine_small: ("九小场所", "Small business (nine small)"),
    PlaceClass.three_in_one: ("三合一场所", "Three-in-one premises"),
    PlaceClass.rental: ("出租屋/群租房", "Rental / shared housing"),
    PlaceClass.self_built: ("经营性自建房", "Self-built house used for business"),
    PlaceClass.crowded: ("人员密集场所", "Crowded place (not a key unit)"),
    PlaceClass.residential: ("住宅", "Residential"),
    PlaceClass.other: ("其他", "Other"),
}


def key_unit_level(place_class: str) -> int | None:
    return {"key_unit_1": 1, "key_unit_2": 2, "key_unit_3": 3}.get(place_class)


class PlaceBase(SQLModel):
    name: str = Field(min_length=1, max_length=200)
    address: str = Field(default="", max_length=300)
    grid_id: str = Field(foreign_key="org_units.id", index=True, max_length=36)
    place_class: PlaceClass = Field(sa_type=sa.String(32), index=True)
    # WGS-84 as phones report it (not GCJ-02); conversion is for map display only.
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    owner_name: str = Field(default="", max_length=100)
    owner_phone: str = Field(default="", max_length=40)
    sector_regulator_id: str | None = Field(default=None, foreign_key="org_units.id", max_length=36)

    _position = field_validator("lat", "lon", mode="before")(reject_bool_as_number)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()


class Place(PlaceBase, table=True):
    __tablename__ = "places"
    __table_args__ = (sa.Index("ix_places_town_id_name", "town_id", "name"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    town_id: str = Field(foreign_key="org_units.id", max_length=36)
    community_id: str = Field(foreign_key="org_units.id", max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # bumped by every change (places.service.update_place); a phone's edit names the one it saw (base_version)
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    # field -> [the version that last changed it, the phone whose synced edit it was, or None] (lat and lon as
    # "location", places.service.versioned_as): a phone's copy older than that version has not seen the
    # field as it is, unless the change was its own (sync.service._place_upsert). Absent: not since 0016.
    field_versions: dict[str, list] = Field(default_factory=dict, sa_type=sa.JSON,
                                            sa_column_kwargs={"server_default": "{}"})


class PlaceCreate(PlaceBase):
    id: str | None = Field(default=None, max_length=36, description="client-made UUID (offline creation)")

    # PostgreSQL can neither store nor look up a NUL, SQLite would store it: a 422 naming the field on both
    # (on what comes in only: a row stored before this check is still shown)
    _no_nul = field_validator(*_TEXT)(reject_nul)
    _text_stripped = field_validator(*_TEXT)(_stripped)

    @field_validator("id")
    @classmethod
    def _client_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(CLIENT_ID, v):
            raise ValueError("must be a client-made UUID (letters, digits and dashes, 8 to 36 characters)")
        return v


class PlaceUpdate(SQLModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    address: str | None = Field(default=None, max_length=300)
    grid_id: str | None = Field(default=None, max_length=36)
    place_class: PlaceClass | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    owner_name: str | None = Field(default=None, max_length=100)
    owner_phone: str | None = Field(default=None, max_length=40)
    sector_regulator_id: str | None = Field(default=None, max_length=36)

    _no_nul = field_validator(*_TEXT)(reject_nul)
    _text_stripped = field_validator(*_TEXT)(_stripped)  # a blank name: update_place's 422
    _position = field_validator("lat", "lon", mode="before")(reject_bool_as_number)

    @field_validator(*_CLEARABLE)
    @classmethod
    def _null_clears(cls, v: str | None) -> str:
        return "" if v is None else v


class PlacePublic(PlaceBase):
    id: str
    town_id: str
    community_id: str
    key_unit_level: int | None = None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, place: Place) -> "PlacePublic":
        return cls.model_validate(place, update={"key_unit_level": key_unit_level(place.place_class)})


class PlacePage(SQLModel):
    items: list[PlacePublic]
    next_cursor: str | None
