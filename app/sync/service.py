"""Push: apply a batch of field ops, each at most once (keyed by op_id) and each all-or-nothing.

One bad op is rejected with a code and a message; the rest of the batch applies. A re-sent op gets
`duplicate` with the result it got the first time. The batch commits as one transaction before the
response leaves, so an acknowledged op is durable and an unacknowledged one is simply re-sent.
"""

import functools
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session, select

from app.audit.service import Actor, event_row, insert_events
from app.auth.models import Device, User
from app.auth.scope import Scope
from app.db import PreparedInsert, insert_prepared, prepare_insert
from app.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from app.hazards.models import Hazard, Reinspection
from app.hazards.service import may_act, visible_hazard
from app.inspections.models import Inspection
from app.places.models import Place, PlaceCreate, PlaceUpdate
from app.places import service as places
from app.photos.service import register_refs
from app.referrals.calendar import WorkCalendar
from app.referrals.lifecycle import Action
from app.referrals.service import (HazardReport, PlannedHazard, PreparedHazards, ReinspectionReport, Rules, TownFacts,
                                   calendar_for_writing, earliest_open, earliest_open_select, follow_merges, lock_hazard,
                                   open_pairs_param, plan_hazard, prepare_planned, record_field_reinspection,
                                   report_hazard, town_facts, write_planned)
from app.sync import feed
from app.sync.models import SyncOp
from app.sync.schemas import (MAX_OPS, OP_TYPES, HazardReinspectData, HazardReportData, InspectionSubmitData, Op,
                              OpError, OpResult, PlaceUpsertData)

# A phone's clock may run a little fast; a time further ahead than this is refused as impossible.
FUTURE_TOLERANCE = timedelta(hours=24)


class BatchTooLarge(DomainError):
    status = 413
    code = "batch_too_large"


@dataclass
class PushContext:
    session: Session
    rules: Rules
    scope: Scope
    user: User
    device: Device
    now: datetime
    # (place_id, category) -> the open hazard a new report there repeats, as this push has left it (None:
    # none). Every hazard a push writes has the same created_at, so the database cannot tell which of
    # them came first; op by op and in bulk, the first reported is the one the later ones repeat.
    open_by_place: dict[tuple[str, str], str | None] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.actor = Actor(self.user.id, self.user.org_unit_id, self.device.id)


# Ops that only create records: planned in Python for the whole run and written with one statement
# per table. Everything else (and any run the database refuses) takes the one-op-at-a-time path.
BULK_TYPES = frozenset({"hazard.report", "inspection.submit"})


def check_batch_size(ops: list[Op]) -> None:
    if len(ops) > MAX_OPS:
        raise BatchTooLarge(f"a batch holds at most {MAX_OPS} ops; this one has {len(ops)}: split it", max_ops=MAX_OPS)


def plan_push(ctx: PushContext, ops: list[Op]) -> "_RunPlan | None":
    """Phase 1, on ctx.session (may be a read transaction): a batch made only of creations is validated
    and routed here, so SQLite's single write lock is later held for the inserts alone. None for
    other batches: they are applied op by op in phase 2."""
    check_batch_size(ops)
    if ops and all(op.type in BULK_TYPES for op in ops):
        return _plan_run(ctx, ops, {})
    return None


# A batch of fewer ops than this is better planned on the writer, under the write lock and the push locks
# (apply_push without a plan), than ahead of it on a read transaction: for so few ops the read transaction
# and the check made again on the writer (_changed_since_planned) cost more than the planning they keep
# out of the lock: a one-op push -11 % of its instructions (docs/PERFORMANCE.md). A phone syncing each
# inspection as it is made sends such batches.
PLAN_AHEAD_MIN_OPS = 4


def plans_ahead(ops: list[Op]) -> bool:
    """Whether the endpoint plans this batch ahead of the write transaction (plan_push would plan it, and
    it is not a small one)."""
    return len(ops) >= PLAN_AHEAD_MIN_OPS and all(op.type in BULK_TYPES for op in ops)


def apply_push(ctx: PushContext, ops: list[Op], plan: "_RunPlan | None", writer: Session, *,
               calendar: WorkCalendar | None = None) -> list[OpResult]:
    """Phase 2, on the writer session: write the plan, or apply the batch in order, each op
    all-or-nothing. The caller commits. ``calendar``: the writer's, if the caller has read it already
    (calendar_for_writing)."""
    wctx = replace(ctx, session=writer)
    calendar = calendar if calendar is not None else calendar_for_writing(writer)
    if calendar.overrides != ctx.rules.calendar.overrides:
        # an admin saved working-day overrides since the push read the rules: its clocks were counted
        # without them, and the re-timing that ran with the save could not see hazards not yet written.
        # Planned again, op by op, with the calendar as it is now.
        wctx = replace(wctx, rules=replace(ctx.rules, calendar=calendar))
        plan = None
    _take_push_locks(writer, ops, plan)
    if plan is not None:
        results = _write_run(wctx, plan)
        if results is not None:
            return results
    # a run of creations finds its ops applied before as it plans (_RunState): only ops applied one by one
    # need them looked up first
    done = {} if all(op.type in BULK_TYPES for op in ops) else _done(wctx, writer, ops)
    results: list[OpResult] = []
    i = 0
    while i < len(ops):
        if ops[i].type in BULK_TYPES:
            j = i
            while j < len(ops) and ops[j].type in BULK_TYPES:
                j += 1
            run = _plan_run(wctx, ops[i:j], done)
            run.fresh = True  # planned on the writer, under its push locks: nothing to check again
            bulk = _write_run(wctx, run)
            if bulk is not None:
                wctx.open_by_place.update(run.open_by_place)
                # a later op of the batch with one of these op_ids is their duplicate, as in a later push
                done.update((row["op_id"], _Prior(row["result"], row["type"], row["record_id"]))
                            for row in run.sync_rows)
            results += bulk if bulk is not None else [_apply_one(wctx, op, done) for op in ops[i:j]]
            i = j
        else:
            results.append(_apply_one(wctx, ops[i], done))
            i += 1
    return results


def push(ctx: PushContext, ops: list[Op]) -> list[OpResult]:
    """Both phases on one session (tests, scripts)."""
    return apply_push(ctx, ops, plan_push(ctx, ops), ctx.session)


# Two things a push checks on a read must not change between the check and the commit, and on PostgreSQL
# (READ COMMITTED) a push at the same time can change them unseen, neither seeing the other's rows until
# it commits:
# * a report may name an inspection the server does not hold yet, and that inspection may arrive at another
#   premises: the inspection's "which reports of other premises name me?" finds nothing, the report's "is
#   that inspection stored, and of my premises?" finds nothing, and both commit a link across premises;
# * two reports of one category at one premises: each one's "is an open hazard of this already there?"
#   finds nothing, and neither names the other as the duplicate it is (duplicate_of_id, the office's hint).
# So a write transaction holds an advisory lock on each inspection id it inserts or names without its being
# stored, and on each premises it reports hazards at, taken before those checks are made (or made again:
# see _changed_since_planned) and held until it commits: of two such pushes the second waits, then sees
# what the first committed. One statement per batch, every key of it in key order (two batches never wait
# on each other crosswise), right after the calendar lock and before any row lock. Class "FGIN"; the
# object is the key hashed with the schema (advisory locks belong to the whole database: two
# installations sharing one never wait on each other). A hash collision only makes two unrelated pushes
# take turns. SQLite's writers already take turns. Advisory locks take room in PostgreSQL's lock table:
# at most two per op (docs/DEPLOY.md, max_locks_per_transaction).
PUSH_LOCK_CLASS = 0x4647494E
# The lock calls are evaluated after the sort (PostgreSQL evaluates volatile output expressions above it).
_PUSH_LOCKS = sa.text(
    "SELECT pg_advisory_xact_lock(:cls, k) FROM (SELECT DISTINCT hashtext(current_schema() || ':' || i) AS k "
    "FROM unnest(CAST(:keys AS text[])) AS i) AS keys ORDER BY k")


