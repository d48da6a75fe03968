"""change_feed_state.backup_of, backup_taken_at: a restored backup refuses the cursors of the database it copied

`firegrid backup` gives its copy of the database a new feed epoch and keeps the copied one here. Restored,
the copy refuses every cursor made before (its change seqs above the copy's newest are handed out again,
to other changes, so an old cursor past them would skip those), and a phone whose cursor names the copied
epoch is told the server was restored from a backup taken at backup_taken_at: it sends again what it sent
since (app/sync/pull.py). A live database has neither.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01 19:10:00
"""
import sqlalchemy as sa
from alembic import op

import app.db

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('change_feed_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('backup_of', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('backup_taken_at', app.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('change_feed_state', schema=None) as batch_op:
        batch_op.drop_column('backup_taken_at')
        batch_op.drop_column('backup_of')
