"""Inspection records (巡查记录): a grid worker's visit to a premises with its checklist."""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime, utcnow


class Inspection(SQLModel, table=True):
    __tablename__ = "inspections"
    __table_args__ = (sa.Index("ix_inspections_place_started", "place_id", "started_at"),)

    id: str = Field(primary_key=True, max_length=36)  # client-made UUID
    place_id: str = Field(foreign_key="places.id", max_length=36)
    grid_id: str = Field(max_length=36)
    town_id: str = Field(max_length=36, index=True)
    user_id: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    device_id: str | None = Field(default=None, max_length=36)
    started_at: datetime = Field(sa_type=UTCDateTime)  # device time
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lat: float | None = None
    lon: float | None = None
    checklist: list[dict] = Field(default_factory=list, sa_type=sa.JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
