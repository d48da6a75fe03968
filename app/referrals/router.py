"""Reference data of the referral chain: categories, the policy in force, working-day overrides."""

from datetime import date

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, field_validator
from sqlmodel import select

from app.auth.deps import CurrentPrincipal
from app.audit.service import Actor
from app.auth.models import Role
from app.db import SessionDep
from app.errors import reject_nul, reject_number_as_date
from app.referrals.calendar import LOCAL_TZ, package_last_year, years_without_schedule
from app.referrals.models import WorkdayOverride
from app.referrals.service import save_overrides

router = APIRouter(prefix="/api/v1", tags=["referrals"])


def _category(policy, c, **marks) -> dict:
    return {"code": c.code, "name_zh": c.name_zh, "name_en": c.name_en,
            "default_rectify_workdays": policy.rectify_days(c.code), **marks}


@router.get("/categories")
def categories(request: Request, p: CurrentPrincipal):
    """The categories a hazard is reported under now (what phones and forms offer). Retired ones are at
    /categories/retired: this list keeps its shape, and an old client never offers a retired category."""
    policy = request.app.state.policy
    return [_category(policy, c) for c in policy.categories]


@router.get("/categories/retired")
def retired_categories(request: Request, p: CurrentPrincipal):
    """The categories the policy retired (``[[retired_categories]]``): no longer offered, still accepted in
    reports captured before, and the labels of the hazards filed under them. Each in the fields of
    /categories, with ``retired: true`` and the policy version that retired it (the one in force)."""
    policy = request.app.state.policy
    return [_category(policy, c, retired=True, policy_version=policy.version) for c in policy.retired_categories]


@router.get("/policy")
def policy_summary(request: Request, p: CurrentPrincipal):
    """The routing policy in force: its version and rules, so anyone can see why hazards go where they go."""
    policy = request.app.state.policy
    return {"version": policy.version, "ack_workdays": policy.ack_workdays, "ack_hours": policy.ack_hours,
            "order_workdays": policy.order_workdays, "major_order_workdays": policy.major_order_workdays,
            "reinspection_workdays": policy.reinspection_workdays,
            "rules": [r.model_dump() for r in policy.rules]}


class OverridePublic(BaseModel):
    day: date
    is_workday: bool
    note: str = Field(default="", max_length=200)


class OverrideIn(OverridePublic):
    # a 422 naming the field, on SQLite as on PostgreSQL (what comes in only: a note stored before is shown)
    _no_nul = field_validator("note")(reject_nul)
    _not_a_number = field_validator("day", mode="before")(reject_number_as_date)


@router.get("/calendar/status")
def calendar_status(request: Request, p: CurrentPrincipal, session: SessionDep):
    """Which years have a holiday schedule. A year listed in `missing_years` counts Monday–Friday less the
    statutory holidays (元旦, 春节, 清明, 劳动节, 端午, 中秋, 国庆 and their make-up days) until an admin adds
    the year's schedule, with its bridging days and adjusted workdays (调休), with PUT /calendar/overrides."""
    days = session.exec(select(WorkdayOverride.day)).all()
    today = request.app.state.clock().astimezone(LOCAL_TZ).date()
    return {"package_last_year": package_last_year(), "override_years": sorted({d.year for d in days}),
            "missing_years": years_without_schedule(days, today)}


@router.get("/calendar/overrides", response_model=list[OverridePublic])
def list_overrides(p: CurrentPrincipal, session: SessionDep):
    return session.exec(select(WorkdayOverride).order_by(WorkdayOverride.day)).all()


RETIMED_HEADER = "X-Firegrid-Retimed"


@router.put("/calendar/overrides", response_model=list[OverridePublic])
def put_overrides(body: list[OverrideIn], p: CurrentPrincipal, session: SessionDep, request: Request,
                  response: Response):
    """Admins add the holidays and adjusted workdays (调休) of a year the calendar package does not know yet.
    The running clocks counted in working days across a day that changed are counted again in the same
    transaction (event ``clocks_retimed`` on each hazard whose deadline moved); the header
    ``X-Firegrid-Retimed`` says how many hazards that was. The body is the list of overrides, as ever."""
    p.require_role(Role.admin)
    retimed = save_overrides(session, [(o.day, o.is_workday, o.note) for o in body],
                             actor=Actor(p.user.id, p.user.org_unit_id, p.device.id), now=request.app.state.clock())
    response.headers[RETIMED_HEADER] = str(len(retimed))
    return session.exec(select(WorkdayOverride).order_by(WorkdayOverride.day)
                        .execution_options(populate_existing=True)).all()
