"""Device health: which phones have not synced, how far their clocks are off, and how many photos
they still hold back. Data stuck on a phone is the commonest way field records are lost."""

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from app.auth.models import Device, User
from app.auth.scope import Scope
from app.hazards.models import Hazard, Reinspection
from app.org.models import OrgUnit
from app.photos.models import Blob, PhotoRef
from app.sync.schemas import DeviceHealthPublic

# A phone clock further off than this is flagged: its times stay on the record as data, nothing
# is ordered or timed by them.
CLOCK_TOLERANCE = timedelta(minutes=10)


def clock_offset(sent_at: datetime | None, now: datetime) -> float | None:
    return None if sent_at is None else round((sent_at - now).total_seconds(), 1)


def clock_flagged(offset_s: float | None) -> bool:
    return offset_s is not None and abs(offset_s) > CLOCK_TOLERANCE.total_seconds()


def record_push(session: Session, device_id: str, now: datetime, offset_s: float | None, app_version: str | None) -> None:
    values: dict = {"last_push_at": now, "last_seen_at": now}
    if offset_s is not None:
        values["clock_offset_s"] = offset_s
    if app_version:
        values["app_version"] = app_version
    session.execute(_device_update(tuple(values)), {**values, "device": device_id})


_DEVICE_UPDATES: dict[tuple[str, ...], sa.Update] = {}


def _device_update(columns: tuple[str, ...]) -> sa.Update:
    """UPDATE devices SET <columns> for one device, built once per set of columns (every push runs one)."""
    stmt = _DEVICE_UPDATES.get(columns)
    if stmt is None:
        table = Device.__table__
        stmt = _DEVICE_UPDATES[columns] = (sa.update(table).where(table.c.id == sa.bindparam("device"))
                                           .values({c: sa.bindparam(c) for c in columns}))
    return stmt


def _pending_media_by_device(session: Session, device_ids: list[str]) -> dict[str, int]:
    """Photos a device's records name that never arrived."""
    missing = ~sa.exists().where(Blob.sha256 == PhotoRef.sha256)
    counts: dict[str, int] = {}
    for device_col, join in (
        (Hazard.reporter_device_id, (Hazard, (Hazard.id == PhotoRef.record_id) & (PhotoRef.record_kind == "hazard"))),
        (Reinspection.device_id, (Reinspection, (Reinspection.id == PhotoRef.record_id) & (PhotoRef.record_kind == "reinspection"))),
    ):
        rows = session.execute(
            select(device_col, sa.func.count()).select_from(PhotoRef).join(*join)
            .where(missing, device_col.in_(device_ids)).group_by(device_col)
        ).all()
        for dev, n in rows:
            counts[dev] = counts.get(dev, 0) + n
    return counts


def device_health(session: Session, scope: Scope, now: datetime, stale_days: float) -> list[DeviceHealthPublic]:
    rows = session.execute(
        select(Device, User).join(User, User.id == Device.user_id).join(OrgUnit, OrgUnit.id == User.org_unit_id)
        .where(scope.unit_clause(), User.is_active.is_(True))
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
