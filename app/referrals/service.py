"""The referral chain's use cases: load -> pure core (route / lifecycle.apply) -> save -> audit events.

Services never commit; the caller's transaction (a request, a sync batch, a sweep) succeeds or
fails whole. Every hazard row a use case changes is loaded with a row lock (FOR UPDATE on
PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers), so two writers never both
advance one hazard or its audit chain.
"""

import functools
import json
import logging
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from datetime import date, datetime, timedelta, timezone
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased
from pydantic_core import PydanticUndefined
from sqlmodel import Session, select

from app.audit.service import Actor, event_row, insert_events
from app.audit.models import HazardEvent
from app.db import PreparedInsert, insert_prepared, prepare_insert, utcnow
from app.errors import Conflict, DomainError, Invalid
from app.hazards.models import NO_DEADLINE, Hazard, HazardCC, Referral, Reinspection
from app.org.models import OrgUnit, UnitKind
from app.photos.service import claim_refs, register_refs, register_refs_bulk
from app.places.models import PLACE_CLASS_NAMES, Place
from app.referrals import lifecycle
from app.referrals.calendar import WorkCalendar, add_months, package_first_year, package_last_year, statutory_days_off
from app.referrals.lifecycle import Action, ActionParams, EffectKind, HazardState, Status
from app.referrals.models import WorkdayOverride
from app.referrals.policy import Policy
from app.referrals.routing import TIER_ORDER, Decision, Facts, RoutingError, match_rule, next_tier, route

log = logging.getLogger("firegrid.sweep")

OPEN_STATUSES = (Status.REFERRED, Status.ACCEPTED, Status.RECTIFYING, Status.REINSPECTION_DUE)
# Clocks the holder answers for; the owner's rectification deadline alone does not move the hazard.
ESCALATING_CLOCKS = frozenset({"ack", "order", "reinspect"})
HOP_OUTCOME = {"escalate": "escalated", "transfer": "transferred", "return": "returned"}


@dataclass
class Rules:
    """The policy in force and the working-day calendar, for one transaction."""

    policy: Policy
    calendar: WorkCalendar


_OVERRIDES = sa.select(WorkdayOverride.day, WorkdayOverride.is_workday)  # built once: every routed request reads it


def load_calendar(session: Session) -> WorkCalendar:
    return WorkCalendar(dict(session.execute(_OVERRIDES).all()))


# PostgreSQL advisory lock (classid "FGCA", object: the overrides table's OID) that makes saving overrides
# one writer at a time, so each save counts the clocks again with every override committed before it.
_CALENDAR_LOCK = sa.text("SELECT pg_advisory_xact_lock(:cls, "
                         "((CAST('workday_overrides' AS regclass))::oid::bigint - 2147483648)::int)")
# the same lock, shared: held by a writer that counts clocks with a calendar it read before (a sync push)
_CALENDAR_LOCK_SHARED = sa.text("SELECT pg_advisory_xact_lock_shared(:cls, "
                                "((CAST('workday_overrides' AS regclass))::oid::bigint - 2147483648)::int)")
CALENDAR_LOCK_CLASS = 0x46474341


