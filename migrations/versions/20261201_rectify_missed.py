"""hazards.rectify_missed: a rectification deadline passed unmet, remembered for the figures

The share of hazards cleared by their deadline (隐患按期整改率) was decided at the close from the deadline
running then. A deadline the owner missed stopped counting as soon as it was replaced: by a new order
after it passed (an extension granted too late), or by the new holder's clocks after an escalation,
transfer or return. The flag is set when a deadline that has passed is replaced or cleared, and a close
counts as on time only without it; a close after the deadline sets it too, so that a hazard reopened and
closed again counts alike whichever way its deadline was missed. Hazards stored before: set where a
referral step ended (handed on or closed) after its deadline (an extension on the same step cannot be
told any more).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01 16:30:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rectify_missed', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE hazards SET rectify_missed = TRUE WHERE EXISTS (SELECT 1 FROM referrals r "
               "WHERE r.hazard_id = hazards.id AND r.rectify_due IS NOT NULL AND r.ended_at IS NOT NULL "
               "AND r.ended_at > r.rectify_due)")


def downgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.drop_column('rectify_missed')
