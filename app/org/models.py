"""The tree of units: county → brigade; county → towns → (town office, police stations, communities → grids)."""

from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import new_id


class UnitKind(StrEnum):
    county = "county"  # 县/区, its fire/safety committee (消委会) holds county listed supervision
    brigade = "brigade"  # 消防救援大队
    town = "town"  # 镇/街道
    town_office = "town_office"  # 综合行政执法和应急管理办公室 / 消防工作站
    police_station = "police_station"  # 公安派出所
    community = "community"  # 村/社区
    grid = "grid"  # 网格
    sector_regulator = "sector_regulator"  # 行业主管部门


# Which kinds may hang under which: the tree is checked on every insert.
PARENT_KINDS: dict[UnitKind, tuple[UnitKind | None, ...]] = {
    UnitKind.county: (None,),
    UnitKind.brigade: (UnitKind.county,),
    UnitKind.sector_regulator: (UnitKind.county,),
    UnitKind.town: (UnitKind.county,),
    UnitKind.town_office: (UnitKind.town,),
    UnitKind.police_station: (UnitKind.town,),
    UnitKind.community: (UnitKind.town,),
    UnitKind.grid: (UnitKind.community,),
}


class OrgUnitBase(SQLModel):
    code: str = Field(max_length=64, unique=True, description="stable short name, e.g. town-a")
    name: str = Field(max_length=200)
    kind: UnitKind = Field(sa_type=sa.String(32))


class OrgUnit(OrgUnitBase, table=True):
    __tablename__ = "org_units"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    parent_id: str | None = Field(default=None, foreign_key="org_units.id", index=True, max_length=36)
    # Denormalised ancestors so scope checks are one indexed comparison, not a tree walk.
    county_id: str | None = Field(default=None, foreign_key="org_units.id", index=True, max_length=36)
    town_id: str | None = Field(default=None, foreign_key="org_units.id", index=True, max_length=36)
    community_id: str | None = Field(default=None, foreign_key="org_units.id", max_length=36)
    # 镇街综合执法: a town granted fire-law enforcement power handles violations itself (configurable per town).
    enforcement_power: bool = Field(default=False)
    sector: str | None = Field(default=None, max_length=64, description="for sector regulators: education, health…")
    # For a community: the police station whose beat covers it (towns may have several stations).
    police_station_id: str | None = Field(default=None, foreign_key="org_units.id", max_length=36)


class OrgUnitPublic(OrgUnitBase):
    id: str
    parent_id: str | None
    county_id: str | None
    town_id: str | None
    community_id: str | None
    enforcement_power: bool
    sector: str | None
    police_station_id: str | None
