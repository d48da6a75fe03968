"""blob_holders and photo_refs.added_by_user_id: proof of possession for photos

A photo's name (its sha256) is easy to learn; naming it in a record must not let anyone see it. A ref
counts only if whoever attached it holds the photo: its first uploader (``blobs.uploaded_by_user_id``, so
an upload stays one write statement) or a user listed in ``blob_holders``, who sent the same bytes later
or attached it while they could see it. Refs stored before keep ``added_by_user_id`` NULL and count.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 12:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import app.db


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blob_holders',
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sha256'], ['blobs.sha256'], name=op.f('fk_blob_holders_sha256_blobs')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_blob_holders_user_id_users')),
    sa.PrimaryKeyConstraint('sha256', 'user_id', name=op.f('pk_blob_holders'))
    )
    with op.batch_alter_table('photo_refs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('added_by_user_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_photo_refs_added_by_user_id_users'), 'users',
                                    ['added_by_user_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('photo_refs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_photo_refs_added_by_user_id_users'), type_='foreignkey')
        batch_op.drop_column('added_by_user_id')
    op.drop_table('blob_holders')
