"""The append-only, hash-chained event log of every hazard."""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime


class HazardEvent(SQLModel, table=True):
    __tablename__ = "hazard_events"
    __table_args__ = (
        sa.UniqueConstraint("hazard_id", "seq"),
        # what is left to seal (older events; migrate looks at every start): empty once all are sealed
        sa.Index("ix_hazard_events_unsealed", "hazard_id",
                 sqlite_where=sa.text("mac IS NULL"), postgresql_where=sa.text("mac IS NULL")),
    )

    id: int | None = Field(default=None, primary_key=True)
    hazard_id: str = Field(foreign_key="hazards.id", max_length=36)
    seq: int  # 1, 2, 3… per hazard; a gap or a fork breaks the chain
    kind: str = Field(max_length=40)
    actor_user_id: str | None = Field(default=None, max_length=36)
    actor_unit_id: str | None = Field(default=None, max_length=36)
    device_id: str | None = Field(default=None, max_length=36)
    server_time: datetime = Field(sa_type=UTCDateTime)
    device_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    data: dict = Field(default_factory=dict, sa_type=sa.JSON)
    flagged: bool = False  # a field event that no longer fit the state: the holder must look
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    # HMAC of hash under the audit key, which is not in the database (app/audit/chain.py event_mac)
    mac: str | None = Field(default=None, max_length=64)