def _take_push_locks(session: Session, ops: list[Op], plan: "_RunPlan | None") -> None:
    """PostgreSQL: lock the ids of the inspections the batch submits and of those its reports name, all
    but those its plan found stored (``plan``: None, all of them), and the premises it reports hazards at.
    From the ops as sent, not as planned: whatever path the batch then takes (the plan, or op by op when
    that is refused), every such key is locked before it is checked on the writer. A key that does not
    validate is locked for nothing."""
    if session.get_bind().dialect.name != "postgresql":
        return
    stored = plan.stored_inspections if plan is not None else frozenset()
    keys: set[str] = set()
    for op in ops:
        if op.type not in BULK_TYPES or not isinstance(op.data, dict):
            continue
        inspection_id = _as_read(op.data.get("id" if op.type == "inspection.submit" else "inspection_id"))
        if inspection_id is not None and inspection_id not in stored:
            keys.add("inspection " + inspection_id)
        place_id = _as_read(op.data.get("place_id"))  # an inspection's hazards must be of its premises
        if place_id is not None:
            keys.add("place " + place_id)
    if keys:
        session.execute(_PUSH_LOCKS, {"cls": PUSH_LOCK_CLASS, "keys": sorted(keys)})
    _lock_rows_ahead(session, ops)


_MERGE_HOPS = 10  # as referrals.service.follow_merges


def _lock_rows_ahead(session: Session, ops: list[Op]) -> None:
    """PostgreSQL, a batch that re-inspects hazards or edits premises: the rows it will change, locked now,
    premises before hazards, each in id order, as every other writer takes them (a desk action: its
    hazards in id order; a move: the premises, then its hazards). Taken as the ops came up, in the
    order of the phone's outbox, a re-inspection's hazard was locked before the premises a later report
    of the batch read, and two hazards in whatever order the phone had them: a move, a merge or another
    phone's push taking them the other way round deadlocked with it, and one of the two got 503.

    The premises are locked FOR NO KEY UPDATE (an edit's lock; a hazard's foreign-key check still passes):
    those the batch edits, reports or inspects at, and those of the hazards it locks. The hazards: those
    re-inspected and the originals they were merged into; those its reports and inspections name that are
    stored already (a re-send, a hazard listed in an inspection) and those that name its inspections; and
    those at premises it moves or reclasses (that changes them all). Found by unlocked reads; a merge
    committed between such a read and the lock (the chain now reaches a hazard not locked) has the locks
    given back (a savepoint rolled back) and taken again, in order, for the larger set.

    A batch of reports and inspections alone takes none of this: its premises are locked FOR SHARE in the
    bulk run, and it locks no hazard before them."""
    reinspected: set[str] = set()
    named: set[str] = set()  # hazard ids its reports and inspections carry
    inspections: set[str] = set()
    edited: dict[str, list[tuple[object, object]]] = {}  # premises -> (grid, class) each edit sends
    places_: set[str] = set()
    for op in ops:
        if not isinstance(op.data, dict):
            continue
        if op.type == "hazard.reinspect" and (hazard_id := _as_read(op.data.get("hazard_id"))) is not None:
            reinspected.add(hazard_id)
        elif op.type == "place.upsert" and (place_id := _as_read(op.data.get("id"))) is not None:
            edited.setdefault(place_id, []).append((_as_read(op.data.get("grid_id")), _as_read(op.data.get("place_class"))))
        elif op.type in BULK_TYPES:
            if (place_id := _as_read(op.data.get("place_id"))) is not None:
                places_.add(place_id)
            if op.type == "hazard.report":
                named.add(_as_read(op.data.get("id")))
            else:
                inspections.add(_as_read(op.data.get("id")))
                listed = op.data.get("hazards")
                if isinstance(listed, list):
                    named.update(_as_read(h.get("id")) for h in listed if isinstance(h, dict))
    if not reinspected and not edited:
        return
    named.discard(None)
    inspections.discard(None)
    places_ |= set(edited)
    hazards_ = set(reinspected)
    if named or inspections:
        hazards_.update(session.execute(sa.select(Hazard.id).where(
            Hazard.id.in_(named) | Hazard.inspection_id.in_(inspections))).scalars())
    for attempt in range(3):
        _with_merge_chains(session, hazards_, places_)
        savepoint = session.begin_nested()
        moving = [p.id for p in session.execute(
            sa.select(Place.id, Place.grid_id, Place.place_class).where(Place.id.in_(places_))
            .order_by(Place.id).with_for_update(key_share=True))
            if any(sent != (p.grid_id, p.place_class) for sent in edited.get(p.id, ()))]
        if moving:  # moved or reclassed: all their hazards change
            hazards_.update(session.execute(sa.select(Hazard.id).where(Hazard.place_id.in_(moving))).scalars())
        locked = session.execute(sa.select(Hazard.id, Hazard.place_id, Hazard.merged_into_id)
                                 .where(Hazard.id.in_(hazards_)).order_by(Hazard.id).with_for_update()).all()
        beyond = ({r.merged_into_id for r in locked if r.merged_into_id} - hazards_,
                  {r.place_id for r in locked} - places_)
        if not any(beyond) or attempt == 2:
            savepoint.commit()  # the locks stay, to the push's commit
            return
        savepoint.rollback()  # merged or moved meanwhile: given back, to be taken again in order
        hazards_ |= beyond[0]
        places_ |= beyond[1]


def _with_merge_chains(session: Session, hazards_: set[str], places_: set[str]) -> None:
    """Adds to the sets the originals these hazards were merged into (and theirs), and all their premises."""
    todo, hops = set(hazards_), 0
    while todo and hops <= _MERGE_HOPS:
        rows = session.execute(sa.select(Hazard.place_id, Hazard.merged_into_id).where(Hazard.id.in_(todo))).all()
        places_.update(r.place_id for r in rows)
        todo = {r.merged_into_id for r in rows if r.merged_into_id} - hazards_
        hazards_ |= todo
        hops += 1


