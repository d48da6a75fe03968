"""Device health: which phones have not synced, how far their clocks are off, and how many photos
they still hold back. Data stuck on a phone is the commonest way field records are lost."""

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from app.audit.models import HazardEvent
from app.auth.models import AuthToken, Device, User
from app.auth.scope import Scope
from app.errors import Unauthorized
from app.hazards.models import Hazard, Reinspection
from app.org.models import OrgUnit
from app.photos.models import Blob, PhotoRef
from app.photos.service import COUNTS
from app.sync.schemas import DeviceHealthPublic

# A phone clock further off than this is flagged: its times stay on the record as data, nothing
# is ordered or timed by them.
CLOCK_TOLERANCE = timedelta(minutes=10)


def clock_offset(sent_at: datetime | None, now: datetime) -> float | None:
    return None if sent_at is None else round((sent_at - now).total_seconds(), 1)


def clock_flagged(offset_s: float | None) -> bool:
    return offset_s is not None and abs(offset_s) > CLOCK_TOLERANCE.total_seconds()


def record_push(session: Session, device_id: str, now: datetime, offset_s: float | None, app_version: str | None,
                token_id: str | None = None) -> None:
    """The push on the device's record, in the push's write transaction. With ``token_id``, only while the
    token, its device and its user still stand: a device revoked (or a user deactivated, a token revoked)
    while its push was under way, checked before it, gets 401 and nothing of the push is written. The row
    lock this UPDATE takes orders it with the revocation's on PostgreSQL; SQLite's writers take turns."""
    values: dict = {"last_push_at": now, "last_seen_at": now}
    if offset_s is not None:
        values["clock_offset_s"] = offset_s
    if app_version:
        values["app_version"] = app_version
    params = {**values, "device": device_id, **({"token": token_id} if token_id is not None else {})}
    if session.execute(_device_update(tuple(values), token_id is not None), params).rowcount == 0 and token_id:
        raise Unauthorized("token expired or revoked", headers={"WWW-Authenticate": "Bearer"})


_DEVICE_UPDATES: dict[tuple[tuple[str, ...], bool], sa.Update] = {}


def _device_update(columns: tuple[str, ...], guarded: bool) -> sa.Update:
    """UPDATE devices SET <columns> for one device (``guarded``: only while its token, it and its user stand),
    built once per set of columns (every push runs one)."""
    stmt = _DEVICE_UPDATES.get((columns, guarded))
    if stmt is None:
        table = Device.__table__
        stmt = sa.update(table).where(table.c.id == sa.bindparam("device"))
        if guarded:
            stmt = stmt.where(table.c.revoked_at.is_(None),
                              sa.exists().where(User.id == table.c.user_id, User.is_active.is_(True)),
                              sa.exists().where(AuthToken.id == sa.bindparam("token"), AuthToken.revoked_at.is_(None)))
        stmt = _DEVICE_UPDATES[(columns, guarded)] = stmt.values({c: sa.bindparam(c) for c in columns})
    return stmt


def _pending_media_by_device(session: Session, device_ids: list[str]) -> dict[str, int]:
    """Photos a device's records name that never arrived (or arrived only from someone else: it has not
    proven it holds them), each counted once per phone however many of its records name it.

    A merged hazard's photos are named by the original too (the evidence travels with it), but they
    are still on the phone that took them: a photo on a hazard is its reporter's only if no hazard
    merged into it names that photo (which then counts for that hazard's own phone)."""
    # not stored, or stored but not proven held by whoever named it (app.photos.service.COUNTS): the phone
    # must still send it
    missing = ~sa.exists().where(Blob.sha256 == PhotoRef.sha256) | ~COUNTS
    dup, dup_ref = aliased(Hazard), aliased(PhotoRef)
    merged_in = sa.exists().where(dup.merged_into_id == PhotoRef.record_id, dup_ref.record_kind == "hazard",
                                  dup_ref.record_id == dup.id, dup_ref.sha256 == PhotoRef.sha256)
    held = sa.union(
        select(Hazard.reporter_device_id.label("device_id"), PhotoRef.sha256).select_from(PhotoRef)
        .join(Hazard, (Hazard.id == PhotoRef.record_id) & (PhotoRef.record_kind == "hazard"))
        .where(missing, ~merged_in, Hazard.reporter_device_id.in_(device_ids)),
        select(Reinspection.device_id.label("device_id"), PhotoRef.sha256).select_from(PhotoRef)
        .join(Reinspection, (Reinspection.id == PhotoRef.record_id) & (PhotoRef.record_kind == "reinspection"))
        .where(missing, Reinspection.device_id.in_(device_ids)),
        # photos attached to an action (a re-inspection recorded at /actions, a close with its evidence): the
        # action's event names the device, the ref names the event as "<hazard id>:<seq>"
        select(HazardEvent.device_id.label("device_id"), PhotoRef.sha256).select_from(PhotoRef)
        .join(HazardEvent, (HazardEvent.hazard_id == PhotoRef.hazard_id) & (PhotoRef.record_kind == "action")
              & (PhotoRef.record_id == HazardEvent.hazard_id.concat(":").concat(sa.cast(HazardEvent.seq, sa.String))))
        .where(missing, HazardEvent.device_id.in_(device_ids)),
    ).subquery()
    rows = session.execute(select(held.c.device_id, sa.func.count()).group_by(held.c.device_id)).all()
    return {dev: n for dev, n in rows}


def device_health(session: Session, scope: Scope, now: datetime, stale_days: float) -> list[DeviceHealthPublic]:
    rows = session.execute(
        select(Device, User).join(User, User.id == Device.user_id).join(OrgUnit, OrgUnit.id == User.org_unit_id)
        .where(scope.staff_clause(), User.is_active.is_(True))
    ).all()
    pending = _pending_media_by_device(session, [d.id for d, _ in rows]) if rows else {}
    out = []
    for d, u in rows:
        syncs = [t for t in (d.last_push_at, d.last_pull_at) if t is not None]
        last = max(syncs) if syncs else None
        days = round((now - last).total_seconds() / 86400, 1) if last else None
        out.append(DeviceHealthPublic(
            device_id=d.id, name=d.name, user_id=u.id, username=u.username, display_name=u.display_name,
            org_unit_id=u.org_unit_id, last_push_at=d.last_push_at, last_pull_at=d.last_pull_at, last_sync_at=last,
            days_since_sync=days, stale=d.revoked_at is None and (last is None or now - last > timedelta(days=stale_days)),
            pending_media=pending.get(d.id, 0), clock_offset_s=d.clock_offset_s,
            clock_flagged=clock_flagged(d.clock_offset_s), app_version=d.app_version, revoked=d.revoked_at is not None,
        ))
    # most worrying first: stale, then holding photos, then longest silent
    out.sort(key=lambda h: (not h.stale, -h.pending_media, h.last_sync_at or datetime.min.replace(tzinfo=now.tzinfo)))
    return out
