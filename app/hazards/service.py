"""Reading hazards: the queue, one hazard with its timeline, the supervision lists, the figures.
And who may do what to a hazard they can see."""

import base64
import json
import statistics
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session, select

from app.audit.service import timeline
from app.audit.models import HazardEvent
from app.auth.models import Role
from app.auth.scope import Scope, hazard_clause, sees_hazard
from app.errors import Forbidden, Invalid, NotFound, bindable
from app.hazards.models import NO_DEADLINE, Hazard, HazardCC, Referral, Reinspection
from app.hazards.schemas import HazardDetail, HazardItem, PlaceBrief, Routing
from app.org.models import OrgUnit, UnitKind
from app.photos.service import pending_for_hazard
from app.places.models import Place
from app.referrals import lifecycle
from app.referrals.lifecycle import Action, Status
from app.referrals.service import OPEN_STATUSES, clocks_public, lock_hazard

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
MAX_PAGE = 200


def visible_hazard(session: Session, scope: Scope, hazard_id: str) -> Hazard:
    h = session.get(Hazard, hazard_id)
    if h is None or not sees_hazard(session, scope, h):
        raise NotFound(f"hazard {hazard_id} not found")
    return h


def lock_for_action(session: Session, hazard_id: str, merge_into_id: str | None = None) -> Hazard:
    """The hazard, locked, as it is now. A merge also locks the original before it is checked open (a
    desk closing it meanwhile would otherwise get a duplicate merged into a finished hazard); the two
    in id order, so two merges of one pair, either way round, queue instead of deadlocking."""
    ids = sorted({hazard_id, merge_into_id} - {None})
    locked = {i: lock_hazard(session, i) for i in ids}
    return locked[hazard_id]


def require_visible_merge_target(session: Session, scope: Scope, merge_into_id: str | None) -> None:
    """A merge changes the original too (the duplicate's photos, a ``merged_in`` on its timeline): the caller
    must see it. One it cannot see is answered as one that is not there, naming nothing outside its scope."""
    if not merge_into_id:
        return  # the lifecycle names the missing parameter
    target = session.get(Hazard, merge_into_id)
    if target is None or not sees_hazard(session, scope, target):
        raise Invalid("merge_into_id: must be another hazard on the same premises", code="bad_merge_target",
                      field="merge_into_id")


def may_act(scope: Scope, h: Hazard, action: Action) -> bool:
    """Seen is not enough: the holder acts; the town office signs off dismissals; the grid worker re-inspects."""
    if scope.role == Role.admin:
        return True
    town_office_here = _town_office_of(scope, h)
    if action is Action.DISMISS:
        if h.major_or_listed:
            # a major hazard is judged by its holder collectively (DOMAIN.md), not dismissed by the town alone
            return scope.unit_id == h.holder_unit_id
        return town_office_here  # 销号 needs the town office's sign-off, whoever holds it
    if action is Action.REOPEN and town_office_here:
        return True
    if action is Action.RECORD_REINSPECTION and scope.grid_ids is not None:
        return h.grid_id in scope.grid_ids
    return scope.unit_id == h.holder_unit_id


def dismissal_signoff(scope: Scope, h: Hazard, action: Action) -> dict[str, bool]:
    """Who signs a dismissal off, as the record keeps it (ActionParams): the town office of its town (or the
    admin), or, for a major or listed hazard, its holder (may_act let only those through)."""
    if action is not Action.DISMISS:
        return {}
    if h.major_or_listed:
        return {"holder_signoff": scope.role == Role.admin or scope.unit_id == h.holder_unit_id}
    return {"town_office_signoff": scope.role == Role.admin or _town_office_of(scope, h)}


def _town_office_of(scope: Scope, h: Hazard) -> bool:
    return scope.role == Role.town_office and scope.town_ids == frozenset({h.town_id})


