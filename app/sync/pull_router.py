"""GET /api/v1/sync/pull: HTTP only; the work is in app.sync.pull."""

import logging
from datetime import datetime, timedelta
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from app.auth.deps import CurrentPrincipal
from app.auth.models import Device
from app.db import Database, SessionDep
from app.errors import HEAD_AS_GET
from app.referrals.deps import NowDep
from app.sync import pull as service

router = APIRouter(prefix="/api/v1/sync", tags=["sync"])
log = logging.getLogger("firegrid.sync")

# A phone may pull every few seconds; its "last seen" needs no finer grain than this.
LAST_SEEN_GRAIN = timedelta(seconds=60)


@router.get("/pull", response_model=service.PullResponse)
def pull(
    request: Request,
    p: CurrentPrincipal,
    session: SessionDep,
    now: NowDep,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
    limit: Annotated[int, Query(ge=1)] = service.DEFAULT_LIMIT,
):
    """What changed in the caller's scope since `cursor` (no cursor: the whole scope), at most `limit`
    (≤ 1000) changes a page; follow `cursor` while `more`. `410`: start over without a cursor."""
    page = service.pull(session, p.scope, request.app.state.policy, device_id=p.device.id, cursor=cursor,
                        limit=limit)
    # throttled by the last pull, not by last_seen_at: a push or a login just before sets that, and a phone
    # that syncs by pushing then pulling never had its pull recorded
    last = p.device.last_pull_at
    # once the answer is sent (the read session has ended by then): the phone does not wait for the write
    record = (BackgroundTask(_record_pull, request.app.state.db, p.device.id, now)
              if (last is None or now - last >= LAST_SEEN_GRAIN) and not request.scope.get(HEAD_AS_GET) else None)
    # the changes are JSON-ready dicts already: skip re-validating every record against the model
    return JSONResponse({"changes": page.changes, "cursor": page.cursor, "more": page.more}, background=record)


def _record_pull(db: Database, device_id: str, now: datetime) -> None:
    """In its own short write transaction after the read: a GET never upgrades to a write on SQLite
    (which fails when another writer committed meanwhile), and a failure here never fails the pull."""
    values = {"last_seen_at": now, "last_pull_at": now}
    try:
        with db.session(write=True) as session:
            session.execute(sa.update(Device).where(Device.id == device_id).values(**values))
            session.commit()
    except sa.exc.SQLAlchemyError:
        log.warning("could not record the pull of device %s", device_id, exc_info=True)
