"""The change feed (变更流): one row per change of a premises, hazard or inspection, numbered by `seq`.

Rows are written by SQLAlchemy session events, so no writer has to remember the feed:

- ``before_flush`` / ``after_flush`` note which watched objects (Place, Hazard, Inspection) the
  transaction creates, changes or deletes, and where they were before (grid, town), in
  ``session.info``;
- ``before_commit`` of the outermost transaction re-reads those rows as they will be committed and
  appends the change rows: an upsert with the record's data for where it is now, a tombstone
  (``deleted``) for every place it left (a premises moved to another grid), for a hazard merged
  into another, and for a deleted record.

The numbering is the cursor of ``GET /api/v1/sync/pull``, so it must never let a reader skip a
change. On PostgreSQL transactions commit out of order: a sequence value handed out to a slow
transaction (100) can become visible after a faster one's (101), and a reader that has already
moved its cursor to 101 never sees 100 (airbyte#9668; Sequin's write-up on Postgres sequences).
We prevent that by making seq order equal commit order: immediately before inserting its change
rows, at the very end of the transaction, every writer takes one transaction-scoped advisory lock
(``pg_advisory_xact_lock``), held until its COMMIT is visible. So the seq values are drawn and
published strictly one transaction after another, and once a reader sees seq N every seq below N
is either visible or belongs to a transaction that rolled back (a gap that can never fill in).
A reader then needs nothing but ``seq > cursor``. Why this and not xid8 snapshots, and what it
costs, is in docs/decisions/change-feed.md. In short: xid8 snapshots serve rows in xid order, not
commit order (a phone could end with an older version of a record), stall every reader behind the
oldest running transaction, and need a second cursor scheme for SQLite. The lock costs one round
trip for a lone writer; under contention it serialises the tail of writing transactions (INSERT the
change rows, COMMIT), so they lose group commit: measured 25-45 % fewer single-record transactions
per second at 8-16 concurrent writers, 10-25 % fewer for 100-record push batches. Reads never take it.

SQLite has a single writer (``BEGIN IMMEDIATE``, and any writing transaction holds the write lock
until it commits), so the order is already the commit order there and no lock is taken. Its
``AUTOINCREMENT`` keeps seq values from being reused after pruning.

Rows written by :func:`app.db.insert_rows` (the bulk push) are handed to the feed as written, with
payloads built before the write lock; unless something else touches them before commit, or a
savepoint holding them rolls back, they are published without being read back. Core INSERTs with row dicts
(``session.execute(insert(Hazard.__table__), rows)``) are noted by an engine ``before_execute`` hook
and read back at commit. Core UPDATEs and DELETEs of these tables name no ids the hook could read:
call :func:`mark_changed` for the ids they touched.

The origin device of a change is ``session.info["origin_device_id"]`` at commit, set by the sync push
on the session that writes its ops; failing that, the device of the sync ops (``SyncOp``) the
transaction recorded. So a device is not sent its own writes back as news; what the server decided
about a hazard that existed before (re-routed by a move, clocks set by a re-inspection) is news to it, and
so is what it decided about one the same push created (:func:`mark_news`: a hazard unlinked from the
inspection of another premises that came later in the push).

A town office or police station of another town copied on a hazard (one that passed it across town
lines, or had it passed back) sees it, so its changes are also written addressed to that unit alone
(``holder_unit_id``, no grid or town; see ``_copies_elsewhere``).
"""

from __future__ import annotations

import functools
import logging
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, aliased
from sqlmodel import Field, SQLModel

from app.db import ROWS_INSERTED, ROWS_PREPARED, Database, PreparedInsert, UTCDateTime, insert_rows, utcnow
from app.hazards.models import NO_DEADLINE, Hazard, HazardCC
from app.inspections.models import Inspection
from app.org.models import OrgUnit, UnitKind
from app.places.models import Place, key_unit_level
from app.sync.models import SyncOp

log = logging.getLogger("firegrid.feed")