def _as_read(value: object) -> str | None:
    """An id as the op's model reads it (stripped), or None if it would not validate."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if 0 < len(value) <= 64 and "\x00" not in value else None


class _Prior(NamedTuple):
    """What an op_id applied before answers: the result its op got, and which record that op carried: its
    type and data.id (record None: applied before migration 0017)."""
    result: dict
    type: str
    record: str | None


# stands for an op_id another user's op was applied under, in the maps of op_id -> _Prior
_TAKEN = _Prior({}, "", None)


def record_of(op: Op) -> str | None:
    """The id of the record an op carries (``data.id``; every op type has one), as stored, or None."""
    record = op.data.get("id") if isinstance(op.data, dict) else None
    return record.strip() if isinstance(record, str) and 0 < len(record.strip()) <= 36 else None


def _prior(ctx: PushContext, user_id: str, result: dict, type_: str, record: str | None) -> _Prior:
    """What an op_id applied before answers this pusher: its result if the op was theirs. Another user's
    result is not theirs to read, and their op is not that one."""
    return _Prior(result, type_, record) if user_id == ctx.user.id else _TAKEN


def _done(ctx: PushContext, session: Session, ops: list[Op]) -> dict[str, _Prior]:
    """op_id -> what it answers, applied before (_TAKEN: applied for another user)."""
    ids = list({op.op_id for op in ops})
    return {op_id: _prior(ctx, user_id, result, type_, record)
            for op_id, result, user_id, type_, record in session.execute(_DONE, {"ids": ids})} if ids else {}


def _answer(op: Op, prior: _Prior) -> OpResult:
    """A re-sent op's answer: the result it got the first time, whatever else of its data changed (an app
    update may serialise it otherwise: the op_id decides). An op for another record under the same op_id is
    refused: answered as the first one's duplicate, the phone would drop it, and that record would be lost."""
    if prior is _TAKEN:
        return _rejected(op, "op_id_taken", f"op_id {op.op_id!r} is another user's op: give this op an id of its own",
                         "op_id")
    if prior.record is not None and (prior.type, prior.record) != (op.type, record_of(op)):
        return _rejected(op, "op_id_reused", f"op_id {op.op_id!r} was applied before to {prior.type} "
                         f"{prior.record}: give each op an id of its own (this one was not applied)", "op_id")
    return OpResult(op_id=op.op_id, status="duplicate", result=prior.result)


def _apply_one(ctx: PushContext, op: Op, done: dict[str, _Prior]) -> OpResult:
    """One op in its own savepoint: all of it or none of it."""
    session = ctx.session
    if op.op_id in done:
        return _answer(op, done[op.op_id])
    opened = dict(ctx.open_by_place)  # as it was, should the op roll back
    savepoint = session.begin_nested()
    try:
        result = apply_op(ctx, op)
        session.add(SyncOp(op_id=op.op_id, type=op.type, user_id=ctx.user.id, device_id=ctx.device.id,
                           result=result, applied_at=ctx.now, record_id=record_of(op)))
        session.flush()
        savepoint.commit()
    except DomainError as exc:
        savepoint.rollback()
        ctx.open_by_place = opened
        # the same op, re-sent by a retry while this one was held up, may have been applied meanwhile (its
        # re-inspection then "already exists"): its duplicate, not a refusal of what was applied
        prior = _applied_meanwhile(ctx, op, done)
        return _answer(op, prior) if prior is not None else _rejected(op, exc.code, exc.message,
                                                                       exc.extra.get("field"))
    except ValidationError as exc:
        savepoint.rollback()
        ctx.open_by_place = opened
        return _validation_rejected(op, exc)
    except sa.exc.DataError as exc:
        # a value the op's model let through that the column cannot hold (PostgreSQL checks widths and
        # ranges; the models are meant to refuse all such values first): this op refused, not the batch
        savepoint.rollback()
        ctx.open_by_place = opened
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        return _rejected(op, "validation_error", f"data: a value does not fit where it is stored ({reason})")
    except sa.exc.IntegrityError:
        savepoint.rollback()
        ctx.open_by_place = opened
        # another phone (or this one, retrying in parallel) applied the same op_id meanwhile
        prior = _applied_meanwhile(ctx, op, done)
        if prior is not None:
            return _answer(op, prior)
        return _rejected(op, "conflict", "a record with one of these ids already exists")
    done[op.op_id] = _Prior(result, op.type, record_of(op))
    return OpResult(op_id=op.op_id, status="applied", result=result)


def _applied_meanwhile(ctx: PushContext, op: Op, done: dict[str, _Prior]) -> _Prior | None:
    """The op_id as applied since ``done`` was read (by a push that committed meanwhile), or None."""
    prior = ctx.session.execute(select(SyncOp.result, SyncOp.user_id, SyncOp.type, SyncOp.record_id)
                                .where(SyncOp.op_id == op.op_id)).first()
    if prior is None:
        return None
    done[op.op_id] = _prior(ctx, prior.user_id, prior.result, prior.type, prior.record_id)
    return done[op.op_id]


def _validation_rejected(op: Op, exc: ValidationError) -> OpResult:
    first = exc.errors()[0]
    field = ".".join(["data", *(str(p) for p in first["loc"])])  # no loc: data is not an object
    return _rejected(op, "validation_error", f"{field}: {first['msg']}", field)


# Built once: a one-op push (a phone syncing each inspection as it is made) spent as much CPU building
# and keying its statements as running them.

_PLACES = select(Place).where(Place.id.in_(sa.bindparam("ids", expanding=True)))
_DONE = select(SyncOp.op_id, SyncOp.result, SyncOp.user_id, SyncOp.type, SyncOp.record_id).where(
    SyncOp.op_id.in_(sa.bindparam("ids", expanding=True)))
# Which of a run's op ids were applied before (with their results), which of its record ids are taken,
# and which open hazards its reports repeat: one statement, not five (each statement is ~3 % of a one-op
# push's instructions, bench/instructions.py). An empty list matches nothing.
@functools.cache
def _known(dialect: str) -> sa.CompoundSelect:
    earliest = earliest_open_select(dialect).subquery("earliest")
    return sa.union_all(
        sa.select(sa.literal_column("'op'").label("kind"), SyncOp.op_id.label("id"), SyncOp.result.label("result"),
                  SyncOp.user_id.label("user_id"), SyncOp.record_id.label("place_id"), SyncOp.type.label("reporter"))
        .where(SyncOp.op_id.in_(sa.bindparam("op_ids", expanding=True))),
        sa.select(sa.literal_column("'hazard'"), Hazard.id, sa.null(), sa.null(), sa.null(), sa.null())
        .where(Hazard.id.in_(sa.bindparam("hazard_ids", expanding=True))),
        # and where each inspection is: a report may name only an inspection of its own premises
        sa.select(sa.literal_column("'inspection'"), Inspection.id, sa.null(), Inspection.place_id, sa.null(), sa.null())
        .where(Inspection.id.in_(sa.bindparam("inspection_ids", expanding=True))),
        # the hazards that named one of the run's inspections before it arrived, of which premises and whose: those
        # of another premises lose the link when it is stored (ix_hazards_inspection_id)
        sa.select(sa.literal_column("'named'"), Hazard.id, sa.null(), Hazard.inspection_id, Hazard.place_id,
                  Hazard.reporter_user_id)
        .where(Hazard.inspection_id.in_(sa.bindparam("submitted_ids", expanding=True))),
        # the earliest open hazard of each (premises, category) the run reports (None: nothing open there;
        # the category in the last column)
        sa.select(sa.literal_column("'open'"), earliest.c.id, sa.null(), sa.null(), earliest.c.place_id,
                  earliest.c.category),
    )


