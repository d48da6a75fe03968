"""Hazard records (火灾隐患), their referral hops, copies (cc), re-inspections and photos."""

from datetime import datetime, timezone

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime, utcnow

# Queue order key for hazards with no running clock: after every real deadline.
NO_DEADLINE = datetime(9999, 12, 31, tzinfo=timezone.utc)

# Open hazards are what queues list; closed ones only pile up over the years. Partial indexes keep a
# queue page from reading a unit's whole history (measured in bench/queue_bench.py).
OPEN_WHERE = sa.text("status IN ('referred', 'accepted', 'rectifying', 'reinspection_due')")


def _open_index(name: str, *cols: str) -> sa.Index:
    return sa.Index(name, *cols, sqlite_where=OPEN_WHERE, postgresql_where=OPEN_WHERE)


class Hazard(SQLModel, table=True):
    __tablename__ = "hazards"
    __table_args__ = (
        # the queue: a unit's hazards by urgency, keyset-paged on (next_due, created_at, id); closed ones
        # for history. created_at before id: a day's reports share a deadline, and new rows then go to
        # the end of the tie instead of to random pages (migration 0009)
        sa.Index("ix_hazards_queue", "holder_unit_id", "next_due", "created_at", "id"),
        _open_index("ix_hazards_queue_open", "holder_unit_id", "next_due", "created_at", "id"),
        _open_index("ix_hazards_queue_open_severity", "holder_unit_id", "severity", "next_due", "created_at", "id"),
        _open_index("ix_hazards_queue_open_class", "holder_unit_id", "place_class", "next_due", "created_at", "id"),
        # the sweep: what must escalate by now
        sa.Index("ix_hazards_escalate_at", "escalate_at"),
        sa.Index("ix_hazards_town_created", "town_id", "created_at"),
        sa.Index("ix_hazards_place_category", "place_id", "category"),
        # a new report's duplicate: the earliest open hazard of the same category at the premises
        _open_index("ix_hazards_open_place", "place_id", "category", "created_at", "id"),
        sa.Index("ix_hazards_grid_id", "grid_id"),  # a grid worker's hazards; new ones at the end (migration 0010)
        # the hazards that name an inspection: when it arrives, those of another premises lose the link
        # (app.sync.service, migration 0012)
        sa.Index("ix_hazards_inspection_id", "inspection_id"),
    )

    id: str = Field(primary_key=True, max_length=36)  # client-made UUID
    place_id: str = Field(foreign_key="places.id", max_length=36)
    inspection_id: str | None = Field(default=None, max_length=36)
    category: str = Field(max_length=64)
    severity: str = Field(max_length=16)  # general | major (重大火灾隐患)
    violation: bool = False  # 消防违法行为
    description: str = Field(default="", max_length=2000)
    found_at: datetime = Field(sa_type=UTCDateTime)  # device time, kept as data, never used to order
    photos: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    reporter_user_id: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    reporter_device_id: str | None = Field(default=None, max_length=36)

    # where, copied from the premises at report time so queues filter without joins
    town_id: str = Field(foreign_key="org_units.id", max_length=36)
    community_id: str = Field(max_length=36)
    grid_id: str = Field(max_length=36)
    place_class: str = Field(max_length=32)

    # the lifecycle state (app.referrals.lifecycle.HazardState)
    status: str = Field(max_length=24)
    tier: str = Field(max_length=24)
    holder_unit_id: str = Field(foreign_key="org_units.id", max_length=36)
    previous_holder_unit_id: str | None = Field(default=None, max_length=36)
    previous_tier: str | None = Field(default=None, max_length=24)
    ack_due: datetime = Field(sa_type=UTCDateTime)
    order_due: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rectify_due: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reinspect_due: datetime | None = Field(default=None, sa_type=UTCDateTime)
    listed_supervision: bool = False  # 挂牌督办
    has_rectified_evidence: bool = False
    # derived from the clocks on every save: earliest running clock (queue urgency) and the
    # earliest clock the holder answers for (sweep); see referrals.service.derive_clocks
    next_due: datetime = Field(default=NO_DEADLINE, sa_type=UTCDateTime)
    escalate_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # how each clock counted in working days was computed (app.referrals.calendar.ClockBasis as JSON,
    # {"ack": {"after": "2026-12-31", "workdays": 1}, "reinspect": {..., "from": "rectify"}}), so that a
    # change of the working-day overrides re-times it; None for hazards stored before (never re-timed)
    clock_basis: dict | None = Field(default=None, sa_type=sa.JSON(none_as_null=True))

    # why it went there
    rule: str = Field(max_length=64)
    reason_zh: str = Field(max_length=300)
    reason_en: str = Field(max_length=300)
    policy_version: str = Field(max_length=64)

    duplicate_of_id: str | None = Field(default=None, max_length=36)  # candidate shown to the holder
    merged_into_id: str | None = Field(default=None, max_length=36)
    attention: int = 0  # field events that did not fit the state, waiting for the holder to look
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    deadline_met: bool | None = None  # set at close: closed by the rectification deadline (隐患清零率)
    # a rectification deadline passed unmet: replaced or cleared once passed (a late extension, a hand-over) or
    # closed after it; a close is on time only without it, whatever deadline runs then (migration 0018)
    rectify_missed: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    # 挂牌督办: when it was listed, and when the listing went to the next level up, six months on unrectified
    # (DOMAIN.md; the sweep, migration 0021)
    listed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    listing_raised_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def major_or_listed(self) -> bool:
        """A major hazard (重大火灾隐患) or one under listed supervision (挂牌督办): dismissed only by its holder,
        closed only on photos, never merged into a general one."""
        return self.severity == "major" or self.listed_supervision

    # audit chain head and optimistic lock
    event_seq: int = 0
    last_event_hash: str = Field(default="", max_length=64)
    version: int = Field(default=1)



