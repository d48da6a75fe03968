"""Pull: what changed in the device's scope since its cursor (API.md `GET /api/v1/sync/pull`).

A pull is a run of pages. Its first page fixes an upper bound (``upto``, the newest seq at that
moment) that travels in the cursor, so a pull ends even while writers keep writing; what commits
later comes on the next pull. With no cursor the pull is a snapshot of the whole scope (reference
data, premises, hazards, inspections, keyset-paged by id) taken after ``upto`` was fixed, so every
change up to ``upto`` is in it and the next pull continues from ``upto``. A change that lands
while the snapshot is paged (a premises moving in behind the keyset) has a seq above ``upto`` and
comes on the next pull.

Each change row is served once, in seq order, to the readers whose scope holds the row's grid (grid
workers) or town (town office, police station; a police station also by holder): an upsert with
the record as it was committed, or a tombstone for what left (moved, merged, deleted). A device is
not sent the upserts it caused itself (its push already holds them; not so what the server decided
about a hazard that was there before, such as a move's re-routing); tombstones it caused still
reach it, except a "moved" tombstone whose destination the device can still see (the record
stayed in its scope). A change made by anyone else later, the server included, reaches it.

Reference data (categories, premises classes, the checklist template) is sent whole on the first pull
and again on the first pull after the routing policy's version changed. The cursor keeps the category
codes the device was sent, so that one the policy no longer has comes as a tombstone (``deleted``,
``data.reason`` "removed", or "retired" with its names when the policy lists it under
``retired_categories``), in the format of every other tombstone: a phone that deletes what it is told
is deleted needs nothing new. Retired categories are sent as tombstones with every set of reference
data, so a phone whose cursor predates the kept codes learns of them too.

The cursor is opaque to the client: base64url JSON with a version, the feed's epoch and a
fingerprint of the caller's scope. One the server cannot serve -- malformed, from another
database, pruned away, or made for another scope (a worker moved to another grid) -- is a ``410``
and the client starts over with a full pull, which also clears what left its scope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import Session, select

from app.auth.scope import Scope, hazard_clause
from app.errors import DomainError, bindable
from app.hazards.models import Hazard
from app.inspections.models import Inspection
from app.places.models import PLACE_CLASS_NAMES, Place, key_unit_level
from app.referrals.policy import Category, Policy
from app.sync.feed import (RESEND_MARGIN, Change, hazard_data, inspection_data, is_addressed_copy, place_data,
                           read_head, read_state, restored_at, restored_epochs)

log = logging.getLogger("firegrid.sync")

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
CURSOR_VERSION = 1
SEQ_MAX = 2 ** 63 - 1  # the feed's seq is a BIGINT: a cursor number past it is no position in it

# the phases of a pull, in order
REF, PLACES, HAZARDS, INSPECTIONS, CHANGES = "ref", "place", "hazard", "inspection", "changes"
SNAPSHOT_PHASES = (REF, PLACES, HAZARDS, INSPECTIONS)
INCREMENTAL_PHASES = (REF, CHANGES)  # REF only when the reference data changed since the last pull


class PullChange(BaseModel):
    type: str
    id: str
    deleted: bool
    data: dict[str, Any] | None


class PullResponse(BaseModel):
    changes: list[PullChange]
    cursor: str
    more: bool


@dataclass
class PullPage:
    changes: list[dict[str, Any]]
    cursor: str
    more: bool


class CursorExpired(DomainError):
    status = 410
    code = "cursor_expired"


# -- the cursor -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    e: str  # feed epoch
    f: str  # scope fingerprint
    r: str  # reference-data version the device holds (while it is being sent: that version)
    a: int  # every change at or below this seq is on the device (or in the snapshot being paged)
    u: int | None = None  # this pull's upper bound; None between pulls
    m: str | None = None  # "s" snapshot or "c" changes while a pull is under way
    p: str | None = None  # phase
    k: Any = None  # keyset position in the phase (last id / last index / last seq)
    v: int = CURSOR_VERSION
    # the category codes the device may hold (None: a cursor made before they were kept, not known), so
    # that a category the policy no longer has is sent as a tombstone; and while the reference data is
    # paged, the codes being sent as tombstones (fixed at the start of the phase, so the pages stay put)
    c: list[str] | None = None
    g: list[str] | None = None
    # the device it was made for (device_fingerprint): the feed leaves a device's own writes out of its
    # pulls, so a cursor says what that device holds, not what another of the user's phones does. None: a
    # cursor from before this was kept, served as it was
    d: str | None = None
    # the epochs the feed descended from through restores when the cursor was first made (feed.restored_at):
    # restored from the same backup again, the server still knows the cursor's phone sent to a lost feed
    h: list[str] | None = None

    def encode(self) -> str:
        raw = json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> "Cursor":
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            d = json.loads(raw)
            if not isinstance(d, dict) or d.get("v") != CURSOR_VERSION:
                raise ValueError("unknown cursor version")
            c = cls(**d)
            if not (_seq(c.a) and (c.u is None or _seq(c.u)) and c.m in (None, "s", "c")
                    and isinstance(c.e, str) and isinstance(c.f, str) and isinstance(c.r, str)
                    and (c.d is None or isinstance(c.d, str))
                    and (c.h is None or (isinstance(c.h, list) and all(isinstance(e, str) for e in c.h)))):
                raise ValueError("bad field")
            if c.m is not None and (c.u is None or c.p not in (SNAPSHOT_PHASES if c.m == "s" else INCREMENTAL_PHASES)):
                raise ValueError("bad phase")
            if c.k is not None and not (bindable(c.k) if c.p in (PLACES, HAZARDS, INSPECTIONS) else _seq(c.k)):
                raise ValueError("bad position")
            if not (_codes(c.c) and _codes(c.g)):
                raise ValueError("bad codes")
            return c
        # RecursionError: JSON nested deeper than the decoder goes (a garbled cursor, not our fault)
        except (ValueError, TypeError, RecursionError, binascii.Error, UnicodeDecodeError):
            raise CursorExpired("cursor: not a cursor this server can serve; start over with a pull without a cursor",
                                reason="malformed") from None


MAX_CODES = 1000


def _codes(value: Any) -> bool:
    return value is None or (isinstance(value, list) and len(value) <= MAX_CODES
                             and all(bindable(v) and len(v) <= 64 for v in value))


def _seq(value: Any) -> bool:
    """A number the feed could have handed out: bound into SQL unchecked, a larger one fails there (500)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEQ_MAX