class _RunState:
    """What a bulk run knows up front (one query each) and has planned so far."""

    def __init__(self, ctx: PushContext, parsed: list, op_ids: list[str]):
        session = ctx.session
        place_ids = list({d.place_id for d in parsed if d is not None})
        self.places = {p.id: p for p in session.exec(_PLACES, params={"ids": place_ids})} if place_ids else {}
        known: dict[str, dict] = {"op": {}, "hazard": {}, "inspection": {}}
        # inspection id -> the hazards on the server that name it: (hazard id, premises, reporter)
        self.naming: dict[str, list[tuple[str, str, str | None]]] = {}
        # the run's inspections (taken? named by which hazards?) and those its reports name (of which premises?)
        submitted = sorted({d.id for d in parsed if isinstance(d, InspectionSubmitData)})
        inspection_ids = set(submitted)
        inspection_ids |= {d.inspection_id for d in parsed if isinstance(d, HazardReportData) and d.inspection_id}
        # the open hazards a report repeats, as the database has them (see _changed_since_planned)
        self.open_seen: dict[tuple[str, str], str] = {}
        reported = [h for d in parsed if d is not None for h in _hazards_of(d)]
        # the fourth column: an op's user, an inspection's premises, the inspection a hazard names; the fifth and
        # sixth an op's record and type
        for kind, id_, result, owner, place_id, reporter in session.execute(_known(session.get_bind().dialect.name), {
                "op_ids": op_ids, "hazard_ids": [h.id for h in reported],
                "inspection_ids": sorted(inspection_ids), "submitted_ids": submitted,
                **open_pairs_param((h.place_id, h.category) for h in reported if h.place_id in self.places)}):
            if kind == "open":
                if id_ is not None:
                    self.open_seen[(place_id, reporter)] = id_  # the category, in the last column
            elif kind == "named":
                self.naming.setdefault(owner, []).append((id_, place_id, reporter))
            else:
                known[kind][id_] = _prior(ctx, owner, result, reporter, place_id) if kind == "op" else owner
        self.done: dict[str, _Prior] = known["op"]
        self.taken_hazards = set(known["hazard"])
        # inspection id -> its premises: those on the server and those this run has planned
        self.inspection_places: dict[str, str] = known["inspection"]
        self.taken_inspections = set(known["inspection"])
        self.stored_inspections = frozenset(known["inspection"])  # on the server as planned
        # inspection id -> the premises of the run's reports that name it while it is not on the server
        self.named_unstored: dict[str, set[str]] = {}
        self.open_by_place = dict(self.open_seen)
        for key, hazard_id in ctx.open_by_place.items():  # what this push wrote before the run
            if hazard_id is None:
                self.open_by_place.pop(key, None)
            else:
                self.open_by_place[key] = hazard_id
        self.towns: dict[tuple[str, str], TownFacts] = {}
        self.session = session
        # inspection id -> the run's own reports that name it: (hazard id, premises, reporter)
        self.planned_naming: dict[str, list[tuple[str, str, str | None]]] = {}

    def unlinked(self, inspection_id: str, place_id: str) -> list[tuple[str, str | None, bool]]:
        """(hazard id, reporter, stored before the run?) of the hazards, stored or planned before, that name
        this inspection of this premises from another premises: they lose the link when it is stored."""
        return [(hazard_id, reporter, stored)
                for stored, naming in ((True, self.naming), (False, self.planned_naming))
                for hazard_id, pid, reporter in naming.get(inspection_id, []) if pid != place_id]

    def town(self, place: Place) -> TownFacts:
        key = (place.town_id, place.community_id)
        if key not in self.towns:
            self.towns[key] = town_facts(self.session, place)
        return self.towns[key]


def _hazards_of(d) -> list[HazardReportData]:
    return d.hazards if isinstance(d, InspectionSubmitData) else [d]


@dataclass
class _RunPlan:
    ops: list[Op]
    results: list[OpResult]
    planned: list[PlannedHazard]
    inspections: list[dict]
    sync_rows: list[dict]
    prepared: tuple[PreparedInsert, PreparedHazards, PreparedInsert] | None = None  # bound rows, see _prepare
    planned_on: Session | None = None  # if not the writer's session, a premises may have moved since
    open_by_place: dict[tuple[str, str], str] = field(default_factory=dict)  # as the run leaves it
    # (hazard id, inspection id): links across premises the run's inspections undo (see _unlink_elsewhere)
    unlink: list[tuple[str, str]] = field(default_factory=list)
    # What the plan's answers rest on that a push at the same time may change (see _changed_since_planned):
    # the inspections it found stored, the hazards stored before the run among ``unlink``, the
    # inspections the run's reports name while not stored (-> the premises of those reports), and the
    # earliest open hazard of each (premises, category) it reports, as it found them stored.
    stored_inspections: frozenset[str] = frozenset()
    unlink_stored: set[tuple[str, str]] = field(default_factory=set)
    named_unstored: dict[str, set[str]] = field(default_factory=dict)
    open_seen: dict[tuple[str, str], str] = field(default_factory=dict)
    place_versions: dict[str, int] = field(default_factory=dict)  # premises id -> the version routed by
    fresh: bool = False  # planned on the writer after _take_push_locks: all of it read under the locks
    # an inspection lists a hazard already recorded: the run is applied op by op (see _OneByOne)
    one_by_one: bool = False


class _OneByOne(Exception):
    """An inspection lists a hazard already recorded (on the server, or by an earlier op of the run).
    Whether it is the reporter's own, and what to link, is _recorded_already's to say: the run is
    applied op by op, so both paths give one answer. Rare: a phone sends a hazard at once and lists it
    again in the inspection it was found in."""


def _plan_run(ctx: PushContext, run: list[Op], done: dict[str, _Prior]) -> _RunPlan:
    """Validate and route every op of the run in Python; nothing is written yet. ``done`` (op_id ->
    first result) gains the run's ops found applied before."""
    parsed: list = []
    early: dict[int, OpResult] = {}
    for k, op in enumerate(run):
        if op.op_id in done:
            parsed.append(None)
            continue
        try:
            parsed.append(OP_TYPES[op.type].model_validate(op.data))
        except ValidationError as exc:
            parsed.append(None)
            early[k] = _validation_rejected(op, exc)
    state = _RunState(ctx, parsed, list({op.op_id for op in run if op.op_id not in done}))
    done.update(state.done)
    plan = _RunPlan(run, [], [], [], [], planned_on=ctx.session, open_by_place=state.open_by_place)
    results: list[OpResult | None] = []
    applied: dict[str, _Prior] = {}
    for k, (op, data) in enumerate(zip(run, parsed)):
        if op.op_id in done:  # before any check of its data: a re-sent op gets its first answer
            results.append(None)  # filled in below
            continue
        if op.op_id in applied:  # before its data is checked, as op by op: the op_id decides
            results.append(None)  # a duplicate within the batch: filled in below
            continue
        if k in early:
            results.append(early[k])
            continue
        try:
            result, planned, insp = _plan_op(ctx, state, data)
        except DomainError as exc:
            results.append(_rejected(op, exc.code, exc.message, exc.extra.get("field")))
            continue
        except _OneByOne:
            plan.one_by_one = True  # nothing of this plan is written
            results.append(_rejected(op, "one_by_one", "applied op by op"))
            continue
        plan.planned += planned
        if insp:
            plan.inspections.append(insp)
            links = state.unlinked(insp["id"], insp["place_id"])
            plan.unlink += [(hazard_id, insp["id"]) for hazard_id, _, _ in links]
            plan.unlink_stored |= {(hazard_id, insp["id"]) for hazard_id, _, stored in links if stored}
            _say_unlinked(result, [hazard_id for hazard_id, reporter, _ in links if reporter == ctx.user.id])
        record = record_of(op)
        plan.sync_rows.append(dict(op_id=op.op_id, type=op.type, user_id=ctx.user.id, device_id=ctx.device.id,
                                   result=result, applied_at=ctx.now, record_id=record))
        applied[op.op_id] = _Prior(result, op.type, record)
        results.append(OpResult(op_id=op.op_id, status="applied", result=result))
    known = {**done, **applied}
    plan.results = [r if r is not None else _answer(op, known[op.op_id]) for r, op in zip(results, run)]
    plan.stored_inspections, plan.named_unstored, plan.open_seen = (state.stored_inspections, state.named_unstored,
                                                                    state.open_seen)
    plan.place_versions = {pid: place.version for pid, place in state.places.items()}
    # bound now, while planning: on SQLite the write transaction that follows holds the only write lock
    dialect = ctx.session.get_bind().dialect
    plan.prepared = (prepare_insert(dialect, Inspection.__table__, plan.inspections),
                     prepare_planned(dialect, plan.planned), prepare_insert(dialect, SyncOp.__table__, plan.sync_rows))
    return plan