def calendar_for_writing(session: Session) -> WorkCalendar:
    """The override table as a write transaction sees it, kept from changing until that transaction ends:
    on PostgreSQL the calendar lock, shared (save_overrides waits for the writer to commit, so its re-timing
    sees what the writer wrote; taken before any row lock, as save_overrides takes it); on SQLite the
    writer's write lock does the same. A writer that counted clocks with a calendar read earlier (a sync
    push reads it with the token, plans, then writes) compares it with this one: an admin's save that
    committed in between would otherwise leave the writer's new clocks counted without it, and re-timed
    never (retime_clocks ran before they existed)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_CALENDAR_LOCK_SHARED, {"cls": CALENDAR_LOCK_CLASS})
    return load_calendar(session)


def save_overrides(session: Session, overrides: Iterable[tuple[date, bool, str]], *, actor: Actor | None = None,
                   now: datetime | None = None) -> list[str]:
    """Insert or replace each day's working-day override, (day, is_workday, note), in one statement per
    day (the last of a day given twice wins), then count again, in the same transaction, the running
    clocks of open hazards that were counted in working days across a day whose working status changed
    (retime_clocks). Returns the ids of the hazards whose clocks moved.

    An upsert, not ORM merge(): merge() looks the day up, then INSERTs, so two admins adding the same new
    day at once on PostgreSQL both inserted and the second failed on the primary key (a 500). Saves are
    serialised on PostgreSQL (an advisory lock held to commit): a second admin's save waits for the first
    and counts with both; on SQLite the write lock does the same."""
    table = WorkdayOverride.__table__
    is_pg = session.get_bind().dialect.name == "postgresql"
    if is_pg:
        session.execute(_CALENDAR_LOCK, {"cls": CALENDAR_LOCK_CLASS})
    before = load_calendar(session)
    insert = postgresql.insert if is_pg else sqlite.insert
    given = {o[0]: o for o in overrides}
    for day, is_workday, note in given.values():
        stmt = insert(table).values(day=day, is_workday=is_workday, note=note)
        session.execute(stmt.on_conflict_do_update(index_elements=[table.c.day],
                                                   set_={"is_workday": stmt.excluded.is_workday,
                                                         "note": stmt.excluded.note}))
    session.flush()
    after = load_calendar(session)
    # the first override of a year the package does not know ends the guess of its statutory days off
    # (calendar.statutory_days_off): one the schedule did not list is a working day from now on
    newly = {d.year for d in given} - {d.year for d in before.overrides}
    candidates = set(given).union(*(statutory_days_off(y) for y in newly if y > package_last_year()))
    changed = sorted(d for d in candidates if before.is_workday(d) != after.is_workday(d))
    if not changed:  # a note, or a day declared as it already counted: no clock can move
        return []
    return retime_clocks(session, after, changed, actor or Actor.system(), now or utcnow())


_RETIME_CHUNK = 500


def retime_year(session: Session, year: int, *, actor: Actor | None = None, now: datetime | None = None) -> list[str]:
    """After an upgrade of the chinese-calendar package to a release with ``year``'s schedule: count again
    the running clocks counted while it had none (Monday–Friday less the law's days off, or, before those
    were known here, Monday–Friday alone). The days looked at are those of ``year`` without an override on
    which the package now differs from either guess; a clock whose due does not move is left as it is, so
    running it twice changes nothing. Under the calendar lock, as a save of overrides. Returns the ids of
    the hazards whose clocks moved."""
    if not package_first_year() <= year <= package_last_year():
        raise Invalid(f"year: the chinese-calendar package has no schedule for {year} (it knows "
                      f"{package_first_year()} to {package_last_year()}); enter the year's days as overrides "
                      "instead", code="unknown_year", field="year")
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_CALENDAR_LOCK, {"cls": CALENDAR_LOCK_CLASS})
    calendar = load_calendar(session)
    statutory = statutory_days_off(year)
    changed, day = [], date(year, 1, 1)
    while day.year == year:
        if day not in calendar.overrides:
            weekday, known = day.weekday() < 5, calendar.is_workday(day)
            if known != weekday or known != (weekday and day not in statutory):
                changed.append(day)
        day += timedelta(days=1)
    return retime_clocks(session, calendar, changed, actor or Actor.system(), now or utcnow()) if changed else []


def retime_clocks(session: Session, calendar: WorkCalendar, changed_days: list[date], actor: Actor,
                  now: datetime) -> list[str]:
    """Count again, with ``calendar``, the running clocks of open hazards that were counted in working days
    (they have a basis, hazards.clock_basis) and may span one of ``changed_days``; where a due moves, save it
    with next_due and escalate_at, the current referral hop's copy, the copies' urgency, and a
    ``clocks_retimed`` event (each clock's old and new due and the changed days in its window). Returns
    the ids of the hazards changed.

    Decisions: an explicit deadline (a holder's 限期整改 date) has no basis and never moves; the 复查 clock
    counted from it does. Hazards stored before bases were kept, and closed, dismissed or merged ones, are
    left alone. A clock moved into the past stays overdue (the sweep escalates it on its next run; nothing
    escalates here). An escalation already made is not undone: the hazard's new holder's clocks, counted
    since, are re-timed like any."""
    first = min(changed_days)
    # a clock ends at the local midnight after its last counted day: one that ends before the first
    # changed day begins cannot have counted it (nor, a fortiori, the 复查 counted from it)
    where = [Hazard.status.in_([s.value for s in OPEN_STATUSES]), Hazard.clock_basis.is_not(None)]
    if first > date.min:  # (0001-01-01 has no day before it: every clock may span it)
        since = calendar.end_of_local_day(first - timedelta(days=1))
        where.append(sa.or_(*(getattr(Hazard, f) > since for f in lifecycle.DUE_FIELDS.values())))
    candidates = session.exec(select(Hazard.id).where(*where).order_by(Hazard.id)).all()
    retimed: list[str] = []
    is_pg = session.get_bind().dialect.name == "postgresql"
    for i in range(0, len(candidates), _RETIME_CHUNK):
        stmt = (select(Hazard).where(Hazard.id.in_(candidates[i:i + _RETIME_CHUNK])).order_by(Hazard.id)
                .execution_options(populate_existing=True))
        if is_pg:
            stmt = stmt.with_for_update()  # in id order, as lock_for_action takes two
        for h in session.exec(stmt).all():
            if h.status not in OPEN_STATUSES:  # closed meanwhile
                continue
            if _retime_hazard(session, calendar, h, changed_days, actor, now):
                retimed.append(h.id)
    return retimed


def _retime_hazard(session: Session, calendar: WorkCalendar, h: Hazard, changed_days: list[date], actor: Actor,
                   now: datetime) -> bool:
    before = state_of(h)
    after, moved = lifecycle.retime(before, calendar, changed_days)
    if not moved:
        return False
    old_escalate_at = h.escalate_at
    put_state(h, after)
    hop = _current_hop(session, h.id)
    if hop is not None and hop.ended_at is None and hop.to_unit_id == h.holder_unit_id:
        for r in moved:
            due_field = lifecycle.DUE_FIELDS[r.clock]
            if getattr(hop, due_field) == r.old_due:
                setattr(hop, due_field, r.new_due)
        session.add(hop)
    days = sorted({d for r in moved for d in r.days})
    _record(session, h, "clocks_retimed", actor, now, {
        "reason": "工作日调整，期限重新计算 (working-day calendar changed: deadlines counted again)",
        "clocks": {r.clock: {"old_due": r.old_due, "new_due": r.new_due, "after": r.basis.after.isoformat(),
                             "workdays": r.basis.workdays, **({"from": r.basis.from_clock} if r.basis.from_clock else {}),
                             "days": [d.isoformat() for d in r.days], "overdue": r.new_due <= now}
                   for r in moved},
        "changed_days": [{"day": d.isoformat(), "is_workday": calendar.is_workday(d)} for d in days],
        "escalate_at": {"old": old_escalate_at, "new": h.escalate_at},
    })
    sync_cc(session, h)
    return True


# -- state <-> row -------------------------------------------------------------------------

_STATE_FIELDS = ("tier", "holder_unit_id", "previous_holder_unit_id", "previous_tier", "ack_due", "order_due",
                 "rectify_due", "reinspect_due", "listed_supervision", "has_rectified_evidence")


def state_of(h: Hazard) -> HazardState:
    return HazardState(status=Status(h.status), basis=lifecycle.basis_from_json(h.clock_basis),
                       **{f: getattr(h, f) for f in _STATE_FIELDS})


def put_state(h: Hazard, st: HazardState) -> None:
    h.status = st.status.value
    for f in _STATE_FIELDS:
        value = getattr(st, f)
        setattr(h, f, value.astimezone(timezone.utc) if isinstance(value, datetime) else value)
    h.clock_basis = lifecycle.basis_json(st.basis)
    derive_clocks(h, state_of(h))


# DOMAIN.md: still not rectified, listed supervision by the government; after six months, by the next level up
LISTING_RAISE_MONTHS = 6


def derive_clocks(h: Hazard, st: HazardState) -> None:
    """next_due orders the queue (overdue first, then nearest); escalate_at drives the sweep."""
    running = lifecycle.clocks(st)
    h.next_due = min(running.values(), default=NO_DEADLINE)
    holder_clocks = [due for name, due in running.items() if name in ESCALATING_CLOCKS]
    if st.tier == "brigade" and st.listed_supervision:
        # no tier left to escalate to: what is left is to raise the listing, once, six months after it began
        listed_at = getattr(h, "listed_at", None)
        h.escalate_at = (add_months(listed_at, LISTING_RAISE_MONTHS)
                         if listed_at is not None and getattr(h, "listing_raised_at", None) is None
                         and st.status in OPEN_STATUSES else None)
    else:
        h.escalate_at = min(holder_clocks) if holder_clocks else None


def clocks_public(h: Hazard, now: datetime) -> dict[str, dict[str, Any]]:
    return {name: {"due": due, "overdue": due <= now} for name, due in lifecycle.clocks(state_of(h)).items()}


# -- who holds what ------------------------------------------------------------------------

TIER_KIND = {"town_office": UnitKind.town_office, "police_station": UnitKind.police_station, "brigade": UnitKind.brigade}


@dataclass(frozen=True)
class TownFacts:
    """What routing needs to know about the place's town: enforcement power and the unit of each tier."""

    enforcement_power: bool
    units: dict[str, str]


_ORG = OrgUnit.__table__
# Everything routing needs about a town in one statement, built once: the town (its enforcement power),
# the community (its beat's police station), the town's office and stations, the county's brigade. As
# four ORM loads it was a fifth of a one-op push's CPU (the identity map does not keep an unreferenced
# unit, so the town was loaded twice).
_TOWN_UNITS = (
    sa.select(_ORG.c.id, _ORG.c.kind, _ORG.c.town_id, _ORG.c.enforcement_power, _ORG.c.police_station_id)
    .where(sa.or_(
        _ORG.c.id == sa.bindparam("town"),
        _ORG.c.id == sa.bindparam("community"),
        sa.and_(_ORG.c.town_id == sa.bindparam("town"),
                sa.or_(_ORG.c.kind == UnitKind.town_office.value, _ORG.c.kind == UnitKind.police_station.value)),
        sa.and_(_ORG.c.kind == UnitKind.brigade.value,
                _ORG.c.county_id == sa.select(_ORG.c.county_id).where(_ORG.c.id == sa.bindparam("town"))
                .scalar_subquery()),
    ))
    .order_by(_ORG.c.code)
)
_TOWN_TIERS = (UnitKind.town_office.value, UnitKind.police_station.value)


def _town_units(session: Session, town_id: str, community_id: str | None) -> TownFacts:
    enforcement_power, beat_station = False, None
    units: dict[str, str] = {}
    for unit_id, kind, unit_town, power, station in session.execute(
            _TOWN_UNITS, {"town": town_id, "community": community_id}):
        if unit_id == town_id:
            enforcement_power = bool(power)
        elif community_id is not None and unit_id == community_id:
            beat_station = station
        if kind == UnitKind.brigade.value or (kind in _TOWN_TIERS and unit_town == town_id):
            units.setdefault(kind, unit_id)  # by code, as ever: the first of a kind
    if beat_station:
        units["police_station"] = beat_station  # the station whose beat covers the community
    return TownFacts(enforcement_power, units)


def tier_units(session: Session, town_id: str, community_id: str | None) -> dict[str, str]:
    """The unit of each tier responsible for a place in this town/community."""
    return _town_units(session, town_id, community_id).units


def lock_hazard(session: Session, hazard_id: str, skip_locked: bool = False) -> Hazard | None:
    stmt = select(Hazard).where(Hazard.id == hazard_id).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=skip_locked)
    return session.exec(stmt).first()


# -- reporting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HazardReport:
    id: str
    place_id: str
    category: str
    severity: str
    violation: bool
    description: str
    found_at: datetime
    photos: tuple[str, ...] = ()
    inspection_id: str | None = None


# A plain namespace stands in for the row while planning: building thousands of ORM instances per
# sync batch cost more than routing them (measured: 0.4 ms each).
_HAZARD_DEFAULTS = {
    name: (f.default_factory() if f.default_factory is not None else f.default)
    for name, f in Hazard.model_fields.items()
    if name in Hazard.__table__.columns and (f.default_factory is not None or f.default is not PydanticUndefined)
}


@dataclass
class PlannedHazard:
    """Every row a new hazard writes, computed without touching the database."""

    hazard: SimpleNamespace  # the hazards row, attribute-accessible like a Hazard
    referral: dict[str, Any]
    cc: list[dict[str, Any]]
    events: list[dict[str, Any]]


def town_facts(session: Session, place: Place) -> TownFacts:
    return _town_units(session, place.town_id, place.community_id)


def plan_hazard(rules: Rules, report: HazardReport, place: Place, town: TownFacts, duplicate_of: str | None,
                actor: Actor, now: datetime, device_time: datetime | None = None) -> PlannedHazard:
    """Route a new hazard and lay out its rows and its first two audit events. Pure apart from the calendar."""
    try:
        decision = route(
            Facts(place_class=place.place_class, severity=report.severity, violation=report.violation,
                  category=report.category, town_enforcement=town.enforcement_power, units=town.units, now=now,
                  sector_regulator_unit_id=place.sector_regulator_id),
            rules.policy, rules.calendar,
        )
    except RoutingError as exc:
        raise Invalid(f"cannot route this hazard: {exc}", code="routing_failed") from exc
    h = SimpleNamespace(**{**_HAZARD_DEFAULTS, **dict(
        id=report.id, place_id=place.id, inspection_id=report.inspection_id, category=report.category,
        severity=report.severity, violation=report.violation, description=report.description,
        found_at=report.found_at.astimezone(timezone.utc), photos=list(report.photos), reporter_user_id=actor.user_id,
        reporter_device_id=actor.device_id, town_id=place.town_id, community_id=place.community_id,
        grid_id=place.grid_id, place_class=place.place_class, status=Status.REFERRED.value, tier=decision.tier,
        holder_unit_id=decision.unit_id, ack_due=decision.ack_due, listed_supervision=decision.listed_supervision,
        listed_at=now if decision.listed_supervision else None, rule=decision.rule, reason_zh=decision.reason_zh, reason_en=decision.reason_en,
        policy_version=decision.policy_version, duplicate_of_id=duplicate_of, created_at=now, updated_at=now,
        clock_basis={"ack": decision.ack_basis.to_json()} if decision.ack_basis is not None else None,
    )})
    derive_clocks(h, state_of(h))
    events = [
        event_row(h, "reported", actor, now, device_time=device_time or report.found_at, data={
            "place_id": place.id, "category": report.category, "severity": report.severity,
            "violation": report.violation, "description": report.description, "photos": list(report.photos),
            "inspection_id": report.inspection_id}),
        event_row(h, "routed", Actor.system(), now, data={
            "tier": decision.tier, "holder_unit_id": decision.unit_id, "cc": list(decision.cc),
            "rule": decision.rule, "reason_zh": decision.reason_zh, "reason_en": decision.reason_en,
            "policy_version": decision.policy_version, "listed_supervision": decision.listed_supervision,
            "ack_due": decision.ack_due, "default_rectify_workdays": decision.rectify_days,
            "duplicate_of_id": duplicate_of}),
    ]
    referral = dict(hazard_id=h.id, seq=1, from_unit_id=None, to_unit_id=decision.unit_id, tier=decision.tier,
                    via="route", reason=decision.reason_zh, rule=decision.rule, sent_at=now, ack_due=decision.ack_due,
                    acknowledged_at=None, order_due=None, rectify_due=None, reinspect_due=None, ended_at=None,
                    outcome=None)
    cc = [dict(hazard_id=h.id, unit_id=u, reason="routing", added_at=now, next_due=h.next_due, is_open=True,
               created_at=h.created_at) for u in decision.cc]
    return PlannedHazard(h, referral, cc, events)


_HAZARD_COLUMNS = [c.name for c in Hazard.__table__.columns]


@dataclass
class PreparedHazards:
    """Planned hazards bound for their INSERTs (prepare_planned), written by write_planned."""

    hazards: PreparedInsert
    referrals: PreparedInsert
    cc: PreparedInsert
    events: PreparedInsert
    # which photos each new hazard uses, by who attached them (its reporter: the one who must hold them)
    photo_refs: dict[str | None, list[tuple[str, str, str, list[str]]]]


def prepare_planned(dialect: sa.engine.Dialect, planned: list[PlannedHazard]) -> PreparedHazards:
    """Bind planned hazards' rows, one statement per table; no database work, so a sync batch does
    it before it takes the write lock."""
    return PreparedHazards(
        hazards=prepare_insert(dialect, Hazard.__table__, [{c: getattr(p.hazard, c) for c in _HAZARD_COLUMNS}
                                                           for p in planned]),
        referrals=prepare_insert(dialect, Referral.__table__, [p.referral for p in planned]),
        cc=prepare_insert(dialect, HazardCC.__table__, [row for p in planned for row in p.cc]),
        events=prepare_insert(dialect, HazardEvent.__table__, [e for p in planned for e in p.events]),
        photo_refs=_refs_by_reporter(planned),
    )


def _refs_by_reporter(planned: list[PlannedHazard]) -> dict[str | None, list[tuple[str, str, str, list[str]]]]:
    out: dict[str | None, list[tuple[str, str, str, list[str]]]] = {}
    for p in planned:
        if p.hazard.photos:
            out.setdefault(p.hazard.reporter_user_id, []).append((p.hazard.id, "hazard", p.hazard.id, p.hazard.photos))
    return out


def write_planned(session: Session, planned: list[PlannedHazard] | PreparedHazards) -> None:
    """Insert planned hazards with one multi-row statement per table (the sync batch's fast path)."""
    if isinstance(planned, list):
        planned = prepare_planned(session.get_bind().dialect, planned)
    insert_prepared(session, planned.hazards)
    # which photos each record uses: the blob may still be on the phone ("waiting for media")
    for reporter, refs in planned.photo_refs.items():  # one reporter per sync batch
        register_refs_bulk(session, refs, added_by=reporter)
    insert_prepared(session, planned.referrals)
    insert_prepared(session, planned.cc)
    insert_prepared(session, planned.events)


def open_duplicate(session: Session, place_id: str, category: str) -> str | None:
    return earliest_open(session, [(place_id, category)]).get((place_id, category))


_OPEN_LITERAL = sa.bindparam("open_statuses", [s.value for s in OPEN_STATUSES], expanding=True, literal_execute=True)


@functools.cache
def earliest_open_select(dialect: str) -> sa.Select:
    """(hazard id or NULL, place_id, category): the earliest open hazard of each (premises, category) pair
    of the parameter ``open_pairs`` (open_pairs_param). One statement for a whole sync batch, one index
    seek per pair on ix_hazards_open_place, however many open duplicates have piled up at a premises (the
    statuses inlined so SQLite can use the partial index). The pairs come as one JSON parameter, read as
    a table by each database's own function: the statement's text is the same for any number of pairs."""
    if dialect == "postgresql":
        pairs = sa.func.json_to_recordset(sa.cast(sa.bindparam("open_pairs", type_=sa.String), sa.JSON)).table_valued(
            sa.column("place_id", sa.Text), sa.column("category", sa.Text), name="pairs").render_derived(with_types=True)
        place_id, category = pairs.c.place_id, pairs.c.category
    else:
        pairs = sa.func.json_each(sa.bindparam("open_pairs", type_=sa.String)).table_valued("value", name="pairs")
        place_id = sa.func.json_extract(pairs.c.value, "$.place_id")
        category = sa.func.json_extract(pairs.c.value, "$.category")
    # The hazards one push wrote share a created_at, and a later report of the same names the first one
    # open when it came: among those, the first is the one that names no hazard of its own push (it names
    # none, or one from before). The ids are the phones' and tell nothing of order.
    # Only that first push's hazards are ranked so: its created_at is found first, by one index seek.
    def open_there(h) -> tuple:
        return h.place_id == place_id, h.category == category, h.status.in_(_OPEN_LITERAL)

    named, earliest = aliased(Hazard), aliased(Hazard)
    # both correlated to the pair and the ranked hazard they sit in (not to the enclosing select only)
    names_its_own_push = (sa.exists().where(named.id == Hazard.duplicate_of_id, named.created_at == Hazard.created_at)
                          .correlate_except(named))
    since = select(sa.func.min(earliest.created_at)).where(*open_there(earliest)).correlate_except(earliest) \
        .scalar_subquery()
    first = (select(Hazard.id).where(*open_there(Hazard), Hazard.created_at == since)
             .order_by(names_its_own_push, Hazard.id).limit(1).scalar_subquery())
    return select(first.label("id"), place_id.label("place_id"), category.label("category")).select_from(pairs)


def open_pairs_param(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """earliest_open_select's parameter for these (place_id, category) pairs."""
    return {"open_pairs": json.dumps([{"place_id": p, "category": c} for p, c in sorted(set(pairs))])}


def earliest_open(session: Session, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(place_id, category) -> the earliest open hazard there: what a new report of the same thing
    duplicates. Pairs with nothing open are left out; no pairs, no statement."""
    pairs = set(pairs)
    if not pairs:
        return {}
    stmt = earliest_open_select(session.get_bind().dialect.name)
    return {(place_id, category): hazard_id
            for hazard_id, place_id, category in session.execute(stmt, open_pairs_param(pairs)) if hazard_id is not None}


_LOOK_IT_UP: Any = object()


def report_hazard(session: Session, rules: Rules, report: HazardReport, place: Place, actor: Actor,
                  now: datetime, device_time: datetime | None = None, *, duplicate_of: str | None = _LOOK_IT_UP) -> Hazard:
    """A new hazard from the field: routed by the policy, its first hop and its first events recorded.
    ``duplicate_of``: the open hazard it repeats, when the caller knows better than the database (a sync
    batch: hazards it wrote share one created_at, so the earliest of them cannot be told by it)."""
    if session.get(Hazard, report.id) is not None:
        raise Conflict(f"hazard {report.id} already exists", code="hazard_exists")
    if duplicate_of is _LOOK_IT_UP:
        duplicate_of = open_duplicate(session, place.id, report.category)
    planned = plan_hazard(rules, report, place, town_facts(session, place), duplicate_of, actor, now, device_time)
    session.flush()  # pending ORM rows (the place, an inspection) go first: the hazard refers to them
    write_planned(session, [planned])
    return session.get(Hazard, report.id)


# -- actions -------------------------------------------------------------------------------


def _current_hop(session: Session, hazard_id: str) -> Referral | None:
    return session.exec(select(Referral).where(Referral.hazard_id == hazard_id).order_by(Referral.seq.desc()).limit(1)).first()


def resolve_target(session: Session, h: Hazard, action: Action, to_unit_id: str | None,
                   to_tier: str | None = None) -> str | None:
    """Which unit an escalation or transfer goes to; checked against the tiers (a transfer's: the
    hazard's own, or ``to_tier`` when a moved premises raises it)."""
    if action is Action.ESCALATE:
        tier = next_tier(h.tier)
        if tier is None:
            return None  # past the brigade: county listed supervision, the holder stays
        return tier_units(session, h.town_id, h.community_id).get(tier) or _missing_tier(tier)
    if action is Action.TRANSFER:
        if not to_unit_id:
            return None  # lifecycle names the missing parameter
        tier = to_tier or h.tier
        unit = session.get(OrgUnit, to_unit_id)
        if unit is None or unit.kind != TIER_KIND[tier]:
            raise Invalid(f"to_unit_id: a transfer goes to another {tier} unit (移送), not {unit.kind if unit else 'an unknown unit'}",
                          code="bad_transfer_target", field="to_unit_id")
        town = session.get(OrgUnit, h.town_id)
        if town is not None and unit.county_id != town.county_id:
            # another county's bodies have no say over these premises (a premises that moved there is
            # relocated: its hazards already carry the new town when they are handed over)
            raise Invalid("to_unit_id: a transfer (移送) goes to a unit of the county the premises lies in",
                          code="bad_transfer_target", field="to_unit_id")
        return unit.id
    return to_unit_id


def _missing_tier(tier: str):
    raise Invalid(f"no {tier} unit is configured for this town", code="routing_failed")


def act(session: Session, rules: Rules, h: Hazard, action: Action, params: ActionParams, actor: Actor,
        now: datetime, *, event_kind: str | None = None, extra: dict[str, Any] | None = None,
        device_time: datetime | None = None, copy_sender: bool = True) -> list[lifecycle.Effect]:
    """Apply one action to a locked hazard and record everything it changed. ``copy_sender``: a unit
    that passes the hazard on keeps a copy (False when it leaves the unit's jurisdiction altogether)."""
    if action is Action.MERGE:
        _check_merge_target(session, h, params.merge_into_id)
    if action is Action.ACCEPT and h.severity == "major":  # 集体研究 first, then the written notice
        params = replace(params, order_workdays=rules.policy.major_order_workdays)
    if action in (Action.ESCALATE, Action.TRANSFER, Action.RETURN, Action.REOPEN):
        # a new holder, or a relapse, checks a blocked escape route within 24 hours too
        params = replace(params, ack_hours=rules.policy.ack_hours.get(h.category))
    if action is Action.RECORD_REINSPECTION and h.listed_supervision and actor.unit_id != h.holder_unit_id:
        # 挂牌督办: a grid worker's photos are the evidence, the holder closes it out (整改销案)
        params = replace(params, closes_out=False)
    target = resolve_target(session, h, action, params.to_unit_id, params.to_tier)
    if target is not None:
        params = replace(params, to_unit_id=target)
    if action is Action.ORDER_RECTIFICATION and params.deadline is None:
        # 限期整改 with no date given: the policy's default period for this category of hazard, counted in
        # working days (so the deadline follows a change of the calendar, as an explicit one does not)
        days = rules.policy.rectify_days(h.category)
        params = replace(params, deadline=rules.calendar.add_workdays(now, days), deadline_workdays=days)
    before = state_of(h)
    try:
        after, effects = lifecycle.apply(before, action, params, now, rules.calendar, rules.policy)
    except lifecycle.TransitionError as exc:
        raise Conflict(str(exc), code="transition_not_allowed", status_now=exc.status.value, allowed=exc.allowed) from exc
    except lifecycle.LifecycleError as exc:
        raise Invalid(str(exc), code=exc.code, **({"field": exc.field} if hasattr(exc, "field") else {})) from exc
    put_state(h, after)
    if (before.status in OPEN_STATUSES and before.rectify_due is not None and now > before.rectify_due
            and after.rectify_due != before.rectify_due):
        h.rectify_missed = True  # replaced or cleared once passed: missed all the same (counted at the close)
    hop = _current_hop(session, h.id)
    events: list[dict] = []
    data = {"action": action.value, **_params_public(params), **(extra or {}),
            "effects": [{"kind": e.kind.value, **e.data} for e in effects]}
    events.append(event_row(h, event_kind or action.value, actor, now, data=data, device_time=device_time))
    for e in effects:
        if e.kind is EffectKind.ACCEPTED and hop is not None:
            hop.acknowledged_at = now
        elif e.kind is EffectKind.RECTIFICATION_ORDERED and hop is not None:
            hop.rectify_due, hop.reinspect_due = e.data["deadline"], e.data["reinspect_due"]
        elif e.kind is EffectKind.REFERRAL_HOP:
            if hop is not None:
                hop.ended_at, hop.outcome = now, HOP_OUTCOME[e.data["via"]]
            session.add(Referral(hazard_id=h.id, seq=(hop.seq if hop else 0) + 1, from_unit_id=e.data["from_unit_id"],
                                 to_unit_id=e.data["to_unit_id"], tier=e.data["to_tier"], via=e.data["via"],
                                 reason=e.data.get("reason") or "", sent_at=now, ack_due=after.ack_due))
            # whoever passed it on keeps seeing it (police "what is referred to it", the town its own hazards);
            # whoever takes it holds it, and is copied on it no more (a return to a unit that passed it on)
            if copy_sender:
                _add_cc(session, h, e.data["from_unit_id"], f"{e.data['via']}_from", now)
            session.execute(sa.delete(HazardCC).where(HazardCC.hazard_id == h.id,
                                                      HazardCC.unit_id == e.data["to_unit_id"]))
        elif e.kind is EffectKind.CLOSED:
            h.closed_at = now
            if (before.rectify_due is not None and now > before.rectify_due
                    and not _fixed_in_time(session, rules, h.id, before, after, action, now)):
                h.rectify_missed = True  # closed late: missed for good, should it be reopened and closed again
            h.deadline_met = not h.rectify_missed
            if hop is not None:
                hop.ended_at, hop.outcome = now, "closed"
        elif e.kind in (EffectKind.DISMISSED, EffectKind.MERGED) and hop is not None:
            hop.ended_at, hop.outcome = now, e.kind.value
        elif e.kind is EffectKind.COUNTY_LISTED_SUPERVISION and h.listed_at is None:
            h.listed_at = now
            derive_clocks(h, after)  # its six months start now
        elif e.kind is EffectKind.REOPENED:
            h.closed_at, h.deadline_met = None, None
            if hop is not None:
                hop.ended_at, hop.outcome = None, None
                hop.ack_due, hop.acknowledged_at = after.ack_due, None
    if hop is not None and after.holder_unit_id == hop.to_unit_id:
        hop.order_due = after.order_due
        if hop.ended_at is None:
            # the running hop shows the clocks running now: an owner's report of the fix restarts 复查, a
            # reopening leaves the closed order's deadlines behind
            hop.rectify_due, hop.reinspect_due = after.rectify_due, after.reinspect_due
        session.add(hop)
    if action is Action.MERGE:
        h.merged_into_id = params.merge_into_id
        _merge_into(session, h, params.merge_into_id, actor, now)
    if actor.unit_id == h.holder_unit_id or actor.unit_id == before.holder_unit_id:
        h.attention = 0  # the holder has looked at the hazard
    h.updated_at = now
    h.version += 1
    session.add(h)
    session.flush()
    sync_cc(session, h)
    insert_events(session, events)
    return effects


def _add_cc(session: Session, h: Hazard, unit_id: str | None, reason: str, now: datetime) -> None:
    if unit_id and session.get(HazardCC, (h.id, unit_id)) is None:
        session.add(HazardCC(hazard_id=h.id, unit_id=unit_id, reason=reason, added_at=now, created_at=h.created_at))


def sync_cc(session: Session, h: Hazard) -> None:
    """The copies carry the hazard's urgency and openness, so a unit's cc queue is an index range."""
    session.execute(sa.update(HazardCC).where(HazardCC.hazard_id == h.id)
                    .values(next_due=h.next_due, is_open=h.status in OPEN_STATUSES))


def _params_public(p: ActionParams) -> dict[str, Any]:
    return {k: v for k, v in p.__dict__.items() if v not in (None, False, 0, "")}


def _fixed_in_time(session: Session, rules: Rules, hazard_id: str, before: lifecycle.HazardState,
                   after: lifecycle.HazardState, action: Action, now: datetime) -> bool:
    """Closed after the deadline on evidence, but the fix was shown before it: by a re-inspection's photos
    that reached the server then, or by the owner's report then, which photos confirmed within the 复查
    period it started (DOMAIN.md: re-inspection within 3 working days after the deadline, or after the owner
    asks for it). Only since the deadline running now was set (its order, or the re-inspection that set it):
    what came before it, a round before a reopening or another holder's, proves nothing about it. Within
    that, the photos are the earliest of those the close rests on, back to a re-inspection that found it
    unfixed. An owner's report that such a visit followed shows nothing; a close on an override reason
    alone is not a fix shown. Times are the server's: a phone's clock is kept as data, not trusted."""
    if not after.has_rectified_evidence or before.rectify_due is None:
        return False
    rows = session.execute(
        sa.select(HazardEvent.kind, HazardEvent.server_time, HazardEvent.data)
        .where(HazardEvent.hazard_id == hazard_id,
               HazardEvent.kind.in_((Action.OWNER_REPORTED_FIXED.value, Action.RECORD_REINSPECTION.value,
                                     "reinspection_out_of_state", Action.ORDER_RECTIFICATION.value)))
        .order_by(HazardEvent.seq.desc())).all()
    shown = now if action is Action.RECORD_REINSPECTION else None  # this action's own photos, when it is one
    for kind, server_time, data in rows:
        data = data or {}
        if kind == Action.ORDER_RECTIFICATION.value:
            break  # where the deadline running now was set
        if kind == Action.OWNER_REPORTED_FIXED.value:
            if shown is not None and shown <= rules.calendar.add_workdays(server_time, rules.policy.reinspection_workdays):
                shown = min(shown, server_time)  # confirmed within the 复查 period the report started
            break
        if not data.get("rectified"):
            break  # found unfixed: what was shown before it does not count
        if data.get("photos"):
            shown = server_time if shown is None else min(shown, server_time)
        if data.get("deadline"):
            break  # this re-inspection set the deadline running now
    return shown is not None and shown <= before.rectify_due


def _check_merge_target(session: Session, h: Hazard, target_id: str | None) -> None:
    if not target_id:
        return  # lifecycle names the missing parameter
    target = session.get(Hazard, target_id)
    if target is None or target.id == h.id or target.place_id != h.place_id:
        raise Invalid("merge_into_id: must be another hazard on the same premises", code="bad_merge_target",
                      field="merge_into_id")
    if target.status not in OPEN_STATUSES:
        raise Invalid("merge_into_id: the original must still be open", code="bad_merge_target", field="merge_into_id")
    if h.major_or_listed and not target.major_or_listed:
        # the survivor carries on alone: a major or listed hazard merged into a general one would leave nothing
        # of the premises under 挂牌督办, though nothing was fixed
        raise Invalid("merge_into_id: a major hazard, or one under listed supervision, is not merged into a general "
                      "one; merge the general one into it", code="bad_merge_target", field="merge_into_id")


def _record(session: Session, h: Hazard, kind: str, actor: Actor, now: datetime, data: dict[str, Any]) -> None:
    """Save a change made to a locked hazard outside the lifecycle, with the event that says why."""
    h.version += 1
    h.updated_at = now
    ev = event_row(h, kind, actor, now, data=data)
    session.add(h)
    session.flush()
    insert_events(session, [ev])


def _merge_into(session: Session, dup: Hazard, target_id: str, actor: Actor, now: datetime) -> None:
    target = lock_hazard(session, target_id)
    target.photos = list(dict.fromkeys([*target.photos, *dup.photos]))  # the evidence travels with it
    _record(session, target, "merged_in", actor, now, {"from_hazard_id": dup.id, "photos": dup.photos})
    # attached by the duplicate's reporter: what they never proved they hold stays unproven on the original
    register_refs(session, target.id, "hazard", target.id, dup.photos, added_by=dup.reporter_user_id)
    claim_refs(session, "hazard", target.id, dup.photos, dup.reporter_user_id)  # one the original named unproven


def follow_merges(session: Session, hazard_id: str) -> Hazard | None:
    """Field events on a merged hazard go to the original (locked)."""
    h = lock_hazard(session, hazard_id)
    hops = 0
    while h is not None and h.merged_into_id and hops < 10:
        h, hops = lock_hazard(session, h.merged_into_id), hops + 1
    return h


# -- a premises moved to another town or community, or reclassed ----------------------------

_KIND_TIER = {kind.value: tier for tier, kind in TIER_KIND.items()}
_TOWN_KINDS = (UnitKind.town_office.value, UnitKind.police_station.value)


@dataclass(frozen=True)
class Relocation:
    """What moving or reclassing a premises does to its hazards (plan_relocation), applied by relocate()."""

    place_id: str
    from_location: tuple[str, str | None]  # (town_id, community_id)
    to_location: tuple[str, str | None]
    successor: dict[str, str | None]  # a body whose jurisdiction the premises leaves -> its counterpart there
    # hazards held by, copied to, or last passed on by such a body, or re-routed
    hazard_ids: tuple[str, ...]
    # hazard -> the policy's decision at the new location and class, where it names a higher tier than
    # the counterpart's or the hazard's own (a violation moved to a town without enforcement power goes
    # to the police; a rental made a level 1 key unit, to the brigade)
    rerouted: dict[str, Decision] = field(default_factory=dict)
    from_class: str | None = None  # the class it had and has, when the edit changes it; None: unchanged
    to_class: str | None = None

    @property
    def moved(self) -> bool:
        return self.from_location != self.to_location

    @property
    def reclassed(self) -> bool:
        return self.from_class is not None and self.from_class != self.to_class

    @property
    def event_kind(self) -> str:
        """One event per hazard, however much the edit changed: ``relocated`` for a move (a class changed
        with it is in its data), ``reclassified`` for a class change alone."""
        return "relocated" if self.moved else "reclassified"


def plan_relocation(session: Session, place_id: str, from_location: tuple[str, str | None],
                    to_location: tuple[str, str | None], *, rules: Rules | None = None,
                    place_class: str | None = None, sector_regulator_id: str | None = None,
                    now: datetime | None = None, from_class: str | None = None) -> Relocation | None:
    """Before a premises moves or its class changes: which of its hazards are held by (or copied to) a
    body whose jurisdiction it leaves, which body takes each over, and which the policy re-routes to a
    higher tier. None if none.

    The bodies it leaves: its old location's town office and police station where the new one has
    others, and, when the town changes, every town office and police station of the old town (a
    hazard transferred by hand to another station there, say). Each one's counterpart is the new
    location's unit of the same tier, unless the policy (``rules``), applied to the hazard at the
    new location (``place_class`` and ``sector_regulator_id`` as the premises will be), names a
    higher tier: then the hazard is re-routed there.

    Reclassed (``from_class``, the class it has now, is not ``place_class``), every hazard of the premises
    is held against the policy for the new class, wherever it is held: one whose tier is below the one
    the policy names is re-routed there (a rental made a level 1 key unit: the brigade), closed and
    dismissed ones too, so that a reopening reaches the body now answerable.

    Never to a lower tier: a hazard escalated or referred up stays up, and so does one whose premises is
    reclassed down (its holder may return or transfer it by hand). Raises Invalid (``routing_failed``) if
    an open hazard needs a unit the new location lacks: checked before anything is changed, so a refused
    move or reclass changes nothing."""
    reclassed = from_class is not None and place_class is not None and from_class != place_class
    moved = from_location != to_location
    if not moved and not reclassed:
        return None
    hazards = session.exec(select(Hazard.id, Hazard.status, Hazard.holder_unit_id, Hazard.previous_holder_unit_id,
                                  Hazard.tier, Hazard.severity, Hazard.violation, Hazard.category)
                           .where(Hazard.place_id == place_id, Hazard.status != Status.MERGED.value)).all()
    if not hazards:
        return None
    if reclassed and rules is None:
        raise TypeError("plan_relocation: reclassing a premises with hazards needs the rules")
    there = _town_units(session, *to_location)
    new = there.units
    successor: dict[str, str | None] = {}
    copies: list = []
    if moved:
        old = tier_units(session, *from_location)
        town_changed = from_location[0] != to_location[0]
        ids = [h[0] for h in hazards]
        copies = session.exec(select(HazardCC.hazard_id, HazardCC.unit_id).where(HazardCC.hazard_id.in_(ids))).all()
        involved = {u for h in hazards for u in h[2:4] if u} | {u for _, u in copies}
        units = {u.id: u for u in session.exec(select(OrgUnit).where(OrgUnit.id.in_(list(involved)))).all()}

        def leaving(unit_id: str | None) -> bool:
            unit = units.get(unit_id)
            if unit is None or unit.kind not in _KIND_TIER:
                return False  # a sector regulator: the premises stays in its remit
            tier = _KIND_TIER[unit.kind]
            if old.get(tier) == unit_id and new.get(tier) != unit_id:
                return True  # the brigade too, when the premises goes to another county
            return town_changed and unit.kind in _TOWN_KINDS and unit.town_id == from_location[0]

        successor = {u: new.get(_KIND_TIER[units[u].kind]) for u in involved if leaving(u)}
    if not successor and not reclassed:
        return None
    affected = []
    rerouted: dict[str, Decision] = {}
    copied = {h for h, u in copies if u in successor}
    for hazard_id, status, holder, previous, tier, severity, violation, category in hazards:
        is_open = status in OPEN_STATUSES
        leaves = holder in successor
        if (leaves or reclassed) and rules is not None and place_class is not None:
            facts = Facts(place_class=place_class, severity=severity, violation=violation, category=category,
                          town_enforcement=there.enforcement_power, units=new, now=now or utcnow(),
                          sector_regulator_unit_id=sector_regulator_id)
            try:
                decision = route(facts, rules.policy, rules.calendar)
            except RoutingError as exc:
                if is_open and leaves:
                    raise Invalid(f"grid_id: the premises' open hazard {hazard_id} cannot be routed at the new "
                                  f"location: {exc}", code="routing_failed", field="grid_id",
                                  hazard_id=hazard_id) from exc
                if is_open and reclassed:
                    _reclass_unroutable(rules, facts, hazard_id, tier, exc)
            else:
                if TIER_ORDER.index(decision.tier) > TIER_ORDER.index(tier):
                    rerouted[hazard_id] = decision
        if leaves and successor[holder] is None and is_open and hazard_id not in rerouted:
            raise Invalid(f"grid_id: the premises' open hazard {hazard_id} is held by a {tier} it leaves, and the "
                          f"new location has no {tier} unit configured to take it over", code="routing_failed",
                          field="grid_id", hazard_id=hazard_id, tier=tier)
        if leaves or previous in successor or hazard_id in copied or hazard_id in rerouted:
            affected.append(hazard_id)
    if not affected:
        return None
    return Relocation(place_id, from_location, to_location, successor, tuple(affected), rerouted,
                      from_class=str(from_class) if reclassed else None,
                      to_class=str(place_class) if reclassed else None)


def _reclass_unroutable(rules: Rules, facts: Facts, hazard_id: str, tier: str, exc: RoutingError) -> None:
    """An open hazard of a reclassed premises that the policy cannot route: refused if the rule for the
    new class wants a tier above the hazard's (which the town lacks a unit of), or if no rule can tell;
    one the rule leaves where it is (a tier at or below its own) is no business of the reclass."""
    try:
        wanted = match_rule(facts, rules.policy).tier
    except RoutingError:
        wanted = None
    if wanted is not None and TIER_ORDER.index(wanted) <= TIER_ORDER.index(tier):
        return
    raise Invalid(f"place_class: the premises' open hazard {hazard_id} would go to the {wanted or 'tier'} that "
                  f"supervises a {facts.place_class}, but it cannot be routed there: {exc}",
                  code="routing_failed", field="place_class", hazard_id=hazard_id, tier=wanted)


def relocate(session: Session, rules: Rules, moved: Relocation, actor: Actor, now: datetime) -> None:
    """After the move or reclass (the hazards already carry the new town and class): every hazard held
    by a body whose jurisdiction the premises left goes to that body's counterpart there, or, where
    plan_relocation found the policy wants a higher tier at the new location or for the new class, to
    that tier's body, with the rule, its reasons, policy version and copies on the hazard and in the
    event, as for a new report.

    An open one is transferred (移送, event ``relocated``, or ``reclassified`` for a class change alone)
    with every clock restarted for the new holder, as a transfer does; a closed or dismissed one is
    handed over as it is (event and referral hop of that kind, ended as it was), so that a reopening
    reaches the body now answerable. The old body keeps no copy (a re-route by the policy is a routing,
    not a hop of the old holder's: the rule's copies say who follows it), and copies to bodies whose
    jurisdiction the premises left pass to their counterparts. The previous holder a ``return`` goes back
    to is the counterpart of the one before the move: a move or reclass is not a hop anyone may return."""
    successor = moved.successor
    (from_town, from_community), (to_town, to_community) = moved.from_location, moved.to_location
    kind = moved.event_kind

    def name(unit_id: str | None) -> str:
        unit = session.get(OrgUnit, unit_id) if unit_id else None
        return unit.name if unit is not None else str(unit_id)

    reasons, extra = [], {"place_id": moved.place_id}
    if moved.moved:
        if from_town != to_town:
            reasons.append(f"场所迁入{name(to_town)} (premises moved from {name(from_town)} to {name(to_town)})")
        else:
            reasons.append(f"场所迁入{name(to_community)} (premises moved from {name(from_community)} to "
                           f"{name(to_community)})")
        extra.update(from_town_id=from_town, to_town_id=to_town, from_community_id=from_community,
                     to_community_id=to_community)
    if moved.reclassed:
        zh = {c.value: names[0] for c, names in PLACE_CLASS_NAMES.items()}
        reasons.append(f"场所类别由{zh.get(moved.from_class, moved.from_class)}变更为"
                       f"{zh.get(moved.to_class, moved.to_class)} (premises reclassed from {moved.from_class} "
                       f"to {moved.to_class})")
        extra.update(from_class=moved.from_class, to_class=moved.to_class)
    reason = "；".join(reasons)
    for hazard_id in moved.hazard_ids:
        h = lock_hazard(session, hazard_id)
        if h is None:  # pragma: no cover - planned in this transaction
            continue
        previous, previous_tier = h.previous_holder_unit_id, h.previous_tier
        decision = moved.rerouted.get(h.id)
        if decision and TIER_ORDER.index(decision.tier) <= TIER_ORDER.index(h.tier):
            decision = None  # it went up while the edit was planned, before its row was locked: never down
        target = decision.unit_id if decision else successor.get(h.holder_unit_id)
        why = extra
        if decision:  # as the `routed` event of a new hazard says why it went where it went
            why = {**extra, "rule": decision.rule, "reason_zh": decision.reason_zh, "reason_en": decision.reason_en,
                   "policy_version": decision.policy_version, "cc": list(decision.cc)}
        to_tier = decision.tier if decision else None  # None: the tier it has
        if target and h.status in OPEN_STATUSES:
            act(session, rules, h, Action.TRANSFER, ActionParams(to_unit_id=target, to_tier=to_tier, reason=reason),
                actor, now, event_kind=kind, copy_sender=False, extra=why)
            if decision:  # the hop, too, says by which rule it was sent
                hop = _current_hop(session, h.id)
                if hop is not None and hop.to_unit_id == target:
                    hop.rule = decision.rule
                    session.add(hop)
        elif target:
            _hand_over_closed(session, h, target, reason, actor, now, why, tier=to_tier, kind=kind,
                              rule=decision.rule if decision else None)
        if decision:  # it is where it is by the policy's rule at the new location: the record says so
            h.rule, h.reason_zh, h.reason_en = decision.rule, decision.reason_zh, decision.reason_en
            h.policy_version = decision.policy_version
            for unit_id in decision.cc:
                if unit_id != h.holder_unit_id:
                    _add_cc(session, h, unit_id, "routing", now)
        if target or previous in successor:  # a transfer made the old holder the previous one: undo that
            h.previous_holder_unit_id = successor.get(previous, previous)
            if h.previous_holder_unit_id == h.holder_unit_id:  # re-routed to the very tier it was returned from
                h.previous_holder_unit_id = None
            h.previous_tier = previous_tier if h.previous_holder_unit_id else None
        session.add(h)
        copies: dict[str, str | None] = {}
        stale = session.exec(select(HazardCC).where(HazardCC.hazard_id == h.id,
                                                    HazardCC.unit_id.in_(list(successor)))).all() if successor else []
        for cc in stale:
            to = successor[cc.unit_id]
            session.delete(cc)
            if to and to != h.holder_unit_id and session.get(HazardCC, (h.id, to)) is None:
                session.add(HazardCC(hazard_id=h.id, unit_id=to, reason=cc.reason, added_at=now,
                                     created_at=h.created_at))
            copies[cc.unit_id] = to if to != h.holder_unit_id else None
        if copies and not target:  # the holder stays (the brigade, say): the record still says why the copies moved
            _record(session, h, kind, actor, now, {"copies": copies, "reason": reason, **extra})
        session.flush()
        sync_cc(session, h)


def _hand_over_closed(session: Session, h: Hazard, target: str, reason: str, actor: Actor, now: datetime,
                      extra: dict[str, Any], tier: str | None = None, kind: str = "relocated",
                      rule: str | None = None) -> None:
    """A closed or dismissed hazard's holder passes to ``target`` (of ``tier``, if that changes): a
    hop that ends as it starts (via ``kind``, the event's kind too)."""
    hop = _current_hop(session, h.id)
    tier = tier or h.tier
    session.add(Referral(hazard_id=h.id, seq=(hop.seq if hop else 0) + 1, from_unit_id=h.holder_unit_id,
                         to_unit_id=target, tier=tier, via=kind, reason=reason, rule=rule, sent_at=now,
                         ack_due=h.ack_due, ended_at=now, outcome=hop.outcome if hop else h.status))
    data = {"from_unit_id": h.holder_unit_id, "to_unit_id": target, "status": h.status, "reason": reason, **extra}
    if tier != h.tier:
        data["from_tier"], data["to_tier"] = h.tier, tier
    h.holder_unit_id, h.tier = target, tier
    # whoever takes it holds it, and is copied on it no more (as act() hands over)
    session.execute(sa.delete(HazardCC).where(HazardCC.hazard_id == h.id, HazardCC.unit_id == target))
    _record(session, h, kind, actor, now, data)


# -- field re-inspections (复查), possibly late and out of order ----------------------------


@dataclass(frozen=True)
class ReinspectionReport:
    id: str
    hazard_id: str
    rectified: bool
    note: str
    at: datetime
    photos: tuple[str, ...] = ()


def record_field_reinspection(session: Session, rules: Rules, report: ReinspectionReport, h: Hazard, actor: Actor,
                              now: datetime) -> tuple[Hazard, str]:
    """Apply a re-inspection to ``h`` (the hazard report.hazard_id names, or the one it was merged into:
    follow_merges, which the caller checks it may act on) if the state allows it; otherwise keep it, flag it
    for the holder, and let its photo evidence count. Never dropped. Returns (hazard, outcome)."""
    row = Reinspection(id=report.id, hazard_id=h.id, reported_hazard_id=report.hazard_id, rectified=report.rectified,
                       note=report.note, at=report.at, photos=list(report.photos), user_id=actor.user_id,
                       device_id=actor.device_id, created_at=now, outcome="applied")
    extra = {"reinspection_id": report.id, "photos": list(report.photos)}
    if h.photos is not None and report.photos:
        h.photos = list(dict.fromkeys([*h.photos, *report.photos]))
    flag_reason = None
    if Action.RECORD_REINSPECTION in lifecycle.ALLOWED[Status(h.status)]:
        try:
            act(session, rules, h, Action.RECORD_REINSPECTION,
                ActionParams(rectified=report.rectified, photos=len(report.photos), note=report.note,
                             inspected_at=report.at),
                actor, now, extra=extra, device_time=report.at)
        except (Invalid, Conflict) as exc:  # raised before anything changed: keep the event, flag it
            flag_reason = exc.message
    else:
        flag_reason = f"arrived while the hazard was {h.status}"
    if flag_reason is not None:
        row.outcome = "flagged"
        row.flag_reason = flag_reason[:300]
        if report.rectified and report.photos:
            h.has_rectified_evidence = True  # the holder can close on it
        elif not report.rectified:
            h.has_rectified_evidence = False  # found unfixed since: earlier photos no longer show how it is
        h.attention += 1
        h.version += 1
        h.updated_at = now
        ev = event_row(h, "reinspection_out_of_state", actor, now, device_time=report.at, flagged=True, data={
            **extra, "rectified": report.rectified, "note": report.note, "status_at_arrival": h.status})
        session.add(h)
        session.flush()
        insert_events(session, [ev])
    session.add(row)
    register_refs(session, h.id, "reinspection", report.id, report.photos, added_by=actor.user_id)
    return h, row.outcome


# -- the sweep ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Escalation:
    hazard_id: str
    from_tier: str
    to_tier: str | None  # None: county listed supervision
    clocks: tuple[str, ...]
    listing_raised: bool = False  # not a hop: listed six months and unrectified, raised to the next level up


def sweep(session: Session, rules: Rules, now: datetime, limit: int = 1000) -> list[Escalation]:
    """Escalate every hazard whose holder let a clock run out, one tier up. Idempotent: an escalation
    restarts the clocks, so a second run (or a second worker, which skips locked rows) finds nothing."""
    return sweep_chunk(session, rules, now, limit).escalations


# A hazard the sweep could not escalate (no unit of the next tier for its town yet) is tried again this
# much later: once that unit is configured, it goes up without anyone having to act on it first.
STUCK_RETRY = timedelta(days=1)


@dataclass(frozen=True)
class SweptChunk:
    escalations: list[Escalation]
    looked_at: int  # hazards found due
    changed: int  # of those, escalated or flagged as stuck (the rest: another sweeper holds them)


def sweep_chunk(session: Session, rules: Rules, now: datetime, limit: int = 1000) -> SweptChunk:
    """The sweep of up to ``limit`` due hazards, each in a savepoint of its own: one that cannot go up (no
    unit of the next tier configured for its town) would otherwise roll back the whole chunk, on every
    run, and no hazard would escalate again. That one stays with its holder, flagged on its timeline
    once, and is tried again a day later (the queue shows it overdue meanwhile): configured, it goes up."""
    due_ids = session.exec(
        select(Hazard.id).where(Hazard.escalate_at <= now).order_by(Hazard.escalate_at).limit(limit)
    ).all()
    done: list[Escalation] = []
    failed = 0
    for hazard_id in due_ids:
        try:
            with session.begin_nested():
                escalation = _escalate_due(session, rules, hazard_id, now)
        except DomainError as exc:
            failed += _escalation_failed(session, hazard_id, exc, now)
            continue
        if escalation is not None:
            done.append(escalation)
    return SweptChunk(done, len(due_ids), len(done) + failed)


def _escalate_due(session: Session, rules: Rules, hazard_id: str, now: datetime) -> Escalation | None:
    h = lock_hazard(session, hazard_id, skip_locked=True)
    if h is None or h.escalate_at is None or h.escalate_at > now:
        return None  # another worker got there first
    if h.tier == "brigade" and h.listed_supervision:
        return _raise_listing(session, h, now)
    overdue = [c for c in lifecycle.overdue_clocks(state_of(h), now) if c in ESCALATING_CLOCKS]
    from_tier = h.tier
    reason = "超期未处理，自动升级 overdue: " + ", ".join(overdue)
    act(session, rules, h, Action.ESCALATE, ActionParams(reason=reason), Actor.system(), now,
        event_kind="escalated", extra={"overdue_clocks": overdue, "swept_at": now})
    return Escalation(h.id, from_tier, h.tier if h.tier != from_tier else None, tuple(overdue))


def _raise_listing(session: Session, h: Hazard, now: datetime) -> Escalation:
    """Six months under listed supervision and still open: the listing goes to the next level up (above the
    county: outside this system), on the record and to the holder's attention. Once."""
    h.listing_raised_at = now
    h.attention += 1
    derive_clocks(h, state_of(h))  # nothing left for the sweep
    listed_at = h.listed_at
    _record(session, h, "listing_raised", Actor.system(), now, {
        "listed_at": listed_at, "months": LISTING_RAISE_MONTHS,
        "reason": f"挂牌督办满{LISTING_RAISE_MONTHS}个月仍未整改，提请上一级挂牌督办 (listed {LISTING_RAISE_MONTHS} months "
                  "and still not rectified: listed supervision by the next level up)"})
    return Escalation(h.id, h.tier, None, (), listing_raised=True)


def _escalation_failed(session: Session, hazard_id: str, exc: DomainError, now: datetime) -> bool:
    h = lock_hazard(session, hazard_id, skip_locked=True)
    if h is None:
        return False
    log.warning("sweep could not escalate hazard %s: %s", hazard_id, exc.message)
    h.escalate_at = now + STUCK_RETRY
    last = session.execute(select(HazardEvent.kind).where(HazardEvent.hazard_id == h.id)
                           .order_by(HazardEvent.seq.desc()).limit(1)).scalar()
    if last == "escalation_failed":  # on record since the last try: a day's retry adds nothing to the timeline
        session.add(h)
        return True
    h.attention += 1
    h.version += 1
    h.updated_at = now
    ev = event_row(h, "escalation_failed", Actor.system(), now, flagged=True,
                   data={"code": exc.code, "message": exc.message, "swept_at": now})
    session.add(h)
    session.flush()
    insert_events(session, [ev])
    return True
