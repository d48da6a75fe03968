import threading
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.auth.deps import CurrentPrincipal
from app.db import SessionDep
from app.errors import Invalid
from app.referrals.deps import NowDep, RulesDep
from app.sync import health, service
from app.auth.models import Role
from app.sync.schemas import DeviceHealthPublic, PushRequest, PushResponse

router = APIRouter(prefix="/api/v1/sync", tags=["sync"])

# One push at a time per worker process. A push is Python work that holds the GIL; two in one process
# share one CPU, and the one holding SQLite's write lock (or PostgreSQL's feed lock) then runs at half
# speed while every other writer waits for it. Serialised here, one worker's push writes while
# another worker's plans, each on a CPU of its own: +30 % ops/s on SQLite, +10 % on PostgreSQL
# (bench/push_bench.py, 2 workers, 4 phones). Parallelism comes from more worker processes.
_ONE_PUSH_PER_PROCESS = threading.Lock()


@router.post("/push", response_model=PushResponse)
def push(body: PushRequest, request: Request, p: CurrentPrincipal, session: SessionDep, rules: RulesDep, now: NowDep):
    """Apply a batch of field ops for the authenticated device: one result per op, in order.

    Validation and routing run on a read transaction; the rows are then written in one short write
    transaction that commits before the answer leaves (an acknowledged op is durable)."""
    if body.device_id and body.device_id not in (p.device.id, p.device.device_key):
        raise Invalid("device_id: does not match the device this token was issued to", code="device_mismatch",
                      field="device_id")
    ctx = service.PushContext(session=session, rules=rules, scope=p.scope, user=p.user, device=p.device, now=now)
    offset = health.clock_offset(body.sent_at, now)
    # End the read transaction authentication began: waiting for the gate with it open would pin the
    # WAL (no checkpoint can pass its snapshot), and the plan should see what committed meanwhile.
    session.commit()
    with _ONE_PUSH_PER_PROCESS:
        plan = service.plan_push(ctx, body.ops)
        session.commit()  # end the read transaction (nothing to commit) before the write one begins
        with request.app.state.db.session(write=True) as writer:
            writer.info["origin_device_id"] = p.device.id  # the change feed does not echo a phone's own writes
            results = service.apply_push(ctx, body.ops, plan, writer)
            health.record_push(writer, p.device.id, now, offset, body.app_version)
            writer.commit()
    return PushResponse(results=results, server_time=now, clock_offset_s=offset,
                        clock_flagged=health.clock_flagged(offset))


push.opens_own_write_transaction = True


devices_router = APIRouter(prefix="/api/v1/devices", tags=["sync"])


@devices_router.get("/health", response_model=list[DeviceHealthPublic])
def device_health(p: CurrentPrincipal, session: SessionDep, now: NowDep,
                  stale_days: Annotated[float, Query(gt=0, le=365)] = 3):
    """The phones of the caller's area: which have not synced for `stale_days`, which still hold
    photos back, whose clocks are off. Most worrying first."""
    p.require_role(Role.town_office, Role.police_station, Role.brigade, Role.admin)
    return health.device_health(session, p.scope, now, stale_days)