def _write_run(ctx: PushContext, plan: _RunPlan) -> list[OpResult] | None:
    """Write a planned run with one statement per table. None (nothing written) if the database refuses
    it — an op_id or record id taken meanwhile — so the caller re-applies the run op by op."""
    if plan.one_by_one:
        return None
    inspections, hazards, sync_rows = plan.prepared
    # SQLite: a run planned on the writer's own session was planned under the write lock. PostgreSQL
    # has no such lock: a move may be under way whatever session planned the run (see _WHERE_PLACES_LOCKED),
    # and a push at the same time may have stored an inspection or report the plan did not see unless it
    # was made under the push locks (see _take_push_locks)
    postgres = ctx.session.get_bind().dialect.name == "postgresql"
    stale = plan.planned_on is not ctx.session
    if (postgres or stale) and _changed_since_planned(ctx.session, plan, lock=postgres,
                                                      links=stale or (postgres and not plan.fresh)):
        return None  # re-planned op by op, under the write lock (and the push locks)
    savepoint = ctx.session.begin_nested()
    try:
        insert_prepared(ctx.session, inspections)
        write_planned(ctx.session, hazards)
        insert_prepared(ctx.session, sync_rows)
        _unlink_elsewhere(ctx, plan.unlink)
        savepoint.commit()
    except (sa.exc.IntegrityError, sa.exc.DataError):  # op by op, each refused or written on its own
        savepoint.rollback()
        return None
    return plan.results


_WHERE_PLACES = sa.select(Place.id, Place.grid_id, Place.town_id, Place.community_id, Place.version).where(
    Place.id.in_(sa.bindparam("ids", expanding=True))).order_by(Place.id)
# PostgreSQL: FOR SHARE waits for a move that has locked the premises (places.service.update_place) and
# then reads it as that move committed it; and, held until this push commits, it keeps a later move
# waiting until then, so that the move's relocation finds these hazards. A plain read would see neither:
# the hazards would be written for the old location behind the move's back. In id order, so that two
# writers locking the same premises take them in the same order.
_WHERE_PLACES_LOCKED = _WHERE_PLACES.with_for_update(read=True)


@functools.cache
def _where_now(lock: bool, dialect: str) -> sa.CompoundSelect:
    """Where the planned premises are (locked FOR SHARE, see _WHERE_PLACES_LOCKED), and what the plan's
    inspection links and duplicates rest on, in one statement: the inspections its reports named while not
    stored (are they now, and of which premises?), the stored hazards that name the run's inspections (from
    which premises?), and the earliest open hazard of each premises and category the run reports (which is
    it now?). An empty list matches nothing."""
    places = (_WHERE_PLACES_LOCKED if lock else _WHERE_PLACES).cte("planned_places")
    earliest = earliest_open_select(dialect).subquery("earliest")
    return sa.union_all(
        sa.select(sa.literal_column("'place'").label("kind"), places.c.id, places.c.grid_id.label("a"),
                  places.c.town_id.label("b"), places.c.community_id.label("c"), places.c.version.label("d")),
        sa.select(sa.literal_column("'inspection'"), Inspection.id, Inspection.place_id, sa.null(), sa.null(),
                  sa.null())
        .where(Inspection.id.in_(sa.bindparam("named_ids", expanding=True))),
        sa.select(sa.literal_column("'named'"), Hazard.id, Hazard.inspection_id, Hazard.place_id, sa.null(), sa.null())
        .where(Hazard.inspection_id.in_(sa.bindparam("submitted_ids", expanding=True))),
        sa.select(sa.literal_column("'open'"), earliest.c.id, earliest.c.place_id, earliest.c.category, sa.null(),
                  sa.null()),
    )


def _changed_since_planned(session: Session, plan: _RunPlan, *, lock: bool, links: bool) -> bool:
    """Whether what the run was planned on (on a read transaction, before the write lock) has changed
    since: a premises it routed hazards for has moved or changed otherwise, its class above all (a hazard
    must be held by the bodies of where its premises is, and of the tier its class calls for); or, with ``links`` (a plan not made under the push locks), a push that committed
    meanwhile stored an inspection the run's reports name, of another premises than theirs (they would be
    refused), or a report of another premises naming one of the run's inspections (it would lose the
    link, and the answer say so), or changed which open hazard a report of the run repeats (it would
    name another as its duplicate_of_id). ``lock`` (PostgreSQL): keep the premises from moving until the
    transaction ends. One statement, as for the premises alone; none when there is nothing to check."""
    # where each premises was, and which version of it the run was routed by (a reclass, or any other change
    # of what routing reads, makes a new version)
    planned = {p.hazard.place_id: (p.hazard.grid_id, p.hazard.town_id, p.hazard.community_id,
                                   plan.place_versions.get(p.hazard.place_id)) for p in plan.planned}
    inserted = {i["id"]: i["place_id"] for i in plan.inspections} if links else {}
    named = {i: pids for i, pids in plan.named_unstored.items() if i not in inserted} if links else {}
    pairs = {(p.hazard.place_id, p.hazard.category) for p in plan.planned} if links else set()
    if not (planned or inserted or named):
        return False
    rows = session.execute(_where_now(lock, session.get_bind().dialect.name), {
        "ids": sorted(planned), "named_ids": sorted(named), "submitted_ids": sorted(inserted),
        **open_pairs_param(pairs)}).all()
    where: dict[str, tuple] = {}
    naming: set[tuple[str, str]] = set()
    open_now: dict[tuple[str, str], str] = {}
    for kind, id_, a, b, c, d in rows:
        if kind == "place":
            where[id_] = (a, b, c, d)
        elif kind == "inspection":
            if named[id_] - {a}:
                return True
        elif kind == "open":
            if id_ is not None:
                open_now[(a, b)] = id_
        elif b != inserted[a]:
            naming.add((id_, a))
    return (any(where.get(pid) != loc for pid, loc in planned.items()) or naming != plan.unlink_stored
            or open_now != {pair: id_ for pair, id_ in plan.open_seen.items() if pair in pairs})


