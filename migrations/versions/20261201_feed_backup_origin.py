"""change_feed_state.backup_taken_at, restored_from: a restored backup refuses the phones' cursors of before

`firegrid backup` marks its copy of the database with the time it was taken (backup_taken_at). The first
start of such a copy (or `firegrid restored` on a database restored by other means) gives its change feed a
new epoch and records the one it leaves, with that time, in restored_from: every cursor of before is then
refused (the copy's change seqs above its newest are handed out again, to other changes, and a cursor past
them would skip those), and a phone whose cursor names an epoch of restored_from is told the server was
restored from a backup taken then, and sends again what it sent since (app/sync/pull.py). A live database
has restored_from [] and no backup_taken_at.

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
        batch_op.add_column(sa.Column('backup_taken_at', app.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('restored_from', sa.JSON(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('change_feed_state', schema=None) as batch_op:
        batch_op.drop_column('restored_from')
        batch_op.drop_column('backup_taken_at')
