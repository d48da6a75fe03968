from fastapi import APIRouter, Request

from app.auth.deps import CurrentPrincipal
from app.db import SessionDep
from app.errors import Invalid
from app.referrals.deps import NowDep, RulesDep
from app.sync import service
from app.sync.schemas import PushRequest, PushResponse

router = APIRouter(prefix="/api/v1/sync", tags=["sync"])


@router.post("/push", response_model=PushResponse)
def push(body: PushRequest, request: Request, p: CurrentPrincipal, session: SessionDep, rules: RulesDep, now: NowDep):
    """Apply a batch of field ops for the authenticated device: one result per op, in order.

    Validation and routing run on a read transaction; the rows are then written in one short write
    transaction that commits before the answer leaves (an acknowledged op is durable)."""
    if body.device_id and body.device_id not in (p.device.id, p.device.device_key):
        raise Invalid("device_id: does not match the device this token was issued to", code="device_mismatch",
                      field="device_id")
    ctx = service.PushContext(session=session, rules=rules, scope=p.scope, user=p.user, device=p.device, now=now)
    plan = service.plan_push(ctx, body.ops)
    with request.app.state.db.session(write=True) as writer:
        writer.info["origin_device_id"] = p.device.id  # the change feed does not echo a phone's own writes
        results = service.apply_push(ctx, body.ops, plan, writer)
        writer.commit()
    return PushResponse(results=results)


push.opens_own_write_transaction = True