def _plan_op(ctx: PushContext, state: _RunState, data) -> tuple[dict, list[PlannedHazard], dict | None]:
    place = state.places.get(data.place_id)
    if place is None or not ctx.scope.sees_place(place):
        raise NotFound(f"data.place_id: no premises {data.place_id} in your grids", code="unknown_place",
                       field="data.place_id")
    if isinstance(data, HazardReportData):
        planned = _plan_hazard(ctx, state, data, place, None, "data.")
        return _hazard_result(planned.hazard), [planned], None
    _not_future(ctx, data.started_at, "started_at")
    _not_future(ctx, data.finished_at, "finished_at")
    if data.id in state.taken_inspections:
        raise Conflict(f"data.id: inspection {data.id} already exists", code="inspection_exists", field="data.id")
    planned = []
    opened: dict[tuple[str, str], str] = {}  # the inspection's own, kept from the run until it is accepted
    for i, hz in enumerate(data.hazards):
        if hz.place_id != place.id:
            raise Invalid(f"data.hazards.{i}.place_id: a hazard of this inspection must be on its premises",
                          code="place_mismatch", field=f"data.hazards.{i}.place_id")
        if any(p.hazard.id == hz.id for p in planned):
            raise Conflict(f"data.hazards.{i}.id: hazard {hz.id} already exists", code="hazard_exists",
                           field=f"data.hazards.{i}.id")
        planned.append(_plan_hazard(ctx, state, hz, place, data.id, f"data.hazards.{i}.", opened))
    state.taken_inspections.add(data.id)
    state.inspection_places[data.id] = place.id
    for p in planned:  # only now: a rejected op must not leave its ids or duplicates behind
        state.taken_hazards.add(p.hazard.id)
        state.open_by_place.setdefault((place.id, p.hazard.category), p.hazard.id)
    insp = dict(id=data.id, place_id=place.id, grid_id=place.grid_id, town_id=place.town_id, user_id=ctx.user.id,
                device_id=ctx.device.id, started_at=data.started_at, finished_at=data.finished_at, lat=data.lat,
                lon=data.lon, checklist=[c.model_dump() for c in data.checklist], created_at=ctx.now)
    return {"inspection_id": data.id, "hazards": [_hazard_result(p.hazard) for p in planned]}, planned, insp


def _plan_hazard(ctx: PushContext, state: _RunState, data: HazardReportData, place: Place,
                 inspection_id: str | None, prefix: str, opened: dict | None = None) -> PlannedHazard:
    _known_category(ctx, data, prefix)
    _not_future(ctx, data.found_at, prefix.removeprefix("data.") + "found_at")
    if inspection_id is None and data.inspection_id is not None:
        _same_premises(data, place, state.inspection_places.get(data.inspection_id))
    if data.id in state.taken_hazards:
        if inspection_id is not None:
            raise _OneByOne()  # listed again in its inspection: _recorded_already says, op by op
        raise Conflict(f"{prefix}id: hazard {data.id} already exists", code="hazard_exists", field=f"{prefix}id")
    report = HazardReport(id=data.id, place_id=place.id, category=data.category, severity=data.severity,
                          violation=data.violation, description=data.description, found_at=data.found_at,
                          photos=tuple(data.photos), inspection_id=inspection_id or data.inspection_id)
    key = (place.id, data.category)
    planned = plan_hazard(ctx.rules, report, place, state.town(place),
                          state.open_by_place.get(key) or (opened or {}).get(key), ctx.actor, ctx.now)
    if inspection_id is None:
        state.taken_hazards.add(data.id)
        state.open_by_place.setdefault(key, data.id)
        if data.inspection_id is not None:
            state.planned_naming.setdefault(data.inspection_id, []).append((data.id, place.id, ctx.user.id))
            if data.inspection_id not in state.inspection_places:
                state.named_unstored.setdefault(data.inspection_id, set()).add(place.id)
    elif opened is not None:
        opened.setdefault(key, data.id)
    return planned


def _known_category(ctx: PushContext, data: HazardReportData, prefix: str) -> None:
    """A current category, or one the policy retired since the phone captured the report: what the worker
    found is kept under the category it was found under (see app.referrals.policy)."""
    policy = ctx.rules.policy
    if not policy.accepts_category(data.category):
        raise Invalid(f"{prefix}category: unknown category {data.category!r}: not a category of the routing policy "
                      f"in force ({policy.version}); report it under one of the current categories (the phone's "
                      "list is brought up to date by its next pull)", code="unknown_category",
                      field=f"{prefix}category")


def _same_premises(data: HazardReportData, place: Place, inspection_place_id: str | None) -> None:
    """A standalone report's inspection_id names the inspection it was found in: one of its own premises.

    The link goes with the hazard to every phone that sees it and into its audit trail. An inspection
    the server does not hold yet (``None``) is accepted: phones send in any order, and a hazard found
    during an inspection still under way comes first. Which premises another inspection is of is not
    said: the reporter may not be allowed to see it.

    An inspection that arrives after reports of another premises named it is accepted, and those
    reports lose the link (_unlink_elsewhere): the inspection is the record of a visit to its premises."""
    if inspection_place_id is not None and inspection_place_id != place.id:
        raise Invalid(f"data.inspection_id: inspection {data.inspection_id} is not an inspection of premises "
                      f"{place.id}: a hazard may name only an inspection of its own premises (send it without "
                      "inspection_id, or with the id of the inspection it was found in)",
                      code="inspection_mismatch", field="data.inspection_id")


def _say_unlinked(result: dict, hazard_ids: list[str]) -> None:
    """An inspection's answer names the pusher's own hazards that lost the link to it (_unlink_elsewhere):
    the phone holds them as it sent them, and one sent in the same push is not echoed back by pull unless
    the feed marks the change as news (it does, feed.mark_news). Others' hazards are not named: their
    premises may be outside the pusher's grids; their phones hear of it by pull."""
    if hazard_ids:
        result["unlinked"] = sorted(hazard_ids)


def _hazard_result(h: Hazard) -> dict:
    return {"hazard_id": h.id, "status": h.status, "tier": h.tier, "holder_org_unit_id": h.holder_unit_id,
            "rule": h.rule, "ack_due": h.ack_due.isoformat(), "duplicate_of_id": h.duplicate_of_id}


def _rejected(op: Op, code: str, message: str, field: str | None = None) -> OpResult:
    return OpResult(op_id=op.op_id, status="rejected", error=OpError(code=code, message=message, field=field))


def apply_op(ctx: PushContext, op: Op) -> dict[str, Any]:
    if op.type is None:  # missing, or not text: this op's rejection, not the batch's 422 (Op.type)
        raise Invalid(f"type: must name the op type, one of {', '.join(OP_TYPES)}", code="validation_error",
                      field="type")
    model = OP_TYPES.get(op.type)
    if model is None:
        raise Invalid(f"unknown op type {op.type[:40]!r}; known: {', '.join(OP_TYPES)}", code="unknown_op_type",
                      field="type")
    data = model.model_validate(op.data)
    if isinstance(data, HazardReportData):
        return _hazard_report(ctx, data)
    if isinstance(data, InspectionSubmitData):
        return _inspection_submit(ctx, data)
    if isinstance(data, HazardReinspectData):
        return _hazard_reinspect(ctx, data)
    return _place_upsert(ctx, data)