ORIGIN_KEY = "origin_device_id"  # session.info key the push sets to the pushing device's id
_PENDING_KEY = "firegrid.feed.pending"
_OP_DEVICE_KEY = "firegrid.feed.op_device"  # device of the sync ops this transaction applied
# Advisory lock namespace (classid) for the feed; the object id is the OID of the `changes` table,
# so databases or schemas that share a PostgreSQL server never wait on each other.
FEED_LOCK_CLASS = 0x46474346  # "FGCF"
_IN_CHUNK = 500  # ids per IN (...) when re-reading changed rows


class Change(SQLModel, table=True):
    """One change of one record, as the pull serves it. Append-only; pruned from the old end."""

    __tablename__ = "changes"
    __table_args__ = (
        # a grid worker's pull: its grids' changes after the cursor, in order
        sa.Index("ix_changes_grid_seq", "grid_id", "seq"),
        # a town office / police station's pull
        sa.Index("ix_changes_town_seq", "town_id", "seq"),
        {"sqlite_autoincrement": True},  # never reuse a seq, even after the newest rows are pruned
    )

    seq: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    )
    entity_type: str = Field(max_length=16)  # place | hazard | inspection
    entity_id: str = Field(max_length=36)
    grid_id: str | None = Field(default=None, max_length=36)
    town_id: str | None = Field(default=None, max_length=36)
    holder_unit_id: str | None = Field(default=None, max_length=36)  # hazards: the holder sees what is referred to it
    deleted: bool = False  # tombstone: the record left this grid/town (moved, merged, deleted)
    origin_device_id: str | None = Field(default=None, max_length=36)
    changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)  # server time
    data: dict | None = Field(default=None, sa_type=sa.JSON)  # the record as committed; tombstones: why


class ChangeFeedState(SQLModel, table=True):
    """One row (id 1): the feed's identity and how far it has been pruned.

    ``epoch`` is made when the table is created: a cursor from another database (restored, rebuilt)
    is refused instead of silently skipping. ``pruned_through``: every seq at or below it may be gone.
    ``backup_taken_at``: set in a copy made by `firegrid backup` until its first start (start_restored).
    ``restored_from``: the epochs this feed descends from through restores, oldest first, each with the time
    the backup that ended it was taken and the time it was restored: ``[[epoch, taken ISO, restored ISO], ...]``.
    """

    __tablename__ = "change_feed_state"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    epoch: str = Field(max_length=32)
    pruned_through: int = Field(default=0, sa_type=sa.BigInteger)
    backup_taken_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    restored_from: list = Field(default_factory=list, sa_type=sa.JSON, sa_column_kwargs={"server_default": "[]"})


# -- payloads: what a device stores for each record --------------------------------------------


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # Core rows from SQLite come back through UTCDateTime, so this is rare
        value = value.replace(tzinfo=timezone.utc)
    elif value.tzinfo is not timezone.utc:
        # converted before the cache: two local times can be equal yet different instants (fold)
        value = value.astimezone(timezone.utc)
    return _iso_utc(value)


@functools.lru_cache(maxsize=4096)
def _iso_utc(value: datetime) -> str:
    # a push batch's payloads format ~1,500 times but few distinct ones (now, the deadlines)
    return value.isoformat().replace("+00:00", "Z")


