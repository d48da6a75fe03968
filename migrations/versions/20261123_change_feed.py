"""change feed

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 06:30:00.000000
"""
import uuid

from alembic import op
import sqlalchemy as sa
import sqlmodel
import app.db


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('changes',
    # BIGSERIAL on PostgreSQL (sequence CACHE 1: values are drawn in the order writers take the feed
    # lock; a cached sequence would hand out blocks per connection and break that), INTEGER PRIMARY
    # KEY AUTOINCREMENT on SQLite (never reuses a seq after pruning).
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('entity_type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('entity_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('grid_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('town_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('holder_unit_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('origin_device_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('changed_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_changes')),
    sqlite_autoincrement=True,
    )
    with op.batch_alter_table('changes', schema=None) as batch_op:
        batch_op.create_index('ix_changes_grid_seq', ['grid_id', 'seq'], unique=False)
        batch_op.create_index('ix_changes_town_seq', ['town_id', 'seq'], unique=False)

    state = op.create_table('change_feed_state',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('epoch', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('pruned_through', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_change_feed_state'))
    )
    # the feed's identity: a cursor made against another database is refused (410), not misread
    op.bulk_insert(state, [{'id': 1, 'epoch': uuid.uuid4().hex, 'pruned_through': 0}])


def downgrade() -> None:
    op.drop_table('change_feed_state')
    with op.batch_alter_table('changes', schema=None) as batch_op:
        batch_op.drop_index('ix_changes_town_seq')
        batch_op.drop_index('ix_changes_grid_seq')

    op.drop_table('changes')
