"""places.version and places.class_version: which change of a premises a phone's edit was made on

A phone edits a premises from its copy and sends the whole record, class included. The version it saw
(``base_version`` of ``place.upsert``), against the version at which the class last changed, tells the
server whether the class it sends was chosen knowing the supervising body's last word or is only the class
of an older copy. Premises stored before start at 1.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 10:30:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('places', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('class_version', sa.Integer(), nullable=False, server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('places', schema=None) as batch_op:
        batch_op.drop_column('class_version')
        batch_op.drop_column('version')