def require_may_act(scope: Scope, h: Hazard, action: Action) -> None:
    if not may_act(scope, h, action):
        if action is Action.DISMISS and h.major_or_listed:
            raise Forbidden("a major hazard, or one under listed supervision, is dismissed only by its holder",
                            code="not_holder")
        if action is Action.DISMISS:
            raise Forbidden("dismissing a hazard needs the sign-off of the town office of its town", code="signoff_required")
        raise Forbidden(f"only the holder of this hazard may {action.value} it", code="not_holder")


def require_may_set_deadline(scope: Scope, h: Hazard, action: Action, deadline: datetime | None) -> None:
    """What may_act cannot tell from the action alone: a re-inspection may carry a new deadline."""
    if (action is Action.RECORD_REINSPECTION and deadline is not None and scope.role != Role.admin
            and scope.unit_id != h.holder_unit_id):
        # a grid worker re-inspects anyone's hazard in its grid; the 限期整改 date is the holder's order
        raise Forbidden("deadline: only the holder of this hazard sets its rectification deadline; a re-inspection "
                        "without one keeps the deadline running", code="not_holder", field="deadline")


# -- queue ---------------------------------------------------------------------------------


def _encode(values: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


MAX_CURSOR = 1000


_CC = "cc"  # the fourth part of a cc queue's cursor, which pages on the copies


def _decode(cursor: str) -> tuple[datetime, datetime, str, bool]:
    """(next_due, created_at, id, cc?). A cc cursor of before the copies carried created_at (no such time)
    is one from before an upgrade."""
    try:
        if len(cursor) > MAX_CURSOR:  # one this server made is ~150 characters
            raise ValueError("too long")
        due, created, hid, *cc = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if cc not in ([], [_CC]) or not bindable(hid):  # the id is bound into the keyset query as it is
            raise ValueError("not a cursor")
        due, created = datetime.fromisoformat(due), datetime.fromisoformat(created)
        if due.tzinfo is None or created.tzinfo is None:
            raise ValueError("a cursor's times carry their offset")
        # in UTC here, as the columns hold them: a time at the calendar's edge cannot be bound
        return due.astimezone(timezone.utc), created.astimezone(timezone.utc), hid, bool(cc)
    except (ValueError, TypeError, OverflowError, RecursionError, UnicodeEncodeError):
        raise Invalid("cursor: not a cursor this server issued (or one from before an upgrade): start from the "
                      "first page", code="bad_cursor", field="cursor") from None


def queue(
    session: Session, scope: Scope, now: datetime, *, statuses: list[str] | None = None, severity: str | None = None,
    overdue: bool | None = None, place_class: str | None = None, grid_id: str | None = None,
    community_id: str | None = None, cc: bool = False, listed: bool | None = None, cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[tuple[Hazard, Place]], str | None]:
    """The caller's unit's hazards by urgency: overdue first (earliest deadline), then nearest deadline.

    Keyset-paged on (next_due, created_at, id): equal deadlines oldest report first (the cc list on the
    copies, which carry both). A unit's list is served by the index (holder_unit_id, next_due,
    created_at, id), so page 1000 costs what page 1 does; a grid worker's list is small enough to sort.
    """
    stmt = select(Hazard, Place).join(Place, Place.id == Hazard.place_id)
    keys = [Hazard.next_due, Hazard.created_at, Hazard.id]
    if cc:
        # the copies carry the hazard's next_due: page on them (ix_hazard_cc_open_queue)
        stmt = stmt.join(HazardCC, (HazardCC.hazard_id == Hazard.id) & (HazardCC.unit_id == scope.unit_id))
        keys = [HazardCC.next_due, HazardCC.created_at, HazardCC.hazard_id]
        if not statuses:
            stmt = stmt.where(HazardCC.is_open.is_(True))
    elif scope.grid_ids is not None:
        stmt = stmt.where(Hazard.grid_id.in_(scope.grid_ids))
    elif scope.role != Role.admin:
        stmt = stmt.where(Hazard.holder_unit_id == scope.unit_id)
    due_col = keys[0]
    # inlined, not bound: the planners can then use the partial indexes on open hazards
    stmt = stmt.where(Hazard.status.in_(sa.bindparam("statuses", statuses or [s.value for s in OPEN_STATUSES],
                                                     expanding=True, literal_execute=True)))
    if severity:
        stmt = stmt.where(Hazard.severity == severity)
    if overdue is True:
        stmt = stmt.where(due_col <= now)
    elif overdue is False:
        stmt = stmt.where(due_col > now)
    if place_class:
        stmt = stmt.where(Hazard.place_class == place_class)
    if grid_id:
        stmt = stmt.where(Hazard.grid_id == grid_id)
    if community_id:
        stmt = stmt.where(Hazard.community_id == community_id)
    if listed is not None:
        stmt = stmt.where(Hazard.listed_supervision.is_(listed))
    if cursor:
        due, created, hid, of_cc = _decode(cursor)
        if of_cc != cc:
            raise Invalid("cursor: from a different listing (cc or not): start from the first page",
                          code="bad_cursor", field="cursor")
        # a row value, which both planners turn into an index range (an OR of the parts is not)
        stmt = stmt.where(sa.tuple_(*keys) > (due, created, hid))
    limit = max(1, min(limit, MAX_PAGE))
    rows = session.exec(stmt.order_by(*keys).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1][0] if more and rows else None
    nxt = (_encode([last.next_due.isoformat(), last.created_at.isoformat(), last.id, *([_CC] if cc else [])])
           if last else None)
    return rows, nxt


def item(h: Hazard, place: Place, now: datetime) -> HazardItem:
    deadline = None if h.next_due == NO_DEADLINE else h.next_due
    return HazardItem(
        id=h.id, status=h.status, tier=h.tier, holder_org_unit_id=h.holder_unit_id, severity=h.severity,
        category=h.category, violation=h.violation,
        place=PlaceBrief(id=place.id, name=place.name, address=place.address, place_class=place.place_class),
        grid_id=h.grid_id, community_id=h.community_id, found_at=h.found_at, created_at=h.created_at,
        deadline=deadline, overdue=deadline is not None and deadline <= now, listed_supervision=h.listed_supervision,
        attention=h.attention, duplicate_of_id=h.duplicate_of_id,
    )


def detail(session: Session, scope: Scope, h: Hazard, now: datetime) -> HazardDetail:
    place = session.get(Place, h.place_id)
    base = item(h, place, now)
    hops = session.exec(select(Referral).where(Referral.hazard_id == h.id).order_by(Referral.seq)).all()
    reins = session.exec(select(Reinspection).where(Reinspection.hazard_id == h.id).order_by(Reinspection.created_at)).all()
    cc = session.exec(select(HazardCC.unit_id).where(HazardCC.hazard_id == h.id)).all()
    # a listed hazard closes on photo evidence only: no close to offer before there is some
    allowed = sorted(a.value for a in lifecycle.ALLOWED[Status(h.status)] if may_act(scope, h, a)
                     and not (a is Action.CLOSE and h.listed_supervision and not h.has_rectified_evidence))
    return HazardDetail(
        **base.model_dump(), description=h.description, photos=h.photos or [],
        photos_pending=pending_for_hazard(session, h.id),
        routing=Routing(rule=h.rule, reason=f"{h.reason_zh} / {h.reason_en}", reason_zh=h.reason_zh,
                        reason_en=h.reason_en, policy_version=h.policy_version),
        clocks=clocks_public(h, now), cc_org_unit_ids=sorted(cc), merged_into_id=h.merged_into_id,
        closed_at=h.closed_at, deadline_met=h.deadline_met, listed_at=h.listed_at,
        listing_raised_at=h.listing_raised_at,
        referrals=[r.model_dump(exclude={"id", "hazard_id"}) for r in hops],
        reinspections=[r.model_dump(exclude={"hazard_id"}) for r in reins],
        # the chain's hashes are shown (anyone may check them); its seals are the server's own business
        timeline=[e.model_dump(exclude={"id", "hazard_id", "mac"}) for e in timeline(session, h.id)],
        allowed_actions=allowed, version=h.version,
    )


# -- supervision lists ----------------------------------------------------------------------


def listed_supervision(session: Session, scope: Scope) -> list[tuple[Hazard, Place]]:
    """挂牌督办: open hazards under listed supervision in the caller's area, most urgent first."""
    return session.exec(
        select(Hazard, Place).join(Place, Place.id == Hazard.place_id)
        .where(hazard_clause(scope), Hazard.listed_supervision.is_(True), Hazard.status.in_(OPEN_STATUSES))
        .order_by(Hazard.next_due, Hazard.id)
    ).all()


def quarter_bounds(year: int, quarter: int) -> tuple[datetime, datetime]:
    if quarter not in (1, 2, 3, 4):
        raise Invalid("quarter: must be 1 to 4", code="validation_error", field="quarter")
    start = datetime(year, 3 * quarter - 2, 1, tzinfo=LOCAL_TZ)
    end = datetime(year + (quarter == 4), 1 if quarter == 4 else 3 * quarter + 1, 1, tzinfo=LOCAL_TZ)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def major_hazards_of_quarter(session: Session, scope: Scope, year: int, quarter: int) -> list[tuple[Hazard, Place]]:
    """Seed 004's quarterly exposure list: major hazards found before the quarter ended that were open at
    some moment of it. Duplicates merged away are not exposed. A hazard never reopened is decided by its row:
    not closed out before the quarter began, and not dismissed before it (a dismissal sets no close time).
    One reopened since is decided by its history, as its row says only how it ended last: closed all
    quarter and reopened after it, it was not open then."""
    start, end = quarter_bounds(year, quarter)
    dismissed_at = (select(sa.func.max(HazardEvent.server_time))
                    .where(HazardEvent.hazard_id == Hazard.id, HazardEvent.kind == Action.DISMISS.value)
                    .scalar_subquery())
    reopened = sa.exists().where(HazardEvent.hazard_id == Hazard.id, HazardEvent.kind == Action.REOPEN.value)
    rows = session.exec(
        select(Hazard, Place, reopened.label("reopened")).join(Place, Place.id == Hazard.place_id)
        .where(hazard_clause(scope), Hazard.severity == "major", Hazard.created_at < end,
               Hazard.status.notin_([Status.MERGED.value]),
               sa.or_(reopened, sa.and_(
                   sa.or_(Hazard.status != Status.DISMISSED.value, dismissed_at >= start),
                   sa.or_(Hazard.closed_at.is_(None), Hazard.closed_at >= start))))
        .order_by(Hazard.town_id, Hazard.created_at)
    ).all()
    history = _open_spans(session, [h.id for h, _, again in rows if again])
    return [(h, place) for h, place, again in rows
            if not again or any(a < end and (b is None or b > start) for a, b in history.get(h.id, ()))]


_ENDS = frozenset({"closed", "dismissed"})


def _open_spans(session: Session, hazard_ids: list[str]) -> dict[str, list[tuple[datetime, datetime | None]]]:
    """When each hazard was open: (from, to) spans, to None while it still is, from its events' effects
    (a close, by an action or a re-inspection, and a dismissal end a span; a reopening starts one)."""
    spans: dict[str, list[tuple[datetime, datetime | None]]] = {}
    opened: dict[str, datetime | None] = {}
    for i in range(0, len(hazard_ids), 500):
        for hazard_id, kind, at, data in session.execute(
                select(HazardEvent.hazard_id, HazardEvent.kind, HazardEvent.server_time, HazardEvent.data)
                .where(HazardEvent.hazard_id.in_(hazard_ids[i:i + 500]))
                .order_by(HazardEvent.hazard_id, HazardEvent.seq)):
            effects = {e.get("kind") for e in (data or {}).get("effects", ()) if isinstance(e, dict)}
            if kind == "reported":
                opened[hazard_id] = at
            elif effects & _ENDS and opened.get(hazard_id) is not None:
                spans.setdefault(hazard_id, []).append((opened[hazard_id], at))
                opened[hazard_id] = None
            elif "reopened" in effects and opened.get(hazard_id) is None:
                opened[hazard_id] = at
    for hazard_id, since in opened.items():
        if since is not None:
            spans.setdefault(hazard_id, []).append((since, None))
    return spans


# -- figures (考核) -------------------------------------------------------------------------

GROUPS = {"tier": Hazard.tier, "town": Hazard.town_id, "community": Hazard.community_id, "grid": Hazard.grid_id,
          "holder": Hazard.holder_unit_id}


def area_clause(session: Session, scope: Scope, unit_id: str | None) -> tuple[str, sa.ColumnElement[bool]]:
    """The area figures are about: a town, community or grid by unit id, or the caller's whole scope."""
    if unit_id is None:
        return scope.unit_id, hazard_clause(scope)
    unit = session.get(OrgUnit, unit_id)
    if unit is None or not scope.sees_unit(unit):
        raise NotFound(f"org unit {unit_id} not found")
    column = {UnitKind.town: Hazard.town_id, UnitKind.community: Hazard.community_id, UnitKind.grid: Hazard.grid_id}.get(unit.kind)
    if column is not None:
        return unit.id, sa.and_(column == unit.id, hazard_clause(scope))
    if unit.kind == UnitKind.county:
        return unit.id, hazard_clause(scope)
    return unit.id, sa.and_(Hazard.holder_unit_id == unit.id, hazard_clause(scope))  # a tier's own holdings


def figures(session: Session, scope: Scope, now: datetime, start: datetime, end: datetime, unit_id: str | None,
            group_by: str) -> tuple[str, list[tuple[str, dict]], dict]:
    """Per group: found in the period, of those closed / open / overdue now, the share closed by the
    rectification deadline (隐患清零率: closed on time ÷ found), and the median time from report to close.
    A duplicate merged into another and a report dismissed as no hazard are not hazards found: left out of
    every figure (found = closed + open)."""
    if group_by not in GROUPS:
        raise Invalid(f"group_by: one of {', '.join(GROUPS)}", code="validation_error", field="group_by")
    area_id, where = area_clause(session, scope, unit_id)
    key = GROUPS[group_by]
    rows = session.execute(
        select(key.label("key"), Hazard.status, Hazard.next_due, Hazard.deadline_met, Hazard.created_at, Hazard.closed_at)
        .where(where, Hazard.created_at >= start, Hazard.created_at < end)
    ).all()
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r.key, []).append(r)
    def summarise(rs: list) -> dict:
        counted = [r for r in rs if r.status not in (Status.DISMISSED.value, Status.MERGED.value)]
        closed = [r for r in counted if r.status == Status.CLOSED.value]
        open_ = [r for r in counted if r.status in {s.value for s in OPEN_STATUSES}]
        hours = [(r.closed_at - r.created_at).total_seconds() / 3600 for r in closed if r.closed_at]
        return {
            "found": len(counted), "closed": len(closed), "open": len(open_),
            "overdue": sum(1 for r in open_ if r.next_due <= now),
            "cleared_by_deadline_rate": round(sum(1 for r in closed if r.deadline_met) / len(counted), 4) if counted else None,
            "median_hours_to_close": round(statistics.median(hours), 2) if hours else None,
        }
    return area_id, [(k, summarise(v)) for k, v in sorted(groups.items())], summarise(rows)


PERIOD_BOUNDS = (datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2200, 1, 1, tzinfo=timezone.utc))


def parse_period(start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    # an instant, not a wall time whose zone is guessed; and one the columns (and a year back) can hold
    for name, value in (("from", start), ("to", end)):
        if value is None:
            continue
        if value.tzinfo is None or value.utcoffset() is None:
            raise Invalid(f"{name}: give the time with its offset (e.g. +08:00 or Z)", code="validation_error",
                          field=name)
        if not PERIOD_BOUNDS[0] <= value <= PERIOD_BOUNDS[1]:
            raise Invalid(f"{name}: must lie between {PERIOD_BOUNDS[0].year} and {PERIOD_BOUNDS[1].year}",
                          code="validation_error", field=name)
    end = (end or now).astimezone(timezone.utc)
    start = (start or max(end - timedelta(days=365), PERIOD_BOUNDS[0])).astimezone(timezone.utc)
    if start >= end:
        raise Invalid("from: must be before to", code="validation_error", field="from")
    return start, end
