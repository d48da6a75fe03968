"""sync_ops.record_id: the record an applied op carried, so that an op_id re-used for another record is told apart

An op_id names one op: its re-send is answered ``duplicate`` with its first result, and the phone then
drops it from its outbox. A phone that gave a second op (another hazard, another inspection) the id of an
earlier one was answered ``duplicate`` too, and that second record was lost without a word. The id of the
record the op carries (``data.id``), with the op's type already stored, tells the two apart: the same op
re-sent names the same record however the app serialises it, an op for another record under a used op_id
is refused (``op_id_reused``). Ops applied before have none and are answered as before.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 16:00:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sync_ops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('record_id', sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sync_ops', schema=None) as batch_op:
        batch_op.drop_column('record_id')
