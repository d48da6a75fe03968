import hashlib
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from pydantic import BeforeValidator
from sqlmodel import Session

from app.audit.service import Actor
from app.auth.deps import CurrentPrincipal, Principal
from app.db import SessionDep
from app.conditional import etag_header, not_modified, tag_versions, versions_named
from app.errors import PreconditionFailed, reject_number_as_time
from app.hazards import service
from app.hazards.models import Hazard
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


# The ETag is strong and has two parts, "h-<version>.<digest>". The version is what If-Match compares: every
# write to the hazard bumps it, and a write over one the desk has not seen is what If-Match is there to stop.
# The digest, of the whole answer, is what If-None-Match compares: the answer also changes with no write at all
# (a deadline passing turns `overdue`, a photo arriving leaves `photos_pending`, the premises renamed) and
# differs by caller (`allowed_actions`); a tag of the version alone would have a desk polling with
# If-None-Match show "not overdue" for ever after the deadline. Strong, as If-Match compares no weak tag.
_version_of = tag_versions(r"h-([0-9]{1,18})(?:\.[0-9a-f]{0,64})?")  # "h-7" alone too: a script's `version`
_ETAG_HEADER = etag_header('the hazard\'s entity tag, "h-<version>.<digest>": send it back as If-Match with an '
                           "action, or as If-None-Match to poll")


def _etag(d: HazardDetail) -> str:
    return f'"h-{d.version}.{hashlib.sha256(d.model_dump_json().encode()).hexdigest()[:16]}"'


def _detail(session: Session, p: Principal, h: Hazard, now: datetime) -> tuple[HazardDetail, str]:
    d = service.detail(session, p.scope, h, now)
    return d, _etag(d)


@router.get("/hazards/{hazard_id}", response_model=HazardDetail,
            responses={200: {"headers": _ETAG_HEADER},
                       304: {"description": "If-None-Match named the current ETag: the copy the caller holds is "
                                            "the answer", "headers": _ETAG_HEADER}})
def get_hazard(hazard_id: str, p: CurrentPrincipal, session: SessionDep, now: NowDep, response: Response,
               if_none_match: Annotated[list[str] | None, Header(description="an ETag of the hazard: 304 while it is "
                                                                        "still the current one")] = None):
    d, etag = _detail(session, p, service.visible_hazard(session, p.scope, hazard_id), now)
    if not_modified(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return d


@router.post("/hazards/{hazard_id}/actions", response_model=HazardDetail,
             responses={200: {"headers": _ETAG_HEADER},
                        412: {"description": "If-Match named a version the hazard is no longer at "
                                             "(`precondition_failed`, with `current_version`): someone acted on it "
                                             "since; nothing was changed", "headers": _ETAG_HEADER}})
def post_action(hazard_id: str, body: ActionRequest, p: CurrentPrincipal, session: SessionDep, now: NowDep,
                rules: RulesDep, response: Response,
                if_match: Annotated[list[str] | None, Header(description="the ETag the action was decided on (or "
                                                                         "*): 412 if the hazard has changed since")] = None):
    service.visible_hazard(session, p.scope, hazard_id)  # 404 outside the scope
    action = Action(body.action)
    if action is Action.MERGE:
        service.require_visible_merge_target(session, p.scope, body.merge_into_id)
    h = service.lock_for_action(session, hazard_id, body.merge_into_id if action is Action.MERGE else None)
    service.require_may_act(p.scope, h, action)
    service.require_may_set_deadline(p.scope, h, action, body.deadline)
    # after the 404 and the 403s, whatever the header says; on the row as locked (PostgreSQL: FOR UPDATE; SQLite:
    # the request's write transaction holds the database from its start): a second desk sending the same
    # If-Match waits here for the first to commit, then sees its version
    expected = versions_named(if_match, _version_of)
    if expected is not None and h.version not in expected:
        raise PreconditionFailed(f"hazard {h.id} has changed since you read it: it is at version {h.version} now; "
                                 "read it again before you act", current_version=h.version,
                                 headers={"ETag": _detail(session, p, h, now)[1]})
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
    d, etag = _detail(session, p, h, now)
    response.headers["ETag"] = etag
    return d


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
