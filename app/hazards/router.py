from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from app.audit.service import Actor
from app.auth.deps import CurrentPrincipal
from app.db import SessionDep
from app.errors import reject_number_as_time
from app.hazards import service
from app.hazards.schemas import ActionRequest, Figures, FiguresRow, HazardDetail, HazardItem, QueuePage
from app.photos.service import register_refs
from app.referrals.deps import NowDep, RulesDep
from app.places.models import PlaceClass
from app.referrals.lifecycle import Action, ActionParams, Status
from app.referrals.service import act

router = APIRouter(prefix="/api/v1", tags=["hazards"])


@router.get("/queue", response_model=QueuePage)
def get_queue(
    p: CurrentPrincipal, session: SessionDep, now: NowDep,
    # enums, so a misspelt filter is a 422 listing what it may be, not an empty queue
    status: Annotated[list[Status] | None, Query()] = None,
    severity: Annotated[str | None, Query(pattern="^(general|major)$")] = None,
    overdue: bool | None = None,
    place_class: PlaceClass | None = None,
    grid_id: str | None = None,
    community_id: str | None = None,
    cc: bool = False,
    listed: bool | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
):
    """The caller's unit's hazards, most urgent first (overdue, then nearest deadline). `cc=true`: the
    hazards the unit is copied on instead of those it holds."""
    rows, nxt = service.queue(session, p.scope, now, statuses=[s.value for s in status or ()], severity=severity,
                              overdue=overdue, place_class=place_class.value if place_class else None,
                              grid_id=grid_id, community_id=community_id, cc=cc, listed=listed, cursor=cursor,
                              limit=limit)
    return QueuePage(items=[service.item(h, place, now) for h, place in rows], next_cursor=nxt)


@router.get("/hazards/{hazard_id}", response_model=HazardDetail)
def get_hazard(hazard_id: str, p: CurrentPrincipal, session: SessionDep, now: NowDep):
    return service.detail(session, p.scope, service.visible_hazard(session, p.scope, hazard_id), now)


@router.post("/hazards/{hazard_id}/actions", response_model=HazardDetail)
def post_action(hazard_id: str, body: ActionRequest, p: CurrentPrincipal, session: SessionDep, now: NowDep,
                rules: RulesDep):
    service.visible_hazard(session, p.scope, hazard_id)  # 404 outside the scope
    action = Action(body.action)
    if action is Action.MERGE:
        service.require_visible_merge_target(session, p.scope, body.merge_into_id)
    h = service.lock_for_action(session, hazard_id, body.merge_into_id if action is Action.MERGE else None)
    service.require_may_act(p.scope, h, action)
    service.require_may_set_deadline(p.scope, h, action, body.deadline)
    params = ActionParams(
        deadline=body.deadline, reason=body.reason, to_unit_id=body.to_unit_id, rectified=body.rectified,
        photos=len(body.photos), override_reason=body.override_reason, merge_into_id=body.merge_into_id,
        note=body.note, **service.dismissal_signoff(p.scope, h, action),
    )
    if body.photos:
        h.photos = list(dict.fromkeys([*(h.photos or []), *body.photos]))
    act(session, rules, h, action, params, Actor(p.user.id, p.user.org_unit_id, p.device.id), now,
        extra={"photos": body.photos} if body.photos else None)
    if body.photos:  # the action event's own number names the record the photos belong to
        register_refs(session, h.id, "action", f"{h.id}:{h.event_seq}", body.photos, added_by=p.user.id,
                      scope=p.scope)
    return service.detail(session, p.scope, h, now)


@router.get("/supervision", response_model=list[HazardItem])
def get_listed_supervision(p: CurrentPrincipal, session: SessionDep, now: NowDep):
    """挂牌督办: open hazards under listed supervision in the caller's area."""
    return [service.item(h, place, now) for h, place in service.listed_supervision(session, p.scope)]


@router.get("/reports/major-hazards", response_model=list[HazardItem])
def get_major_hazards(p: CurrentPrincipal, session: SessionDep, now: NowDep,
                      year: Annotated[int, Query(ge=2000, le=2200)],
                      quarter: Annotated[int, Query(ge=1, le=4)]):
    """The quarterly list of major hazards (重大火灾隐患, seed 004) in the caller's area."""
    return [service.item(h, place, now) for h, place in service.major_hazards_of_quarter(session, p.scope, year, quarter)]


@router.get("/figures", response_model=Figures)
def get_figures(p: CurrentPrincipal, session: SessionDep, now: NowDep,
                unit_id: str | None = None,
                group_by: Annotated[str, Query(pattern="^(tier|town|community|grid|holder)$")] = "tier",
                period_from: Annotated[datetime | None, Query(alias="from"), BeforeValidator(reject_number_as_time)] = None,
                period_to: Annotated[datetime | None, Query(alias="to"), BeforeValidator(reject_number_as_time)] = None):
    start, end = service.parse_period(period_from, period_to, now)
    area, rows, total = service.figures(session, p.scope, now, start, end, unit_id, group_by)
    return Figures(unit_id=area, period_from=start, period_to=end, group_by=group_by,
                   total=FiguresRow(key="total", **total), rows=[FiguresRow(key=k, **v) for k, v in rows])
