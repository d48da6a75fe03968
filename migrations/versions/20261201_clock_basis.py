"""hazards.clock_basis: how each clock counted in working days was computed

A clock such as 报到 "by the end of the next working day" was counted with the working-day calendar as
it stood. For a year the calendar package does not know, that is Monday-Friday until an admin enters the
year's holidays and adjusted workdays (调休). The basis (the day counting started after, the number of
working days) lets saving the overrides count the running clocks again. Hazards stored before have none
and keep their deadlines.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 07:00:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.add_column(sa.Column('clock_basis', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.drop_column('clock_basis')
