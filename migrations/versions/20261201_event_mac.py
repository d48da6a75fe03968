"""hazard_events.mac: each event's hash sealed with a key kept outside the database

The chain's SHA-256 shows an edit only to someone who trusts the stored hashes: whoever can write the
database can rewrite an event and every hash after it, and the chain still verifies. The seal is an
HMAC of the event's hash under the audit key (FIREGRID_AUDIT_KEY, else derived from the secret key),
which lives in the server's configuration, not in the database. Events stored before have none:
`firegrid migrate` seals those whose chains verify (app/audit/service.py seal_unsealed).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01 17:00:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hazard_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mac', sa.String(length=64), nullable=True))
    # what is left to seal, for `firegrid migrate` at every start; empty once all are sealed
    if op.get_bind().dialect.name != "postgresql":
        op.create_index('ix_hazard_events_unsealed', 'hazard_events', ['hazard_id'], unique=False,
                        sqlite_where=sa.text("mac IS NULL"))
        return
    # PostgreSQL: every event is unsealed now, so the build reads the whole table: CONCURRENTLY, as 0019,
    # not holding every write to a hazard meanwhile; an invalid index left by a build cut short is dropped first
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_hazard_events_unsealed")
        op.create_index('ix_hazard_events_unsealed', 'hazard_events', ['hazard_id'], unique=False,
                        postgresql_concurrently=True, postgresql_where=sa.text("mac IS NULL"))


def downgrade() -> None:
    op.drop_index('ix_hazard_events_unsealed', table_name='hazard_events')
    with op.batch_alter_table('hazard_events', schema=None) as batch_op:
        batch_op.drop_column('mac')
