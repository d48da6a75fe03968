import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.auth import service as auth_service
from app.auth.deps import CurrentPrincipal, SettingsDep, bearer, require_bearer
from app.auth.models import Device, User
from app.auth.scope import Scope, scope_for
from app.db import Database, SessionDep
from app.errors import Invalid, error_body
from app.referrals.deps import NowDep
from app.referrals.policy import Policy
from app.referrals.service import Rules, calendar_for_writing, load_calendar
from app.sync import health, service
from app.auth.models import Role
from app.sync.schemas import MAX_OP_ID, DeviceHealthPublic, Op, OpError, OpResult, PushRequest, PushResponse

router = APIRouter(prefix="/api/v1/sync", tags=["sync"])

# One push at a time per worker process. A push is Python work that holds the GIL; two in one process
# share one CPU, and the one holding SQLite's write lock (or PostgreSQL's feed lock) then runs at half
# speed while every other writer waits for it. Serialised here, one worker's push writes while
# another worker's plans, each on a CPU of its own: +30 % ops/s on SQLite, +10 % on PostgreSQL
# (bench/push_bench.py, 2 workers, 4 phones). Parallelism comes from more worker processes.
_ONE_PUSH_PER_PROCESS = threading.Lock()


@dataclass(frozen=True)
class Pusher:
    """Who is pushing, and what the plan needs to know before any op is read."""
    user: User
    device: Device
    scope: Scope
    policy: Policy
    token_id: str | None = None  # checked again on the write transaction (health.record_push)


