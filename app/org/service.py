"""Building and reading the unit tree."""

from sqlmodel import Session, select

from app.errors import Invalid, NotFound
from app.org.models import PARENT_KINDS, OrgUnit, UnitKind


def create_unit(
    session: Session,
    *,
    code: str,
    name: str,
    kind: UnitKind,
    parent: OrgUnit | None,
    enforcement_power: bool = False,
    sector: str | None = None,
    id: str | None = None,
) -> OrgUnit:
    allowed = PARENT_KINDS[kind]
    parent_kind = parent.kind if parent else None
    if parent_kind not in allowed:
        raise Invalid(f"a {kind.value} cannot be placed under {parent_kind or 'nothing'}", code="bad_parent")
    unit = OrgUnit(code=code, name=name, kind=kind, parent_id=parent.id if parent else None,
                   enforcement_power=enforcement_power, sector=sector, **({"id": id} if id else {}))
    if parent is not None:
        unit.county_id = parent.id if parent.kind == UnitKind.county else parent.county_id
        unit.town_id = parent.id if parent.kind == UnitKind.town else parent.town_id
        unit.community_id = parent.id if parent.kind == UnitKind.community else parent.community_id
    session.add(unit)
    session.flush()
    return unit


def get_by_code(session: Session, code: str) -> OrgUnit | None:
    return session.exec(select(OrgUnit).where(OrgUnit.code == code)).first()


def require_unit(session: Session, unit_id: str) -> OrgUnit:
    unit = session.get(OrgUnit, unit_id)
    if unit is None:
        raise NotFound(f"org unit {unit_id} not found")
    return unit


def town_units(session: Session, town_id: str) -> dict[str, list[OrgUnit]]:
    """The units of a town and its county, by kind: what routing needs to name a holder."""
    town = require_unit(session, town_id)
    rows = session.exec(
        select(OrgUnit).where(
            (OrgUnit.town_id == town_id) | ((OrgUnit.county_id == town.county_id) & (OrgUnit.town_id.is_(None)))
        )
    ).all()
    out: dict[str, list[OrgUnit]] = {}
    for u in sorted(rows, key=lambda u: u.code):
        out.setdefault(u.kind, []).append(u)
    return out