def _not_future(ctx: PushContext, value: datetime | None, field: str) -> None:
    if value is not None and value > ctx.now + FUTURE_TOLERANCE:
        raise Invalid(f"data.{field}: {value.isoformat()} is in the future (server time {ctx.now.isoformat()})",
                      code="time_in_future", field=f"data.{field}")


def _place(ctx: PushContext, place_id: str, field: str = "place_id") -> Place:
    """The premises a new record is routed by. On PostgreSQL read as it is, FOR SHARE, and kept from
    moving until the push commits: see _WHERE_PLACES_LOCKED."""
    if ctx.session.get_bind().dialect.name == "postgresql":
        place = ctx.session.get(Place, place_id, with_for_update={"read": True}, populate_existing=True)
    else:
        place = ctx.session.get(Place, place_id)
    if place is None or not ctx.scope.sees_place(place):
        raise NotFound(f"data.{field}: no premises {place_id} in your grids", code="unknown_place", field=f"data.{field}")
    return place


def _new_hazard(ctx: PushContext, data: HazardReportData, place: Place, inspection_id: str | None, prefix: str) -> dict:
    _known_category(ctx, data, prefix)
    _not_future(ctx, data.found_at, prefix.removeprefix("data.") + "found_at")
    if inspection_id is None and data.inspection_id is not None:
        named = ctx.session.get(Inspection, data.inspection_id)
        _same_premises(data, place, named.place_id if named is not None else None)
    key = (place.id, data.category)
    if key not in ctx.open_by_place:
        ctx.open_by_place[key] = earliest_open(ctx.session, [key]).get(key)
    try:
        h = report_hazard(
            ctx.session, ctx.rules,
            HazardReport(id=data.id, place_id=place.id, category=data.category, severity=data.severity,
                         violation=data.violation, description=data.description, found_at=data.found_at,
                         photos=tuple(data.photos), inspection_id=inspection_id or data.inspection_id),
            place, ctx.actor, ctx.now, duplicate_of=ctx.open_by_place[key],
        )
    except Conflict as exc:  # report_hazard's own check, before it writes: named here as the op's field
        if exc.code != "hazard_exists":
            raise
        if inspection_id is not None:  # listed in its inspection after it was sent on its own
            return _recorded_already(ctx, data, place, inspection_id, prefix)
        raise Conflict(f"{prefix}id: hazard {data.id} already exists", code="hazard_exists", field=f"{prefix}id") \
            from None
    if ctx.open_by_place[key] is None:
        ctx.open_by_place[key] = h.id
    return _hazard_result(h)


def _hazard_report(ctx: PushContext, data: HazardReportData) -> dict:
    place = _place(ctx, data.place_id)
    return _new_hazard(ctx, data, place, None, "data.")


def _inspection_submit(ctx: PushContext, data: InspectionSubmitData) -> dict:
    place = _place(ctx, data.place_id)
    _not_future(ctx, data.started_at, "started_at")
    _not_future(ctx, data.finished_at, "finished_at")
    if ctx.session.get(Inspection, data.id) is not None:
        raise Conflict(f"data.id: inspection {data.id} already exists", code="inspection_exists", field="data.id")
    ctx.session.add(Inspection(
        id=data.id, place_id=place.id, grid_id=place.grid_id, town_id=place.town_id, user_id=ctx.user.id,
        device_id=ctx.device.id, started_at=data.started_at, finished_at=data.finished_at, lat=data.lat, lon=data.lon,
        checklist=[c.model_dump() for c in data.checklist], created_at=ctx.now,
    ))
    hazards = []
    listed: set[str] = set()
    for i, hz in enumerate(data.hazards):
        if hz.place_id != place.id:
            raise Invalid(f"data.hazards.{i}.place_id: a hazard of this inspection must be on its premises",
                          code="place_mismatch", field=f"data.hazards.{i}.place_id")
        if hz.id in listed:  # the same hazard twice in one inspection: not the one recorded before
            raise Conflict(f"data.hazards.{i}.id: hazard {hz.id} already exists", code="hazard_exists",
                           field=f"data.hazards.{i}.id")
        listed.add(hz.id)
        hazards.append(_new_hazard(ctx, hz, place, data.id, f"data.hazards.{i}."))
    unlinked = _unlink_elsewhere(ctx, [(hazard_id, data.id) for hazard_id in ctx.session.execute(
        _NAMING_ELSEWHERE, {"inspection_id": data.id, "place_id": place.id}).scalars()])
    result = {"inspection_id": data.id, "hazards": hazards}
    _say_unlinked(result, unlinked)
    return result


# the hazards of other premises that named an inspection before it arrived (ix_hazards_inspection_id)
_NAMING_ELSEWHERE = select(Hazard.id).where(Hazard.inspection_id == sa.bindparam("inspection_id"),
                                            Hazard.place_id != sa.bindparam("place_id")).order_by(Hazard.id)
_LOCK_HAZARDS = (select(Hazard).where(Hazard.id.in_(sa.bindparam("ids", expanding=True))).order_by(Hazard.id)
                 .execution_options(populate_existing=True))


def _unlink_elsewhere(ctx: PushContext, links: list[tuple[str, str]]) -> list[str]:
    """An inspection was stored: the hazards of other premises that named it before it arrived lose the
    link (the inspection is the record of a visit to its own premises; the hazard stays as reported).
    Each such change is a change of the hazard (version, updated_at; phones hear of it by the feed, as
    of any change the server made to a record that existed before) with an event in its audit trail,
    which said in its ``reported`` event that it named the inspection. ``links``: (hazard id, inspection
    id) pairs; a hazard that no longer names that inspection is left as it is. Nothing to do: no
    statement. Returns the ids of the pusher's own hazards among those unlinked (see _say_unlinked).

    The change is news to every phone, the pushing one too when the hazard came in the same push: what it
    holds is what it sent (feed.mark_news)."""
    if not links:
        return []
    session = ctx.session
    named = dict(links)
    stmt = _LOCK_HAZARDS.with_for_update() if session.get_bind().dialect.name == "postgresql" else _LOCK_HAZARDS
    events = []
    mine: list[str] = []
    for h in session.exec(stmt, params={"ids": sorted(named)}).all():
        inspection_id = named[h.id]
        if h.inspection_id != inspection_id:
            continue
        h.inspection_id = None
        h.version += 1
        h.updated_at = ctx.now
        events.append(event_row(h, "inspection_unlinked", ctx.actor, ctx.now, data={
            "inspection_id": inspection_id, "reason": "the inspection named is of another premises"}))
        session.add(h)
        if h.reporter_user_id == ctx.user.id:
            mine.append(h.id)
    if events:
        session.flush()
        insert_events(session, events)
        feed.mark_news(session, "hazard", [e["hazard_id"] for e in events])
    return mine


# what the same hazard listed again may bring that the stored one lacks, besides photos: kept in the event
_LISTED_FIELDS = ("category", "severity", "violation", "description")


