"""places.field_versions replaces places.class_version: which change set each field a phone edits

A phone edits a premises from its copy and sends the whole record. Against the version it saw
(``base_version``), the version at which each field last changed, and on which device, tell the server
which of the values it sends were chosen knowing the field as it is, and which are only what an older
copy had: an office's correction of the owner's phone, a move to another grid, a class set by the
supervising body. ``{field: [version, device id or null]}``. The class's version is carried over (its
device unknown); the other fields of premises stored before start unknown (the phone's value is taken,
as before).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 13:00:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('places', schema=None) as batch_op:
        batch_op.add_column(sa.Column('field_versions', sa.JSON(), nullable=False, server_default='{}'))
    json = "json_build_" if op.get_bind().dialect.name == "postgresql" else "json_"
    op.execute(f"UPDATE places SET field_versions = {json}object('place_class', {json}array(class_version, NULL)) "
               "WHERE class_version > 1")
    with op.batch_alter_table('places', schema=None) as batch_op:
        batch_op.drop_column('class_version')


def downgrade() -> None:
    with op.batch_alter_table('places', schema=None) as batch_op:
        batch_op.add_column(sa.Column('class_version', sa.Integer(), nullable=False, server_default='1'))
    read = ("CAST(field_versions -> 'place_class' ->> 0 AS integer)" if op.get_bind().dialect.name == "postgresql"
            else "json_extract(field_versions, '$.place_class[0]')")
    op.execute(f"UPDATE places SET class_version = {read} WHERE {read} IS NOT NULL")
    with op.batch_alter_table('places', schema=None) as batch_op:
        batch_op.drop_column('field_versions')
