"""Push: apply a batch of field ops, each at most once (keyed by op_id) and each all-or-nothing.

One bad op is rejected with a code and a message; the rest of the batch applies. A re-sent op gets
`duplicate` with the result it got the first time. The batch commits as one transaction before the
response leaves, so an acknowledged op is durable and an unacknowledged one is simply re-sent.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session, select

from app.audit.service import Actor
from app.auth.models import Device, User
from app.auth.scope import Scope
from app.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from app.hazards.models import Hazard, Reinspection
from app.hazards.service import may_act, visible_hazard
from app.inspections.models import Inspection
from app.places.models import Place, PlaceCreate, PlaceUpdate
from app.places import service as places
from app.referrals.lifecycle import Action
from app.referrals.service import HazardReport, ReinspectionReport, Rules, record_field_reinspection, report_hazard
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

    @property
    def actor(self) -> Actor:
        return Actor(self.user.id, self.user.org_unit_id, self.device.id)


def push(ctx: PushContext, ops: list[Op]) -> list[OpResult]:
    if len(ops) > MAX_OPS:
        raise BatchTooLarge(f"a batch holds at most {MAX_OPS} ops; this one has {len(ops)}: split it", max_ops=MAX_OPS)
    session = ctx.session
    ids = list({op.op_id for op in ops})
    done: dict[str, dict] = dict(session.execute(select(SyncOp.op_id, SyncOp.result).where(SyncOp.op_id.in_(ids))).all()) if ids else {}
    results: list[OpResult] = []
    for op in ops:
        if op.op_id in done:
            results.append(OpResult(op_id=op.op_id, status="duplicate", result=done[op.op_id]))
            continue
        savepoint = session.begin_nested()
        try:
            result = apply_op(ctx, op)
            session.add(SyncOp(op_id=op.op_id, type=op.type, user_id=ctx.user.id, device_id=ctx.device.id,
                               result=result, applied_at=ctx.now))
            session.flush()
            savepoint.commit()
        except DomainError as exc:
            savepoint.rollback()
            results.append(_rejected(op, exc.code, exc.message, exc.extra.get("field")))
            continue
        except ValidationError as exc:
            savepoint.rollback()
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            results.append(_rejected(op, "validation_error", f"data.{field}: {first['msg']}", f"data.{field}"))
            continue
        except sa.exc.IntegrityError:
            savepoint.rollback()
            # another phone (or this one, retrying in parallel) applied the same op_id meanwhile
            prior = session.execute(select(SyncOp.result).where(SyncOp.op_id == op.op_id)).scalar_one_or_none()
            if prior is not None:
                done[op.op_id] = prior
                results.append(OpResult(op_id=op.op_id, status="duplicate", result=prior))
            else:
                results.append(_rejected(op, "conflict", "a record with one of these ids already exists"))
            continue
        done[op.op_id] = result
        results.append(OpResult(op_id=op.op_id, status="applied", result=result))
    return results


def _rejected(op: Op, code: str, message: str, field: str | None = None) -> OpResult:
    return OpResult(op_id=op.op_id, status="rejected", error=OpError(code=code, message=message, field=field))


def apply_op(ctx: PushContext, op: Op) -> dict[str, Any]:
    model = OP_TYPES.get(op.type)
    if model is None:
        raise Invalid(f"unknown op type {op.type!r}; known: {', '.join(OP_TYPES)}", code="unknown_op_type", field="type")
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
    place = ctx.session.get(Place, place_id)
    if place is None or not ctx.scope.sees_place(place):
        raise NotFound(f"data.{field}: no premises {place_id} in your grids", code="unknown_place", field=f"data.{field}")
    return place


def _new_hazard(ctx: PushContext, data: HazardReportData, place: Place, inspection_id: str | None, prefix: str) -> dict:
    if data.category not in ctx.rules.policy.category_codes:
        raise Invalid(f"{prefix}category: unknown category {data.category!r}", code="unknown_category",
                      field=f"{prefix}category")
    _not_future(ctx, data.found_at, prefix.removeprefix("data.") + "found_at")
    h = report_hazard(
        ctx.session, ctx.rules,
        HazardReport(id=data.id, place_id=place.id, category=data.category, severity=data.severity,
                     violation=data.violation, description=data.description, found_at=data.found_at,
                     photos=tuple(data.photos), inspection_id=inspection_id or data.inspection_id),
        place, ctx.actor, ctx.now,
    )
    return {"hazard_id": h.id, "status": h.status, "tier": h.tier, "holder_org_unit_id": h.holder_unit_id,
            "rule": h.rule, "ack_due": h.ack_due.isoformat(), "duplicate_of_id": h.duplicate_of_id}


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
    for i, hz in enumerate(data.hazards):
        if hz.place_id != place.id:
            raise Invalid(f"data.hazards.{i}.place_id: a hazard of this inspection must be on its premises",
                          code="place_mismatch", field=f"data.hazards.{i}.place_id")
        hazards.append(_new_hazard(ctx, hz, place, data.id, f"data.hazards.{i}."))
    return {"inspection_id": data.id, "hazards": hazards}


def _hazard_reinspect(ctx: PushContext, data: HazardReinspectData) -> dict:
    try:
        h = visible_hazard(ctx.session, ctx.scope, data.hazard_id)
    except NotFound:
        raise NotFound(f"data.hazard_id: no hazard {data.hazard_id} in your grids", code="unknown_hazard",
                       field="data.hazard_id") from None
    if not may_act(ctx.scope, h, Action.RECORD_REINSPECTION):
        raise Forbidden("only the grid worker of the premises or the holder re-inspects", code="not_allowed")
    _not_future(ctx, data.at, "at")
    if ctx.session.get(Reinspection, data.id) is not None:
        raise Conflict(f"data.id: re-inspection {data.id} already exists", code="reinspection_exists", field="data.id")
    h, outcome = record_field_reinspection(
        ctx.session, ctx.rules,
        ReinspectionReport(id=data.id, hazard_id=data.hazard_id, rectified=data.rectified, note=data.note,
                           at=data.at, photos=tuple(data.photos)),
        ctx.actor, ctx.now,
    )
    return {"reinspection_id": data.id, "hazard_id": h.id, "outcome": outcome, "status": h.status}


def _place_upsert(ctx: PushContext, data: PlaceUpsertData) -> dict:
    ctx.scope.require_place_editor()
    existing = ctx.session.get(Place, data.id)
    fields = data.model_dump(exclude={"id"})
    if existing is None:
        place = places.create_place(ctx.session, ctx.scope, PlaceCreate(id=data.id, **fields))
    else:
        if not ctx.scope.sees_place(existing):
            raise NotFound(f"data.id: no premises {data.id} in your grids", code="unknown_place", field="data.id")
        place = places.update_place(ctx.session, ctx.scope, existing, PlaceUpdate(**fields))
    return {"place_id": place.id, "grid_id": place.grid_id}
