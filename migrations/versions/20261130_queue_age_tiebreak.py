"""queue indexes break deadline ties by age: (holder, next_due, created_at, id)

Every hazard reported on one day shares its acknowledgement deadline, so under (holder, next_due, id)
a sync batch's new hazards landed at random places among thousands of equal deadlines: each of the
four queue indexes dirtied ~140 pages per 200-hazard batch (measured from the WAL frames). Ordered by
created_at first, a batch's rows go to one place at the end of the tie, and the queue lists equal
deadlines oldest report first.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 10:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

OPEN = "status IN ('referred', 'accepted', 'rectifying', 'reinspection_due')"
# name -> the columns between the holder and the deadline
QUEUE_INDEXES = {
    "ix_hazards_queue": (None, ()),
    "ix_hazards_queue_open": (OPEN, ()),
    "ix_hazards_queue_open_severity": (OPEN, ("severity",)),
    "ix_hazards_queue_open_class": (OPEN, ("place_class",)),
}


def _rebuild(tail: tuple[str, ...]) -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        for name, (where, middle) in QUEUE_INDEXES.items():
            kw = {} if where is None else {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}
            batch_op.drop_index(name, **kw)
            batch_op.create_index(name, ['holder_unit_id', *middle, 'next_due', *tail], unique=False, **kw)


def upgrade() -> None:
    _rebuild(('created_at', 'id'))


def downgrade() -> None:
    _rebuild(('id',))