class HazardCC(SQLModel, table=True):
    """A unit copied on a hazard (抄送): sees it, is not its holder."""

    __tablename__ = "hazard_cc"
    __table_args__ = (
        sa.Index("ix_hazard_cc_unit_hazard", "unit_id", "hazard_id"),  # a unit's copies, covering
        # the cc queue pages like the holder's: by the hazard's urgency, open ones only
        sa.Index("ix_hazard_cc_open_queue", "unit_id", "next_due", "created_at", "hazard_id",
                 sqlite_where=sa.text("is_open"), postgresql_where=sa.text("is_open")),
    )

    hazard_id: str = Field(foreign_key="hazards.id", primary_key=True, max_length=36)
    unit_id: str = Field(foreign_key="org_units.id", primary_key=True, max_length=36)
    reason: str = Field(default="", max_length=64)
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # copied from the hazard on every save (referrals.service.sync_cc), so the cc queue needs no sort
    next_due: datetime = Field(default=NO_DEADLINE, sa_type=UTCDateTime)
    is_open: bool = True
    # the hazard's created_at (it never changes): equal deadlines oldest report first, as the held queue
    created_at: datetime = Field(sa_type=UTCDateTime)


class Referral(SQLModel, table=True):
    """One hop of the chain: a holder's time with the hazard."""

    __tablename__ = "referrals"
    __table_args__ = (sa.UniqueConstraint("hazard_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    hazard_id: str = Field(foreign_key="hazards.id", max_length=36)
    seq: int
    from_unit_id: str | None = Field(default=None, max_length=36)
    to_unit_id: str = Field(foreign_key="org_units.id", max_length=36, index=True)
    tier: str = Field(max_length=24)
    via: str = Field(max_length=24)  # route | escalate | transfer | return | sweep
    reason: str = Field(default="", max_length=500)
    rule: str | None = Field(default=None, max_length=64)
    sent_at: datetime = Field(sa_type=UTCDateTime)
    ack_due: datetime = Field(sa_type=UTCDateTime)
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    order_due: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rectify_due: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reinspect_due: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    outcome: str | None = Field(default=None, max_length=24)  # escalated | transferred | returned | closed…


class Reinspection(SQLModel, table=True):
    """复查: a re-visit, from the field (sync) or the desk. Kept even when it no longer fits the state."""

    __tablename__ = "reinspections"

    id: str = Field(primary_key=True, max_length=36)
    hazard_id: str = Field(foreign_key="hazards.id", max_length=36, index=True)
    reported_hazard_id: str = Field(max_length=36)  # as sent; differs when it was merged away
    rectified: bool
    note: str = Field(default="", max_length=2000)
    at: datetime = Field(sa_type=UTCDateTime)  # device time
    photos: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    user_id: str | None = Field(default=None, foreign_key="users.id", max_length=36)
    device_id: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    outcome: str = Field(max_length=24)  # applied | flagged
    flag_reason: str | None = Field(default=None, max_length=300)
