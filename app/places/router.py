from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from app.audit.service import Actor
from app.auth.deps import CurrentPrincipal
from app.auth.scope import visible_place
from app.db import SessionDep
from app.conditional import etag_header, not_modified, tag_versions, versions_named
from app.errors import PreconditionFailed
from app.places import service
from app.referrals.deps import NowDep, RulesDep
from app.places.models import (PLACE_CLASS_NAMES, Place, PlaceClass, PlaceCreate, PlacePage, PlacePublic,
                               PlaceUpdate)

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


# The ETag is strong and the version alone, "p-<version>": the answer is the row and nothing else (no clock,
# nothing of the caller's), and every change of the row bumps its version (service.update_place), the one
# phones name as base_version. If-Match compares it; If-None-Match compares the whole tag, which is the same.
_version_of = tag_versions(r"p-([0-9]{1,18})")
_ETAG_HEADER = etag_header('the premises\' entity tag, "p-<version>": send it back as If-Match with a change, or as '
                           "If-None-Match to poll")


def _etag(place: Place) -> str:
    return f'"p-{place.version}"'


@router.get("/places/{place_id}", response_model=PlacePublic,
            responses={200: {"headers": _ETAG_HEADER},
                       304: {"description": "If-None-Match named the current ETag: the copy the caller holds is "
                                            "the answer", "headers": _ETAG_HEADER}})
def get_place(place_id: str, p: CurrentPrincipal, session: SessionDep, response: Response,
              if_none_match: Annotated[list[str] | None, Header(description="an ETag of the premises: 304 while it is "
                                                                       "still the current one")] = None):
    place = visible_place(session, p.scope, place_id)
    etag = _etag(place)
    if not_modified(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return PlacePublic.of(place)


@router.patch("/places/{place_id}", response_model=PlacePublic,
              responses={200: {"headers": _ETAG_HEADER},
                         412: {"description": "If-Match named a version the premises is no longer at "
                                              "(`precondition_failed`, with `current_version`): someone changed it "
                                              "since; nothing was changed", "headers": _ETAG_HEADER}})
def update_place(place_id: str, body: PlaceUpdate, p: CurrentPrincipal, session: SessionDep, now: NowDep,
                 rules: RulesDep, response: Response,
                 if_match: Annotated[list[str] | None, Header(description="the ETag the change was made on (or "
                                                                          "*): 412 if the premises has changed since")]
                 = None):
    """Change a premises. Moved to another town or police beat, its hazards pass to the bodies there
    (`relocated` on each one's timeline); reclassed to a class a higher tier supervises, those below that
    tier go up to it (`reclassified`); 422 `routing_failed` if the new location or class lacks a body that
    must take an open one over. A police station or the brigade may change the class only (403 `forbidden`); a
    class a lower tier supervises only the body that supervises the premises now, one above it, or the admin
    (403 `not_allowed`)."""
    place = visible_place(session, p.scope, place_id)  # who may change what: service.update_place
    try:
        place = service.update_place(
            session, p.scope, place, body, rules=rules, now=now, actor=Actor(p.user.id, p.user.org_unit_id, p.device.id),
            whole_position=True,
            # read after the 404 and the 403s, whatever the header says
            if_version=None if if_match is None else lambda: versions_named(if_match, _version_of))
    except PreconditionFailed as exc:
        exc.extra["headers"] = {"ETag": _etag(place)}
        raise
    response.headers["ETag"] = _etag(place)
    return PlacePublic.of(place)