def device_fingerprint(device_id: str | None) -> str | None:
    return hashlib.sha256(device_id.encode()).hexdigest()[:16] if device_id is not None else None


def scope_fingerprint(scope: Scope) -> str:
    key = [scope.role.value, scope.unit_id,
           sorted(scope.grid_ids) if scope.grid_ids is not None else None,
           sorted(scope.town_ids) if scope.town_ids is not None else None]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


# -- reference data ------------------------------------------------------------------------------


def reference_items(policy: Policy, gone: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Categories, premises classes and the checklist template derived from the policy's categories.

    A category a phone must stop offering is sent as a tombstone (``deleted: true``), as any record that
    leaves a phone is: first those of ``gone`` (codes the device held that the policy no longer has),
    then, after the current items, the policy's retired categories (every time the reference data is
    sent: a phone that never held one ignores it). A tombstone's data says why, and a retired one's
    names still label the hazards reported under it."""
    retired = {c.code: c for c in policy.retired_categories}
    items = [_tombstone(policy, code, retired.get(code)) for code in gone]
    for c in policy.categories:
        items.append({"type": "category", "id": c.code, "deleted": False, "data": {
            "code": c.code, "name_zh": c.name_zh, "name_en": c.name_en,
            "default_severity": c.default_severity.value if hasattr(c.default_severity, "value") else c.default_severity,
            "rectify_workdays": policy.rectify_days(c.code), "policy_version": policy.version}})
    for pc, (zh, en) in PLACE_CLASS_NAMES.items():
        items.append({"type": "place_class", "id": pc.value, "deleted": False, "data": {
            "code": pc.value, "name_zh": zh, "name_en": en, "key_unit_level": key_unit_level(pc.value)}})
    items.append({"type": "checklist_template", "id": "default", "deleted": False, "data": {
        "id": "default", "version": policy.version, "name_zh": "消防安全检查表", "name_en": "Fire safety checklist",
        "items": [{"item": c.code, "label_zh": c.name_zh, "label_en": c.name_en,
                   "results": ["pass", "fail", "na"]} for c in policy.categories]}})
    items += [_tombstone(policy, code, c) for code, c in retired.items() if code not in gone]
    return items


def _tombstone(policy: Policy, code: str, retired: Category | None) -> dict[str, Any]:
    data: dict[str, Any] = {"code": code, "reason": "retired" if retired else "removed",
                            "policy_version": policy.version}
    if retired is not None:  # reports under it are still accepted, and its hazards still need a label
        data.update(name_zh=retired.name_zh, name_en=retired.name_en)
    return {"type": "category", "id": code, "deleted": True, "data": data}


# -- scope filters ------------------------------------------------------------------------------


def _change_rows_in(scope: Scope) -> sa.ColumnElement[bool]:
    c = Change.__table__.c
    if scope.grid_ids is not None:
        return c.grid_id.in_(sorted(scope.grid_ids))
    if scope.town_ids is None:  # everything, but a copy addressed to one unit repeats a row served already
        return ~is_addressed_copy(c.grid_id, c.town_id, c.holder_unit_id)
    return c.town_id.in_(sorted(scope.town_ids)) | (c.holder_unit_id == scope.unit_id)


def _sees_location(scope: Scope, loc: dict[str, Any] | None) -> bool:
    if not loc:
        return False
    if scope.grid_ids is not None:
        return loc.get("grid_id") in scope.grid_ids
    return scope.town_ids is None or loc.get("town_id") in scope.town_ids


def _inspection_clause(scope: Scope) -> sa.ColumnElement[bool]:
    if scope.grid_ids is not None:
        return Inspection.grid_id.in_(scope.grid_ids)
    if scope.town_ids is not None:
        return Inspection.town_id.in_(scope.town_ids)
    return sa.true()


# -- the pull -----------------------------------------------------------------------------------


def clamp_limit(limit: int | None) -> int:
    return max(1, min(int(limit or DEFAULT_LIMIT), MAX_LIMIT))


_warned_ahead: set[str] = set()


def _warn_ahead(epoch: str, cursor_seq: int, newest: int) -> None:
    """A phone's cursor past the feed's newest change, of this very feed: the database lost changes it had, i.e.
    it was restored from a backup by other means than `firegrid backup` and nobody ran `firegrid restored`.
    The phone starts over without sending again what it lost: the operator must hear of it (once per feed in
    this process, not at every such pull)."""
    if epoch not in _warned_ahead:
        _warned_ahead.add(epoch)
        log.warning("a phone's cursor is past this server's change feed (change %d, the newest is %d): if the "
                    "database was restored from a backup, run `firegrid restored --taken-at <when it was taken>` "
                    "so that the phones send again what it lost", cursor_seq, newest)


def _refuse_if_restored(session: Session, cursor_epochs: list[str]) -> None:
    """A cursor of a database this one was restored from: what the phone sent after that backup was taken may
    be gone. Its phone sends again every op answered since ``resend_since`` (each is applied once: those the
    copy holds answer duplicate), then starts over."""
    taken_at = restored_at(session, cursor_epochs)
    if taken_at is not None:
        since = (taken_at - RESEND_MARGIN).isoformat()
        raise CursorExpired(
            f"cursor: this server was restored from a backup taken at {taken_at.isoformat()}; send again every "
            f"op of a push whose answer's server_time is at or after {since} (each is applied once), then start "
            "over with a pull without a cursor",
            reason="restored", backup_taken_at=taken_at.isoformat(), resend_since=since)


def pull(session: Session, scope: Scope, policy: Policy, *, device_id: str | None = None,
         cursor: str | None = None, limit: int | None = DEFAULT_LIMIT) -> PullPage:
    limit = clamp_limit(limit)
    epoch, pruned_at_start, upto_now = read_head(session)
    fp, dev = scope_fingerprint(scope), device_fingerprint(device_id)
    if cursor is None:
        upto = upto_now
        c = Cursor(e=epoch, f=fp, r=policy.version, a=upto, u=upto, m="s", p=REF, k=None, d=dev,
                   h=restored_epochs(session) or None)
    else:
        c = Cursor.decode(cursor)
        if c.e != epoch:
            _refuse_if_restored(session, [c.e, *reversed(c.h or ())])  # the nearest restore first
            raise CursorExpired("cursor: made by another database; start over with a pull without a cursor",
                                reason="other_feed")
        if c.f != fp:
            raise CursorExpired("cursor: your jurisdiction changed since it was made; start over with a pull "
                                "without a cursor", reason="scope_changed")
        if c.d is not None and c.d != dev:  # it would never bring what that device wrote itself
            raise CursorExpired("cursor: made for another device; start over with a pull without a cursor",
                                reason="other_device")
        if c.m is None:  # a new pull: fix its upper bound now
            upto = upto_now
            if c.a > upto:
                _warn_ahead(epoch, c.a, upto)
                raise CursorExpired("cursor: ahead of this server's feed; start over with a pull without a cursor",
                                    reason="other_feed")
            if c.c is None and c.r == policy.version:
                # a cursor from before the codes were kept, resting on the reference data of the policy in
                # force: the device holds its categories (so a later removal reaches it as a tombstone)
                c = replace(c, c=sorted(policy.category_codes))
            c = replace(c, u=upto, m="c", p=REF if c.r != policy.version else CHANGES, k=None)
            if c.p == REF:  # while the reference data is paged, ``r`` is the version being sent
                c = replace(c, r=policy.version)
    reads_from = (c.k if c.p == CHANGES and c.k is not None else c.a) if c.m == "c" else None
    out: list[dict[str, Any]] = []
    read_changes = False
    phases = SNAPSHOT_PHASES if c.m == "s" else INCREMENTAL_PHASES
    while c.p is not None and len(out) < limit:
        room = limit - len(out)
        if c.p == REF:
            if c.k is None:  # the phase begins: what the device holds that the policy no longer has
                gone = sorted(set(c.c) - policy.category_codes) if c.m == "c" and c.c is not None else []
                c = replace(c, g=gone, c=sorted(set(c.c or ()) - set(gone)))
            # every page adds its policy's codes: those are what the device may hold now
            c = replace(c, c=sorted(set(c.c or ()) | policy.category_codes))
            refs = reference_items(policy, c.g or ())
            start = c.k or 0
            out += refs[start:start + room]
            if start + room < len(refs):
                c = replace(c, k=start + room)
                break
        elif c.p == CHANGES:
            after = c.k if c.k is not None else c.a
            done = True
            if after < c.u:  # else nothing new: no statement (most pulls are a phone asking for news)
                last, done = _changes(session, scope, device_id, after=after, upto=c.u, room=room, out=out)
                read_changes = True
            if not done:
                c = replace(c, k=last)
                break
        else:
            last, done = _snapshot(session, scope, c.p, c.k, room, out)
            if not done:
                c = replace(c, k=last)
                break
        nxt = phases.index(c.p) + 1
        c = replace(c, p=phases[nxt] if nxt < len(phases) else None, k=None, g=None)
    # a cursor older than the retained feed: checked after reading, so a prune that committed while
    # we read (PostgreSQL reads what committed statement by statement) cannot have taken rows from
    # under this page unnoticed; if no change row was read, the state read before is enough
    pruned_through = read_state(session)[1] if read_changes else pruned_at_start
    if reads_from is not None and reads_from < pruned_through:
        raise CursorExpired("cursor: older than the retained change feed; start over with a pull without a cursor",
                            reason="pruned")
    _brief_outside_places(session, scope, out)
    if c.p is None:  # this pull is complete: rest at its upper bound
        # with the reference data the device holds, not the policy of this page: a policy that changed
        # after the reference data was sent (a rolling restart) is sent on the next pull
        c = Cursor(e=c.e, f=c.f, r=c.r, a=c.u, u=None, m=None, p=None, k=None, c=c.c, d=dev, h=c.h)
        return PullPage(changes=out, cursor=c.encode(), more=False)
    return PullPage(changes=out, cursor=c.encode(), more=True)


def _brief_outside_places(session: Session, scope: Scope, out: list[dict[str, Any]]) -> None:
    """A hazard the caller sees outside the premises it pulls (one transferred in from another town, held
    or copied there) names a place_id the device never receives: such a hazard carries its premises'
    brief (``data.place``: id, name, address, class, as the queue shows it), read as the page is served,
    so an offline desk knows where to go. Not for premises in scope: those come as records of their own."""
    if scope.grid_ids is None and scope.town_ids is None:
        return  # the county's every premises is in its pull
    wanted = {r["id"] for r in out if r.get("type") == "hazard" and not r.get("deleted")}
    if not wanted:
        return
    # the premises as they are now, of hazards the caller sees now: an older row of a hazard that has left
    # its jurisdiction since (its tombstone follows) must not show where the premises went
    briefs = {r.hazard_id: {"id": r.id, "name": r.name, "address": r.address, "place_class": r.place_class}
              for r in session.execute(
                  select(Hazard.id.label("hazard_id"), Place.id, Place.name, Place.address, Place.place_class)
                  .join(Place, Place.id == Hazard.place_id)
                  .where(Hazard.id.in_(wanted), hazard_clause(scope), Hazard.status != "merged",
                         ~scope.place_clause())).all()}
    for r in out:
        brief = briefs.get(r["id"]) if r.get("type") == "hazard" and not r.get("deleted") else None
        if brief is not None:
            r["data"] = {**r["data"], "place": brief}


def _snapshot(session: Session, scope: Scope, phase: str, after_id: str | None, room: int,
              out: list[dict[str, Any]]) -> tuple[str | None, bool]:
    if phase == PLACES:
        model, clause, payload = Place, scope.place_clause(), place_data
    elif phase == HAZARDS:
        model, clause, payload = Hazard, hazard_clause(scope) & (Hazard.status != "merged"), hazard_data
    else:
        model, clause, payload = Inspection, _inspection_clause(scope), inspection_data
    stmt = select(model).where(clause)
    if after_id is not None:
        stmt = stmt.where(model.id > after_id)
    rows = session.exec(stmt.order_by(model.id).limit(room + 1)).all()
    for r in rows[:room]:
        out.append({"type": phase, "id": r.id, "deleted": False, "data": payload(r)})
    if len(rows) > room:
        return rows[room - 1].id, False
    return None, True


def _changes(session: Session, scope: Scope, device_id: str | None, *, after: int, upto: int, room: int,
             out: list[dict[str, Any]]) -> tuple[int, bool]:
    t = Change.__table__
    rows = session.execute(
        sa.select(t.c.seq, t.c.entity_type, t.c.entity_id, t.c.deleted, t.c.origin_device_id, t.c.data)
        .where(t.c.seq > after, t.c.seq <= upto, _change_rows_in(scope))
        .order_by(t.c.seq).limit(room + 1)
    ).all()
    for r in rows[:room]:
        if r.origin_device_id is not None and r.origin_device_id == device_id:
            if not r.deleted:
                continue  # the device's own write: its push already holds it
        if r.deleted and (r.data or {}).get("reason") == "moved" and _sees_location(scope, r.data.get("to")):
            continue  # moved within this scope: the upsert for where it is now follows
        out.append({"type": r.entity_type, "id": r.entity_id, "deleted": r.deleted, "data": r.data})
    if len(rows) > room:
        return rows[room - 1].seq, False
    return upto, True