def _str(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


def place_data(p: Any) -> dict[str, Any]:
    place_class = _str(p.place_class)
    return {
        "id": p.id, "name": p.name, "address": p.address, "grid_id": p.grid_id, "town_id": p.town_id,
        "community_id": p.community_id, "place_class": place_class, "key_unit_level": key_unit_level(place_class),
        "lat": p.lat, "lon": p.lon, "owner_name": p.owner_name, "owner_phone": p.owner_phone,
        "sector_regulator_id": p.sector_regulator_id, "version": p.version, "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
    }


def hazard_data(h: Any) -> dict[str, Any]:
    next_due = None if h.next_due is None or h.next_due >= NO_DEADLINE else h.next_due
    return {
        "id": h.id, "place_id": h.place_id, "inspection_id": h.inspection_id, "category": h.category,
        "severity": h.severity, "violation": h.violation, "description": h.description, "found_at": iso(h.found_at),
        "photos": list(h.photos or []), "grid_id": h.grid_id, "town_id": h.town_id, "community_id": h.community_id,
        "place_class": h.place_class, "status": h.status, "tier": h.tier, "holder_org_unit_id": h.holder_unit_id,
        "listed_supervision": h.listed_supervision, "deadline": iso(next_due), "next_due": iso(next_due),
        "ack_due": iso(h.ack_due), "order_due": iso(h.order_due), "rectify_due": iso(h.rectify_due),
        "reinspect_due": iso(h.reinspect_due), "has_rectified_evidence": h.has_rectified_evidence,
        "duplicate_of_id": h.duplicate_of_id, "attention": h.attention, "closed_at": iso(h.closed_at),
        "created_at": iso(h.created_at), "updated_at": iso(h.updated_at), "version": h.version,
    }


def inspection_data(i: Any) -> dict[str, Any]:
    return {
        "id": i.id, "place_id": i.place_id, "grid_id": i.grid_id, "town_id": i.town_id, "user_id": i.user_id,
        "device_id": i.device_id, "started_at": iso(i.started_at), "finished_at": iso(i.finished_at),
        "lat": i.lat, "lon": i.lon, "checklist": list(i.checklist or []), "created_at": iso(i.created_at),
    }


@dataclass(frozen=True)
class Watched:
    kind: str
    model: type
    payload: Any

    @property
    def table(self) -> sa.Table:
        return self.model.__table__


WATCHED: dict[type, Watched] = {
    Place: Watched("place", Place, place_data),
    Hazard: Watched("hazard", Hazard, hazard_data),
    Inspection: Watched("inspection", Inspection, inspection_data),
}
BY_KIND: dict[str, Watched] = {w.kind: w for w in WATCHED.values()}
_TABLE_KIND: dict[str, str] = {w.model.__tablename__: w.kind for w in WATCHED.values()}

# -- collecting what a transaction touched -------------------------------------------------------

Location = tuple[str | None, str | None]  # (grid_id, town_id)


@dataclass
class _Touched:
    created: bool  # first seen as new in this transaction: if it is gone at commit, nobody ever saw it
    locations: set[Location] = field(default_factory=set)  # where it was before (tombstone if it is not there now)
    # the row as insert_rows() wrote it, while nothing else has touched the record: the feed publishes
    # it without reading it back. Any other change (ORM, mark_changed) clears it.
    row: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None  # its payload, built before the write lock was taken
    savepoint: Any = None  # the innermost savepoint the row was written in, if any
    news: bool = False  # news to the origin device too (mark_news), though this transaction created it

    def forget_written(self) -> None:
        """Publish what the database holds at commit, not the row as written."""
        self.row = self.payload = self.savepoint = None


def _pending(session: Session) -> dict[tuple[str, str], _Touched]:
    return session.info.setdefault(_PENDING_KEY, {})


def _old(state: Any, attr: str) -> Any:
    hist = state.attrs[attr].history
    if hist.deleted:
        return hist.deleted[0]
    if hist.unchanged:
        return hist.unchanged[0]
    return _UNKNOWN


_UNKNOWN = object()


def _key(w: Watched, obj: Any) -> tuple[str, str]:
    state = sa.inspect(obj)
    return (w.kind, state.identity[0] if state.identity else obj.id)


def _note(session: Session, obj: Any, *, new: bool, deleted: bool, lookups: bool) -> None:
    w = WATCHED.get(type(obj))
    if w is None:
        return
    state = sa.inspect(obj)
    key = _key(w, obj)
    pending = _pending(session)
    touched = pending.get(key)
    if touched is None:
        touched = pending[key] = _Touched(created=new)
    touched.forget_written()
    if new:
        return
    if deleted:
        if lookups:  # before the flush the row still exists, so expired attributes can load
            touched.locations.add((obj.grid_id, obj.town_id))
        else:
            touched.locations.add((state.dict.get("grid_id"), state.dict.get("town_id")))
        return
    moved = any(state.attrs[a].history.added for a in ("grid_id", "town_id"))
    if not moved:
        return
    old = (_old(state, "grid_id"), _old(state, "town_id"))
    if _UNKNOWN in old:
        if not lookups:
            return
        # the attribute was expired when it was set: read where the row is now, before this flush
        t = w.table
        row = session.execute(sa.select(t.c.grid_id, t.c.town_id).where(t.c.id == key[1])).first()
        if row is None:
            return
        old = (row.grid_id, row.town_id)
    touched.locations.add(old)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context, instances) -> None:
    for obj in session.new:
        if type(obj) is SyncOp:
            # the transaction applies a device's pushed ops: its changes are that device's
            session.info.setdefault(_OP_DEVICE_KEY, obj.device_id)
            continue
        _note(session, obj, new=True, deleted=False, lookups=True)
    for obj in session.deleted:
        _note(session, obj, new=False, deleted=True, lookups=True)
    for obj in session.dirty:
        if session.is_modified(obj, include_collections=False):
            _note(session, obj, new=False, deleted=False, lookups=True)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, flush_context) -> None:
    # whatever another before_flush listener added after ours ran (the states are still pre-flush)
    pending = _pending(session)
    for objs, new, deleted in ((session.new, True, False), (session.deleted, False, True), (session.dirty, False, False)):
        for obj in objs:
            w = WATCHED.get(type(obj))
            if w is not None and _key(w, obj) not in pending:
                _note(session, obj, new=new, deleted=deleted, lookups=False)


