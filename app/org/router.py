from fastapi import APIRouter
from sqlmodel import select

from app.auth.deps import CurrentPrincipal
from app.db import SessionDep
from app.errors import NotFound
from app.org.models import OrgUnit, OrgUnitPublic, UnitKind

router = APIRouter(prefix="/api/v1/org", tags=["org"])


@router.get("/units", response_model=list[OrgUnitPublic])
def list_units(p: CurrentPrincipal, session: SessionDep, kind: UnitKind | None = None):
    q = select(OrgUnit).where(p.scope.unit_clause())
    if kind:
        q = q.where(OrgUnit.kind == kind)
    return session.exec(q.order_by(OrgUnit.code)).all()


@router.get("/units/{unit_id}", response_model=OrgUnitPublic)
def get_unit(unit_id: str, p: CurrentPrincipal, session: SessionDep):
    unit = session.get(OrgUnit, unit_id)
    if unit is None or not p.scope.sees_unit(unit):
        raise NotFound(f"org unit {unit_id} not found")
    return unit
