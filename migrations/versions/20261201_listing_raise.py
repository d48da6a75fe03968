"""hazards.listed_at, listing_raised_at: listed supervision raised to the next level after six months

DOMAIN.md: a hazard still not rectified is on listed supervision (挂牌督办) by the government; after six
months, by the next level up. A listed hazard held by the brigade has no tier left to escalate to, so the
sweep had nothing to do with it; it now raises the listing once, six months after the hazard was listed
(an event on its timeline, and the holder's attention). listed_at: when it was listed. Hazards stored
before: the time of the escalation that listed it (its event), else the report's.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01 18:00:00
"""
import sqlalchemy as sa
from alembic import op

import app.db


def add_months(t, n: int):
    """As app/referrals/calendar.py add_months, as it was when this was written (a migration stays as it ran)."""
    import calendar
    y, m = divmod(t.month - 1 + n, 12)
    year, month = t.year + y, m + 1
    return t.replace(year=year, month=month, day=min(t.day, calendar.monthrange(year, month)[1]))


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.add_column(sa.Column('listed_at', app.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('listing_raised_at', app.db.UTCDateTime(timezone=True), nullable=True))
    op.execute("UPDATE hazards SET listed_at = COALESCE((SELECT min(e.server_time) FROM hazard_events e "
               "WHERE e.hazard_id = hazards.id AND CAST(e.data AS TEXT) LIKE '%county_listed_supervision%'), "
               "created_at) WHERE listed_supervision")
    # the sweep finds them by escalate_at: those the brigade holds open, six months after their listing (few
    # rows: the hazards under listed supervision)
    t = sa.table('hazards', sa.column('id', sa.String), sa.column('listed_at', app.db.UTCDateTime(timezone=True)),
                 sa.column('escalate_at', app.db.UTCDateTime(timezone=True)), sa.column('listed_supervision', sa.Boolean),
                 sa.column('tier', sa.String), sa.column('status', sa.String))
    bind = op.get_bind()
    rows = bind.execute(sa.select(t.c.id, t.c.listed_at).where(
        t.c.listed_supervision, t.c.tier == 'brigade', t.c.escalate_at.is_(None),
        t.c.status.in_(('referred', 'accepted', 'rectifying', 'reinspection_due')))).all()
    for hazard_id, listed_at in rows:
        bind.execute(sa.update(t).where(t.c.id == hazard_id).values(escalate_at=add_months(listed_at, 6)))


def downgrade() -> None:
    with op.batch_alter_table('hazards', schema=None) as batch_op:
        batch_op.drop_column('listing_raised_at')
        batch_op.drop_column('listed_at')