# Core INSERTs (executemany of row dicts, as the bulk push writes hazards and inspections) bypass
# the unit of work; they are noted per connection and picked up by the session committing on it.
_core_notes: "weakref.WeakKeyDictionary[Connection, _CoreNotes]" = weakref.WeakKeyDictionary()


@dataclass
class _CoreNotes:
    ids: dict[str, list[str]] = field(default_factory=dict)
    op_device: str | None = None


@event.listens_for(Engine, "before_execute")
def _before_execute(conn: Connection, clauseelement, multiparams, params, execution_options) -> None:
    if not isinstance(clauseelement, sa.Insert):
        return
    name = getattr(clauseelement.table, "name", None)
    kind = _TABLE_KIND.get(name)
    if kind is None and name != "sync_ops":
        return
    rows = multiparams or ([params] if params else [])
    if not rows:
        values = getattr(clauseelement, "_values", None) or {}
        value = next((getattr(v, "value", None) for k, v in values.items() if getattr(k, "key", k) == "id"), None)
        rows = [{"id": value}] if value is not None else []
    notes = _core_notes.get(conn)
    if notes is None:
        notes = _core_notes[conn] = _CoreNotes()
    if kind is None:  # sync_ops: the device whose ops this transaction applies
        notes.op_device = notes.op_device or next((r.get("device_id") for r in rows if isinstance(r, dict)), None)
        return
    got = [r.get("id") for r in rows if isinstance(r, dict) and r.get("id") is not None]
    if len(got) < len(rows) or not rows:
        log.warning("change feed: an INSERT into %s without ids in its parameters is not in the feed; "
                    "call app.sync.feed.mark_changed()", name)
    notes.ids.setdefault(kind, []).extend(got)


@event.listens_for(Engine, "commit")
@event.listens_for(Engine, "rollback")
def _connection_end(conn: Connection) -> None:
    _core_notes.pop(conn, None)


def _session_connections(session: Session) -> list[Connection]:
    trans = session.get_transaction()
    conns = getattr(trans, "_connections", None) or {}
    return list({id(v[0]): v[0] for v in conns.values()}.values())


def _take_core_notes(session: Session) -> None:
    for conn in _session_connections(session):
        notes = _core_notes.pop(conn, None)
        if notes is None:
            continue
        if notes.op_device:
            session.info.setdefault(_OP_DEVICE_KEY, notes.op_device)
        pending = _pending(session)
        for kind, ids in notes.ids.items():
            for entity_id in ids:
                pending.setdefault((kind, entity_id), _Touched(created=True))


def mark_changed(session: Session, kind: str, ids: Iterable[str]) -> None:
    """For writes that bypass the ORM (Core UPDATE/INSERT): put these records in this transaction's feed."""
    if kind not in BY_KIND:
        raise ValueError(f"unknown entity kind {kind!r}")
    pending = _pending(session)
    for entity_id in ids:
        touched = pending.setdefault((kind, entity_id), _Touched(created=False))
        touched.forget_written()