def _recorded_already(ctx: PushContext, data: HazardReportData, place: Place, inspection_id: str,
                      prefix: str) -> dict:
    """An inspection lists a hazard already stored: the phone sent it at once, as found, and lists it
    again in the inspection it was found in. If it is the pusher's own report of this premises it is that
    hazard (its result is the stored hazard's); it is linked to the inspection if it named none (or this
    one), and photos taken since are added. What else the listed copy says differently is kept in the
    hazard's audit trail, not applied: the stored report is what was routed, and desks may have acted on
    it. Another user's hazard, or one of another premises, is not this phone's: the id collides."""
    h = lock_hazard(ctx.session, data.id)
    if h is None or h.place_id != place.id or h.reporter_user_id != ctx.user.id:
        raise Conflict(f"{prefix}id: hazard {data.id} already exists and is not one you reported at premises "
                       f"{place.id}: another user's hazard, or one of another premises, has this id; give this "
                       "hazard an id of its own", code="hazard_exists", field=f"{prefix}id")
    change: dict[str, Any] = {}
    if h.inspection_id in (None, inspection_id):
        if h.inspection_id is None:
            change["inspection_id"] = h.inspection_id = inspection_id
    else:
        change["listed_in_inspection_id"] = inspection_id  # it keeps the inspection it named
    photos = [sha for sha in data.photos if sha not in (h.photos or [])]
    if photos:
        h.photos = [*(h.photos or []), *photos]
        change["photos"] = photos
        register_refs(ctx.session, h.id, "hazard", h.id, photos, added_by=ctx.user.id, scope=ctx.scope)
    listed = {f: getattr(data, f) for f in _LISTED_FIELDS if getattr(data, f) != getattr(h, f)}
    if listed:
        change["as_listed"] = listed
    if set(change) - {"listed_in_inspection_id"}:
        h.version += 1
        h.updated_at = ctx.now
        ev = event_row(h, "listed_in_inspection", ctx.actor, ctx.now, device_time=data.found_at,
                       data={"inspection_id": inspection_id, **change})
        ctx.session.add(h)
        ctx.session.flush()
        insert_events(ctx.session, [ev])
        # the phone holds the hazard as it sent it, in this push or an earlier one: the link and photos the
        # server gave it are news to it (its own writes are not echoed)
        feed.mark_news(ctx.session, "hazard", [h.id])
    return _hazard_result(h)


def _hazard_reinspect(ctx: PushContext, data: HazardReinspectData) -> dict:
    try:
        visible_hazard(ctx.session, ctx.scope, data.hazard_id)
    except NotFound:
        raise NotFound(f"data.hazard_id: no hazard {data.hazard_id} in your grids", code="unknown_hazard",
                       field="data.hazard_id") from None
    # A re-inspection of a merged duplicate is recorded on the hazard it was merged into, which may have
    # another holder: that is the one the pusher must be allowed to re-inspect.
    h = follow_merges(ctx.session, data.hazard_id)
    if h is None or not may_act(ctx.scope, h, Action.RECORD_REINSPECTION):
        raise Forbidden("only the grid worker of the premises or the holder re-inspects"
                        + (f" (this hazard was merged into {h.id})" if h is not None and h.id != data.hazard_id else ""),
                        code="not_allowed")
    _not_future(ctx, data.at, "at")
    if ctx.session.get(Reinspection, data.id) is not None:
        raise Conflict(f"data.id: re-inspection {data.id} already exists", code="reinspection_exists", field="data.id")
    ctx.open_by_place.pop((h.place_id, h.category), None)  # it may close: the database says again
    h, outcome = record_field_reinspection(
        ctx.session, ctx.rules,
        ReinspectionReport(id=data.id, hazard_id=data.hazard_id, rectified=data.rectified, note=data.note,
                           at=data.at, photos=tuple(data.photos)),
        h, ctx.actor, ctx.now,
    )
    # what the re-inspection did to the hazard (status, clocks, evidence) is news to the phone even if it
    # reported that hazard in this same push (its own writes are not echoed)
    feed.mark_news(ctx.session, "hazard", [h.id])
    return {"reinspection_id": data.id, "hazard_id": h.id, "outcome": outcome, "status": h.status}


def _place_upsert(ctx: PushContext, data: PlaceUpsertData) -> dict:
    """A premises made or edited on a phone. ``kept`` in the answer: what the server kept as it is instead
    of what the phone sent, and ``kept_why`` why: ``stale_copy`` (the field changed after the copy the
    edit was made on) or ``not_allowed`` (a class only the body supervising the premises may lower)."""
    ctx.scope.require_place_editor()
    kept: dict[str, Any] = {}
    why: dict[str, str] = {}
    stale = False  # the copy the edit was made on is older than the premises as stored
    # PostgreSQL: the row as it is now, locked, before its fields and versions are compared with the phone's
    # copy: a change committing between this read and update_place's lock would be undone, or refuse the op
    # (FOR NO KEY UPDATE, as update_place: a full FOR UPDATE blocked every hazard's foreign-key check on it)
    existing = ctx.session.get(Place, data.id, populate_existing=True,
                               with_for_update={"key_share": True} if ctx.session.get_bind().dialect.name == "postgresql"
                               else None)
    if existing is None:
        place = places.create_place(ctx.session, ctx.scope,
                                    PlaceCreate(id=data.id, **data.model_dump(exclude={"id", "base_version"})),
                                    now=ctx.now)
    else:
        if not ctx.scope.sees_place(existing):
            raise NotFound(f"data.id: no premises {data.id} in your grids", code="unknown_place", field="data.id")
        # only what the op names: a field the phone does not send (an old app that knows no owner_phone)
        # keeps what the office entered rather than being blanked by the default
        changes = data.model_dump(exclude={"id", "base_version"}, exclude_unset=True)
        # the push strips text, and the office's entries were not stripped before: the same text, not an edit
        for key, value in list(changes.items()):
            stored = getattr(existing, key)
            if isinstance(value, str) and isinstance(stored, str) and stored != value and stored.strip() == value:
                del changes[key]
        # A phone sends the whole record with every edit. A field changed elsewhere since the copy the edit was
        # made on (the office corrected the owner's phone or moved the premises to another grid, the
        # supervising body made it a key unit) comes back with the value of that older copy: it is kept as
        # it is, the rest of the edit applied, and the answer says so. A change this phone made itself is
        # one its copy has seen: edits made offline one after another all name the version it last pulled.
        # Without a base version (an older app) the phone's values are taken, as before versions were kept.
        stale = data.base_version is not None and data.base_version < existing.version
        if stale:
            versions = existing.field_versions or {}
            for key in [k for k, v in changes.items() if v != getattr(existing, k)]:
                version, device_id = versions.get(places.versioned_as(key), (0, None))
                if version > data.base_version and device_id != ctx.device.id:
                    kept[key], why[key] = getattr(existing, key), "stale_copy"
                    del changes[key]
        sent = changes.get("place_class", existing.place_class)
        if sent != existing.place_class and not places.may_reclass(ctx.session, ctx.scope, existing, sent, ctx.rules):
            kept["place_class"], why["place_class"] = existing.place_class, "not_allowed"
            del changes["place_class"]
        place = places.update_place(ctx.session, ctx.scope, existing, PlaceUpdate(**changes),
                                     rules=ctx.rules, actor=ctx.actor, now=ctx.now, offline_device_id=ctx.device.id)
    result = {"place_id": place.id, "grid_id": place.grid_id, "version": place.version}
    if kept:
        result["kept"], result["kept_why"] = kept, why
    if kept or stale:
        # the premises as stored is not the phone's copy with its edit (a field kept, or changes it had not
        # seen, fields it does not send among them): its next pull brings it, though the phone wrote it
        feed.mark_news(ctx.session, "place", [place.id])
    return result