def pusher(request: Request, settings: SettingsDep,
           creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Pusher:
    """The token and the scope, in one short read session and one worker-thread hop (the calendar is read where
    the push is planned: on the writer, or on the read transaction that plans a larger batch ahead of it).

    One dependency rather than the session, the principal and the rules as three: each was a thread hop
    (a session dependency two). Six hops in all were ~9 % of a one-op push's instructions
    (bench/instructions.py). The push reads its body only after it: a stranger with a bad token gets
    401, never a 422 that describes the body, and their bytes are not parsed.
    """
    token = require_bearer(creds)
    with request.app.state.db.session() as session:
        user, device, tok, unit = auth_service.authenticate(session, settings, token)
        return Pusher(user=user, device=device, scope=scope_for(session, user, unit), policy=request.app.state.policy,
                      token_id=tok.id)


def _is_json(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def parse_push(raw: bytes) -> PushRequest:
    """The push body, parsed and checked in one pass by pydantic's JSON parser; 422 naming each bad field."""
    try:
        return PushRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":
            try:
                cleaned = _with_lone_surrogates_replaced(raw)
            except (ValueError, RecursionError):  # not JSON after all: the first answer stands
                cleaned = None
            if cleaned is not None:
                try:
                    return PushRequest.model_validate(cleaned)
                except ValidationError as again:  # JSON, but not a push: name what is wrong with it
                    errors = again.errors(include_url=False)
        # the same error as for a body FastAPI parses itself ("body" first in each location)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _with_lone_surrogates_replaced(raw: bytes) -> Any:
    """A body pydantic's parser refused, read again by the standard library's, with every lone UTF-16
    surrogate in its text replaced by U+FFFD. A phone that cuts a text in the middle of an emoji sends one
    (JSON.stringify writes it as "\\ud83d"), which pydantic refuses: the whole batch was a 422, on every
    re-send, for ever, for half a character of one description. The record is kept, with the mark every
    UTF-8 encoder puts there; a lone surrogate in an id then fails that op's own check, as any bad id does."""
    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return _LONE_SURROGATE.sub("\ufffd", value)
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        return value
    return clean(json.loads(raw, parse_constant=_refuse_constant))


# The body is read by hand, after `pusher`: a declared body parameter is read and parsed by FastAPI
# before any dependency runs, so a stranger's bytes were parsed (and a non-JSON body got a 422 that
# described it) before the token was looked at. Documented from the model all the same.
_PUSH_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/PushRequest"}}}}}


@router.post("/push", response_model=PushResponse, openapi_extra=_PUSH_BODY,
             responses={413: {"description": "more than 500 ops (`batch_too_large`), or a body over "
                                             "FIREGRID_MAX_PUSH_BYTES (`too_large`)"},
                        422: {"description": "the body is not a push (`validation_error`, naming each field), or "
                                             "`device_mismatch`"}})
async def push(request: Request, who: Annotated[Pusher, Depends(pusher)], now: NowDep) -> Response:
    """Apply a batch of field ops for the authenticated device: one result per op, in order.

    Validation and routing run on a read transaction; the rows are then written in one short write
    transaction that commits before the answer leaves (an acknowledged op is durable)."""
    if not _is_json(request.headers.get("content-type", "")):  # as FastAPI holds declared JSON bodies to it
        raise RequestValidationError([{"type": "content_type", "loc": ("body",),
                                       "msg": "send the push as JSON (Content-Type: application/json)"}])
    try:
        raw = await request.body()  # bounded by app.main.BodyLimit (413 past it)
    except ClientDisconnect:  # the phone went away mid-push (a weak link): nothing was read, nobody hears this
        return JSONResponse(error_body("client_disconnected", "push interrupted"), status_code=400)
    # parsing, the whole push and the answer's JSON in one worker-thread hop (a sync endpoint would
    # take two: its return value is validated against the response model in another)
    answer = await run_in_threadpool(_push, request.app.state.db, who, raw, now)
    return Response(answer, media_type="application/json")


def _push(db: Database, who: Pusher, raw: bytes, now: datetime) -> bytes:
    body = parse_push(raw)
    if body.device_id and body.device_id not in (who.device.id, who.device.device_key):
        raise Invalid("device_id: does not match the device this token was issued to", code="device_mismatch",
                      field="device_id")
    offset = health.clock_offset(body.sent_at, now)
    service.check_batch_size(body.ops)
    ops = [op for op in body.ops if op.op_id is not None]  # the others are refused as bad_op_id (Op.op_id)
    with _ONE_PUSH_PER_PROCESS:
        rules, plan = _plan_ahead(db, who, ops, now) if service.plans_ahead(ops) else (None, None)
        with db.session(write=True) as writer:
            writer.info["origin_device_id"] = who.device.id  # the change feed does not echo a phone's own writes
            calendar = None if rules is not None else calendar_for_writing(writer)
            ctx = service.PushContext(session=writer, rules=rules or Rules(policy=who.policy, calendar=calendar),
                                      scope=who.scope, user=who.user, device=who.device, now=now)
            results = service.apply_push(ctx, ops, plan, writer, calendar=calendar)
            health.record_push(writer, who.device.id, now, offset, body.app_version, who.token_id)
            writer.commit()
    return PushResponse(results=_in_order(body.ops, results), server_time=now, clock_offset_s=offset,
                        clock_flagged=health.clock_flagged(offset)).model_dump_json().encode()


_BAD_OP_ID = OpResult(op_id=None, status="rejected", error=OpError(
    code="bad_op_id", field="op_id", message=f"op_id: missing, or not text of 1 to {MAX_OP_ID} characters (an op is an "
                                             "object with an id of its own, a client-made UUID); this op was not applied"))


def _in_order(ops: list[Op], results: list[OpResult]) -> list[OpResult]:
    """One result per op, in order: those of the ops applied, and bad_op_id in the place of each of the others."""
    applied = iter(results)
    return [next(applied) if op.op_id is not None else _BAD_OP_ID for op in ops]


def _plan_ahead(db: Database, who: Pusher, ops: list, now: datetime) -> tuple[Rules, "service._RunPlan | None"]:
    """The rules a batch is planned with, and its plan, on a read transaction. It begins inside the gate
    (waiting for the gate with it open would pin the WAL, no checkpoint passing its snapshot, and the plan
    should see what committed meanwhile) and ends before the write transaction begins."""
    with db.session() as session:
        rules = Rules(policy=who.policy, calendar=load_calendar(session))
        ctx = service.PushContext(session=session, rules=rules, scope=who.scope, user=who.user, device=who.device,
                                  now=now)
        return rules, service.plan_push(ctx, ops)


devices_router = APIRouter(prefix="/api/v1/devices", tags=["sync"])


@devices_router.get("/health", response_model=list[DeviceHealthPublic])
def device_health(p: CurrentPrincipal, session: SessionDep, now: NowDep,
                  stale_days: Annotated[float, Query(gt=0, le=365)] = 3):
    """The phones of the caller's area: which have not synced for `stale_days`, which still hold
    photos back, whose clocks are off. Most worrying first."""
    p.require_role(Role.town_office, Role.police_station, Role.brigade, Role.admin)
    return health.device_health(session, p.scope, now, stale_days)