def mark_news(session: Session, kind: str, ids: Iterable[str]) -> None:
    """These records were changed by what the server decided, after the device whose push this transaction
    applies wrote them in it (a hazard it reported, unlinked by the inspection that came later in the same
    push): their change is news to that device as well. Without this its own write is not echoed, and it
    keeps the record as it sent it."""
    if kind not in BY_KIND:
        raise ValueError(f"unknown entity kind {kind!r}")
    pending = _pending(session)
    for entity_id in ids:
        pending.setdefault((kind, entity_id), _Touched(created=False)).news = True


def _prepare_payloads(table: sa.Table, rows: list[dict[str, Any]], notes: dict[str, Any]) -> None:
    """prepare_insert() of watched rows: their payloads, built now, outside the write lock."""
    w = BY_KIND.get(_TABLE_KIND.get(table.name, ""))
    if w is None:
        return
    try:
        notes["feed_payloads"] = [w.payload(SimpleNamespace(**row)) for row in rows]
    except AttributeError:  # rows without every column the payload shows: read back at commit instead
        notes["feed_payloads"] = None


def _rows_inserted(session: Session, prepared: PreparedInsert) -> None:
    """insert_prepared() wrote these rows in this session's transaction."""
    table, rows = prepared.table, prepared.rows
    kind = _TABLE_KIND.get(table.name)
    if kind is None:
        if table.name == SyncOp.__tablename__:
            session.info.setdefault(_OP_DEVICE_KEY, rows[0].get("device_id"))
        return
    payloads = prepared.notes.get("feed_payloads")
    pending = _pending(session)
    if payloads is None:  # no payloads made ahead (rows without every column): read back at commit
        for row in rows:
            pending.setdefault((kind, row["id"]), _Touched(created=True))
        return
    savepoint = session.get_nested_transaction()
    for row, payload in zip(rows, payloads):
        key = (kind, row["id"])
        if key not in pending:
            pending[key] = _Touched(created=True, row=row, payload=payload, savepoint=savepoint)


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous_transaction) -> None:
    """A savepoint rolled back: the rows insert_rows() wrote in it (or in savepoints inside it) are
    gone, and whatever takes their ids later is read back at commit, not published from memory."""
    if not previous_transaction.nested:
        return
    for touched in session.info.get(_PENDING_KEY, {}).values():
        sp = touched.savepoint
        while sp is not None:
            if sp is previous_transaction:
                touched.forget_written()
                break
            sp = sp.parent


ROWS_PREPARED.append(_prepare_payloads)
ROWS_INSERTED.append(_rows_inserted)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.get(_PENDING_KEY) and not session.in_nested_transaction():
        # something changed a watched record after the feed was written (another before_commit hook)
        log.error("change feed: %d records changed after the feed rows were written; devices will not be told",
                  len(session.info[_PENDING_KEY]))


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction) -> None:
    if transaction.parent is None:  # the outermost transaction committed or rolled back
        session.info.pop(_PENDING_KEY, None)
        session.info.pop(_OP_DEVICE_KEY, None)


# -- writing the change rows at commit -----------------------------------------------------------


