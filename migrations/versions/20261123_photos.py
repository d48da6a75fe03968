"""photos: content-addressed blobs and the records that use them

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 08:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import app.db


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blobs',
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mime', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('exif_datetime', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('gps_lat', sa.Float(), nullable=True),
    sa.Column('gps_lon', sa.Float(), nullable=True),
    sa.Column('orientation', sa.Integer(), nullable=True),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('uploaded_by_user_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('uploaded_by_device_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.ForeignKeyConstraint(['uploaded_by_user_id'], ['users.id'], name=op.f('fk_blobs_uploaded_by_user_id_users')),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_blobs'))
    )

    op.create_table('photo_refs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('hazard_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('record_kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('record_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("record_kind IN ('hazard', 'reinspection', 'action')", name=op.f('ck_photo_refs_record_kind')),
    sa.ForeignKeyConstraint(['hazard_id'], ['hazards.id'], name=op.f('fk_photo_refs_hazard_id_hazards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_photo_refs')),
    sa.UniqueConstraint('sha256', 'record_kind', 'record_id', name=op.f('uq_photo_refs_sha256_record_kind_record_id'))
    )
    with op.batch_alter_table('photo_refs', schema=None) as batch_op:
        batch_op.create_index('ix_photo_refs_hazard_id', ['hazard_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('photo_refs', schema=None) as batch_op:
        batch_op.drop_index('ix_photo_refs_hazard_id')

    op.drop_table('photo_refs')
    op.drop_table('blobs')
