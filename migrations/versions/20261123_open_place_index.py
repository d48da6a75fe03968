"""open place index: a new report finds the hazard it duplicates with one index seek

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 07:31:18.996169
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.create_index('ix_hazards_open_place', ['place_id', 'category', 'created_at', 'id'], unique=False, sqlite_where=sa.text("status IN ('referred', 'accepted', 'rectifying', 'reinspection_due')"), postgresql_where=sa.text("status IN ('referred', 'accepted', 'rectifying', 'reinspection_due')"))


def downgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.drop_index('ix_hazards_open_place', sqlite_where=sa.text("status IN ('referred', 'accepted', 'rectifying', 'reinspection_due')"), postgresql_where=sa.text("status IN ('referred', 'accepted', 'rectifying', 'reinspection_due')"))