def _serialize_commits(session: Session) -> None:
    """PostgreSQL: from here to COMMIT, one feed writer at a time, so seq order is commit order.

    Taken as late as possible: the INSERT of the change rows and the COMMIT are all that run under
    it, and neither waits for a row lock, so it cannot take part in a deadlock. A test replaces this
    with a no-op to show the concurrent-feed test catches the naive design.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text(
            "SELECT pg_advisory_xact_lock(:cls, ((CAST('changes' AS regclass))::oid::bigint - 2147483648)::int)"
        ), {"cls": FEED_LOCK_CLASS})


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is released; the outermost commit writes the feed
    if session.new or session.dirty or session.deleted:
        session.flush()
    _take_core_notes(session)
    pending = session.info.pop(_PENDING_KEY, None)
    if pending:
        write_changes(session, pending)


def write_changes(session: Session, pending: dict[tuple[str, str], _Touched]) -> int:
    """Append the change rows for what this transaction touched. Returns how many."""
    # Read the rows as they will commit: what a savepoint rolled back is gone, and columns another
    # transaction changed before ours are there. On PostgreSQL FOR UPDATE keeps them so until we
    # commit (rows this transaction wrote are locked already; this adds the rare row a rolled-back
    # savepoint had touched), so the data can be read before the feed lock, not under it.
    #
    # Rows that insert_rows() wrote and nothing changed since are published as written: they are
    # still there as written (a savepoint that rolled back took its rows' shortcut away with it, see
    # _forget_rolled_back), and their primary key keeps any other transaction from writing the same id.
    postgres = session.get_bind().dialect.name == "postgresql"
    current: dict[tuple[str, str], Any] = {}
    reread: dict[str, list[str]] = {}
    for (kind, entity_id), touched in pending.items():
        if touched.row is not None:
            current[(kind, entity_id)] = SimpleNamespace(**touched.row)
        else:
            reread.setdefault(kind, []).append(entity_id)
    for kind, ids in reread.items():
        t = BY_KIND[kind].table
        # a hazard's copies in other towns (see _copies_elsewhere) are looked up only where there are any:
        # asked here, in the statement that reads it anyway, not in one more on every hazard's commit
        columns = (t, _COPIED_ELSEWHERE) if kind == "hazard" else (t,)
        for i in range(0, len(ids), _IN_CHUNK):
            stmt = sa.select(*columns).where(t.c.id.in_(ids[i:i + _IN_CHUNK]))
            for row in session.execute(stmt.with_for_update(of=t) if postgres else stmt):
                current[(kind, row.id)] = row
    origin = session.info.get(ORIGIN_KEY) or session.info.get(_OP_DEVICE_KEY)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    passed_on: dict[str, dict[str, Any]] = {}  # hazards that existed before: id -> its change row
    row_origin = origin  # per record, set below

    def add(kind: str, entity_id: str, loc: Location, *, deleted: bool, data: dict | None, holder: str | None = None):
        rows.append({"entity_type": kind, "entity_id": entity_id, "grid_id": loc[0], "town_id": loc[1],
                     "holder_unit_id": holder, "deleted": deleted, "origin_device_id": row_origin, "changed_at": now,
                     "data": data})

    for (kind, entity_id), touched in pending.items():
        row = current.get((kind, entity_id))
        # A device's push holds the premises it sent and the records it created (their routing is in its
        # answer), not what the server then decided about a record that was there before: the holder,
        # tier and clocks of a move's re-routing, a re-inspection's outcome, a merge followed, the grid of
        # an inspection whose premises it moved. Those are news to that device as well.
        row_origin = origin if (kind == "place" or touched.created) and not touched.news else None
        if row is None:
            if not touched.created:  # it existed before this transaction and is gone now
                for loc in sorted(touched.locations, key=str):
                    add(kind, entity_id, loc, deleted=True, data={"reason": "deleted"})
            continue
        here: Location = (row.grid_id, row.town_id)
        for loc in sorted(touched.locations - {here}, key=str):
            add(kind, entity_id, loc, deleted=True,
                data={"reason": "moved", "to": {"grid_id": here[0], "town_id": here[1]}})
        if kind != "hazard":
            add(kind, entity_id, here, deleted=False, data=touched.payload or BY_KIND[kind].payload(row))
        elif row.status == "merged":
            add(kind, entity_id, here, deleted=True, holder=row.holder_unit_id,
                data={"reason": "merged", "merged_into_id": row.merged_into_id})
        else:
            add(kind, entity_id, here, deleted=False, holder=row.holder_unit_id, data=touched.payload or hazard_data(row))
        if kind == "hazard" and not touched.created and getattr(row, "copied_elsewhere", True):
            passed_on[entity_id] = rows[-1]  # a new hazard's copies are routed within its town/county
    if passed_on:
        rows += _copies_elsewhere(session, passed_on)
    # From here to COMMIT: one writer at a time (PostgreSQL). Only the INSERT and the COMMIT run under it.
    _serialize_commits(session)
    if rows:
        insert_rows(session, Change.__table__, rows)
    return len(rows)


_TOWN_UNIT_KINDS = (UnitKind.town_office.value, UnitKind.police_station.value)
_COPIES = (sa.select(HazardCC.hazard_id, HazardCC.unit_id, OrgUnit.town_id)
           .join(OrgUnit, OrgUnit.id == HazardCC.unit_id)
           .where(HazardCC.hazard_id.in_(sa.bindparam("ids", expanding=True)), OrgUnit.kind.in_(_TOWN_UNIT_KINDS)))

_CC_UNIT = aliased(OrgUnit)
# the same test as _copies_elsewhere's, per hazard row (False: no copy is addressed for it)
_COPIED_ELSEWHERE = (
    sa.exists().where(HazardCC.hazard_id == Hazard.__table__.c.id, _CC_UNIT.id == HazardCC.unit_id,
                      _CC_UNIT.kind.in_(_TOWN_UNIT_KINDS), _CC_UNIT.town_id != Hazard.__table__.c.town_id,
                      HazardCC.unit_id != Hazard.__table__.c.holder_unit_id)
    .correlate(Hazard.__table__).label("copied_elsewhere"))


def _copies_elsewhere(session: Session, changed: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The change again, addressed (``holder_unit_id``, no grid or town) to each town office or police
    station of another town copied on the hazard: one that passed it across town lines, or had it passed
    back, keeps seeing it (a copy), so its device must keep hearing of it, not keep it as it last held it.
    Units of the hazard's own town and its holder get the change row itself."""
    out: list[dict[str, Any]] = []
    ids = list(changed)
    for i in range(0, len(ids), _IN_CHUNK):
        for hazard_id, unit_id, unit_town in session.execute(_COPIES, {"ids": ids[i:i + _IN_CHUNK]}):
            row = changed[hazard_id]
            if unit_town != row["town_id"] and unit_id != row["holder_unit_id"]:
                out.append({**row, "grid_id": None, "town_id": None, "holder_unit_id": unit_id})
    return out


