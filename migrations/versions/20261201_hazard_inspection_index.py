"""hazards by inspection: an index on hazards.inspection_id

A hazard may name an inspection the server does not hold yet (phones send in any order). When that
inspection arrives, the hazards naming it that are of another premises lose the link (the inspection
is the record of a visit to its own premises): they are found by this index, not by a scan of every
hazard.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 06:00:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY, outside the migration's transaction: on a county's hazards table a plain CREATE
        # INDEX would hold every push and desk action until the index is built
        with op.get_context().autocommit_block():
            # A build cut short (its lock timeout, a writer's long transaction) leaves the index behind,
            # INVALID, and the run again then failed on its name: such a leftover is dropped first.
            leftover = op.get_bind().execute(sa.text(
                "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = 'ix_hazards_inspection_id' AND c.relnamespace = current_schema()::regnamespace"
            )).scalar()
            if leftover:
                op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_hazards_inspection_id")
            op.create_index('ix_hazards_inspection_id', 'hazards', ['inspection_id'], unique=False,
                            postgresql_concurrently=True)
    else:
        op.create_index('ix_hazards_inspection_id', 'hazards', ['inspection_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.drop_index('ix_hazards_inspection_id')
