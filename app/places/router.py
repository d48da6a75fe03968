from typing import Annotated

from fastapi import APIRouter, Query

from app.audit.service import Actor
from app.auth.deps import CurrentPrincipal
from app.auth.scope import visible_place
from app.db import SessionDep
from app.places import service
from app.referrals.deps import NowDep, RulesDep
from app.places.models import PLACE_CLASS_NAMES, PlaceClass, PlaceCreate, PlacePage, PlacePublic, PlaceUpdate

router = APIRouter(prefix="/api/v1", tags=["places"])


@router.get("/place-classes")
def place_classes():
    return [{"code": c.value, "name_zh": zh, "name_en": en} for c, (zh, en) in PLACE_CLASS_NAMES.items()]


@router.get("/places", response_model=PlacePage)
def list_places(
    p: CurrentPrincipal,
    session: SessionDep,
    q: Annotated[str | None, Query(max_length=100)] = None,
    grid_id: str | None = None,
    place_class: PlaceClass | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
):
    rows, next_cursor = service.list_places(session, p.scope, q=q, grid_id=grid_id, place_class=place_class,
                                            cursor=cursor, limit=limit)
    return PlacePage(items=[PlacePublic.of(r) for r in rows], next_cursor=next_cursor)


@router.post("/places", response_model=PlacePublic, status_code=201)
def create_place(body: PlaceCreate, p: CurrentPrincipal, session: SessionDep, now: NowDep):
    p.scope.require_place_editor()
    service.require_whole_position(body.lat, body.lon)
    return PlacePublic.of(service.create_place(session, p.scope, body, now=now))


@router.get("/places/{place_id}", response_model=PlacePublic)
def get_place(place_id: str, p: CurrentPrincipal, session: SessionDep):
    return PlacePublic.of(visible_place(session, p.scope, place_id))


@router.patch("/places/{place_id}", response_model=PlacePublic)
def update_place(place_id: str, body: PlaceUpdate, p: CurrentPrincipal, session: SessionDep, now: NowDep,
                 rules: RulesDep):
    """Change a premises. Moved to another town or police beat, its hazards pass to the bodies there
    (`relocated` on each one's timeline); reclassed to a class a higher tier supervises, those below that
    tier go up to it (`reclassified`); 422 `routing_failed` if the new location or class lacks a body that
    must take an open one over. A police station or the brigade may change the class only; a class a
    lower tier supervises only the body that supervises the premises now, one above it, or the admin
    (403 `not_allowed`)."""
    place = visible_place(session, p.scope, place_id)  # who may change what: service.update_place
    return PlacePublic.of(service.update_place(session, p.scope, place, body, rules=rules, now=now,
                                               actor=Actor(p.user.id, p.user.org_unit_id, p.device.id),
                                               whole_position=True))
