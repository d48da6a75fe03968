"""The op log: each op applied at most once, keyed by its client-made op_id."""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime, utcnow


class SyncOp(SQLModel, table=True):
    __tablename__ = "sync_ops"

    op_id: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=40)
    user_id: str = Field(max_length=36)
    device_id: str = Field(max_length=36, index=True)
    result: dict = Field(default_factory=dict, sa_type=sa.JSON)  # what the first answer said, re-sent on duplicates
    # the record the op carried (its data.id): an op for another record under this op_id is refused, not answered
    # as this one's duplicate; None for ops applied before migration 0017
    record_id: str | None = Field(default=None, max_length=36)
    applied_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