def is_addressed_copy(grid_id: Any, town_id: Any, holder_unit_id: Any) -> sa.ColumnElement[bool]:
    """A change row sent to one unit only (see _copies_elsewhere): every other row names where it is."""
    return grid_id.is_(None) & town_id.is_(None) & holder_unit_id.isnot(None)


# -- reading and pruning ----------------------------------------------------------------------


def feed_state(session: Session) -> ChangeFeedState:
    state = session.get(ChangeFeedState, 1)
    if state is None:  # the migration makes the row; a database built without it still works
        state = ChangeFeedState(id=1, epoch=new_epoch(), pruned_through=0)
        session.add(state)
        session.flush()
    return state


def new_epoch() -> str:
    return uuid.uuid4().hex


_STATE = sa.select(ChangeFeedState.epoch, ChangeFeedState.pruned_through).where(ChangeFeedState.id == 1)


# A push whose answer's server_time (the time it began) is before a backup was taken may have committed after the
# backup's snapshot began: phones send again what was answered since the backup's time less this (a push takes
# seconds; a lock wait at most 10)
RESEND_MARGIN = timedelta(minutes=10)


def mark_backup_copy(conn: sa.Connection, taken_at: datetime) -> None:
    """In a backup's copy of the database: when it was taken. Its first start makes it a restored feed
    (start_restored); the copy itself stays as it is, so a second restore of the same file starts anew too."""
    state = ChangeFeedState.__table__
    # a copy of a copy not started yet holds only what the first held: its time, the earlier, stays
    conn.execute(state.update().where(state.c.id == 1).values(
        backup_taken_at=sa.func.coalesce(state.c.backup_taken_at, taken_at)))


