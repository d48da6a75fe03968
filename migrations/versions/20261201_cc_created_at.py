"""hazard_cc.created_at: the cc queue breaks equal deadlines oldest report first, as the held queue does

The copies carry their hazard's urgency (next_due) so that a unit's cc queue is an index range; equal
deadlines were then ordered by the hazard's id, a client's random UUID, not by when it was reported. The
copies now carry the hazard's created_at too (it never changes), and the queue's index takes it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 17:00:00
"""
import sqlalchemy as sa
from alembic import op

import app.db


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

_OPEN = dict(sqlite_where=sa.text('is_open'), postgresql_where=sa.text('is_open'))


def upgrade() -> None:
    with op.batch_alter_table('hazard_cc', schema=None) as batch_op:
        batch_op.add_column(sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=True))
    op.execute("UPDATE hazard_cc SET created_at = (SELECT h.created_at FROM hazards h WHERE h.id = hazard_cc.hazard_id)")
    with op.batch_alter_table('hazard_cc', schema=None) as batch_op:
        batch_op.alter_column('created_at', existing_type=app.db.UTCDateTime(timezone=True), nullable=False)
    columns = ['unit_id', 'next_due', 'created_at', 'hazard_id']
    if op.get_bind().dialect.name != "postgresql":
        with op.batch_alter_table('hazard_cc', schema=None) as batch_op:
            batch_op.drop_index('ix_hazard_cc_open_queue', **_OPEN)
            batch_op.create_index('ix_hazard_cc_open_queue', columns, unique=False, **_OPEN)
        return
    # PostgreSQL: built CONCURRENTLY beside the old one, outside the migration's transaction, as 0012 does: a
    # county's copies are as many as its hazards, and a plain build would hold every desk action meanwhile.
    # A build cut short leaves an invalid index behind, dropped by the next run.
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_hazard_cc_open_queue_new")
        op.create_index('ix_hazard_cc_open_queue_new', 'hazard_cc', columns, unique=False,
                        postgresql_concurrently=True, postgresql_where=sa.text('is_open'))
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_hazard_cc_open_queue")
        op.execute("ALTER INDEX ix_hazard_cc_open_queue_new RENAME TO ix_hazard_cc_open_queue")


def downgrade() -> None:
    with op.batch_alter_table('hazard_cc', schema=None) as batch_op:
        batch_op.drop_index('ix_hazard_cc_open_queue', **_OPEN)
        batch_op.create_index('ix_hazard_cc_open_queue', ['unit_id', 'next_due', 'hazard_id'], unique=False, **_OPEN)
        batch_op.drop_column('created_at')
