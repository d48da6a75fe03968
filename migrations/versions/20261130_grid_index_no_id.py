"""grid index without the id: (grid_id) instead of (grid_id, id)

A grid worker's hazards are found by grid; ordering them by id within the grid cost every new hazard a
random page of the index (~190 pages per 200-hazard batch, bench/push_phases.py --pages). Without
the id, SQLite keys the entries by rowid and PostgreSQL by heap position: new hazards go to the end
of their grid. The one reader that wanted id order, the whole-scope pull, sorts a grid's hazards
(hundreds) instead.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 10:55:00
"""
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.drop_index('ix_hazards_grid_id')
        batch_op.create_index('ix_hazards_grid_id', ['grid_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.drop_index('ix_hazards_grid_id')
        batch_op.create_index('ix_hazards_grid_id', ['grid_id', 'id'], unique=False)