def start_restored(session: Session, taken_at: datetime | None = None, now: datetime | None = None) -> datetime | None:
    """Make a restored database's feed a new one: a new epoch, and the one it leaves kept in restored_from with
    the time the backup was taken (``taken_at``, else the mark of mark_backup_copy; neither: nothing to do).
    Every cursor of before is then refused: the seqs above the copy's newest change will be handed out again,
    to other changes, and a cursor past them would skip those; a cursor of a kept epoch is told the server was
    restored (pull.py). Returns the backup's time if it did so. The caller commits; several workers starting at
    once do it once (the state row is locked, and the mark cleared)."""
    state = session.get(ChangeFeedState, 1, with_for_update=True, populate_existing=True)
    if state is None:
        return None
    taken_at = taken_at or state.backup_taken_at
    if taken_at is None:
        return None
    state.restored_from = [*(state.restored_from or []),
                           [state.epoch, taken_at.isoformat(), (now or utcnow()).isoformat()]]
    state.epoch = new_epoch()
    state.backup_taken_at = None
    session.add(state)
    session.flush()
    return taken_at


def start_restored_copy(db: Database) -> datetime | None:
    """At a server's start: if the database is a backup copy not started yet, start_restored (in a write
    transaction only then). Returns the backup's time if this start made it a restored feed."""
    with db.session() as session:
        pending = session.execute(sa.select(ChangeFeedState.backup_taken_at)
                                  .where(ChangeFeedState.id == 1)).scalar()
    if pending is None:
        return None
    with db.session(write=True) as session:
        taken_at = start_restored(session)
        session.commit()
    return taken_at


def _restored_from(session: Session) -> list:
    return session.execute(sa.select(ChangeFeedState.restored_from).where(ChangeFeedState.id == 1)).scalar() or []


def restored_at(session: Session, cursor_epochs: Iterable[str]) -> datetime | None:
    """When the backup was taken that ended the feed of the first of ``cursor_epochs`` (a cursor's epoch, then
    those it descends from, nearest first) this database descends from too; None if none."""
    taken = {entry[0]: entry[1] for entry in _restored_from(session)}
    for epoch in cursor_epochs:
        if epoch in taken:
            return datetime.fromisoformat(taken[epoch])
    return None


def restored_epochs(session: Session) -> list[str]:
    """The epochs this feed descends from through restores (a new cursor carries them: Cursor.h)."""
    return [entry[0] for entry in _restored_from(session)]


def restore_windows(session: Session) -> list[tuple[datetime, datetime]]:
    """For each restore this database went through: (when the backup was taken, when it was restored). The
    photos uploaded in between kept their files in the store but lost their rows."""
    return [(datetime.fromisoformat(e[1]), datetime.fromisoformat(e[2])) for e in _restored_from(session)]


def read_state(session: Session) -> tuple[str, int]:
    """(epoch, pruned_through) without writing anything."""
    row = session.execute(_STATE).first()
    return (row.epoch, int(row.pruned_through)) if row else ("", 0)


# one row even without a state row (then epoch and pruned_through are NULL); built once
_HEAD = sa.select(_STATE.with_only_columns(ChangeFeedState.epoch).scalar_subquery(),
                  _STATE.with_only_columns(ChangeFeedState.pruned_through).scalar_subquery(),
                  sa.select(sa.func.max(Change.seq)).scalar_subquery())


def read_head(session: Session) -> tuple[str, int, int]:
    """(epoch, pruned_through, high water) in one statement: what a pull needs before it reads (it used
    to take three). The high water is the newest seq a reader may serve up to: with seq order == commit
    order, every change at or below the newest visible seq is visible (or rolled back for good)."""
    epoch, pruned_through, newest = session.execute(_HEAD).one()
    pruned_through = int(pruned_through or 0)
    return epoch or "", pruned_through, max(int(newest or 0), pruned_through)


def prune_changes(session: Session, before_seq: int) -> int:
    """Delete the change rows below ``before_seq`` and record the low-water mark, so a cursor that
    still needed them gets 410 (start over) instead of a silent gap. Returns how many rows went.

    Never prunes past the newest existing row: the mark must stay below every seq handed out later.
    """
    newest = int(session.execute(sa.select(sa.func.max(Change.seq))).scalar() or 0)
    before_seq = min(before_seq, newest + 1)
    state = feed_state(session)
    if before_seq - 1 <= state.pruned_through:
        return 0
    gone = session.execute(sa.delete(Change.__table__).where(Change.__table__.c.seq < before_seq)).rowcount
    state.pruned_through = before_seq - 1
    session.add(state)
    session.flush()
    return gone
