"""Jurisdiction scope: the one place that answers "which units, grids and premises may this user see and act on".

Every query for scoped data goes through a Scope. Outside the scope a resource does not exist for
the caller (404); inside it, an action the role may not take is a 403.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, select

from app.auth.models import Role, User
from app.errors import Forbidden, NotFound
from app.org.models import OrgUnit, UnitKind
from app.places.models import Place
from app.referrals.routing import TIER_ORDER

PLACE_EDITORS = frozenset({Role.grid_worker, Role.town_office, Role.admin})
# The bodies that designate and supervise key units and the police-station list (消防安全重点单位 are
# named by the brigade and the police): they may change a premises' class, and nothing else of it.
PLACE_CLASSIFIERS = frozenset({Role.police_station, Role.brigade})
# The tier a role's unit acts as
ROLE_TIER = {Role.town_office: "town_office", Role.police_station: "police_station", Role.brigade: "brigade"}


@dataclass(frozen=True)
class Scope:
    user_id: str
    role: Role
    unit_id: str
    county_id: str | None
    # None means "no limit at this level"; an empty set means "nothing".
    town_ids: frozenset[str] | None
    grid_ids: frozenset[str] | None

    @property
    def everything(self) -> bool:
        return self.town_ids is None and self.grid_ids is None

    # premises -----------------------------------------------------------------------------
    def place_clause(self, place=Place) -> sa.ColumnElement[bool]:
        if self.grid_ids is not None:
            return place.grid_id.in_(self.grid_ids)
        if self.town_ids is not None:
            return place.town_id.in_(self.town_ids)
        return sa.true()

    def sees_place(self, place: Place) -> bool:
        if self.grid_ids is not None:
            return place.grid_id in self.grid_ids
        return self.town_ids is None or place.town_id in self.town_ids

    def require_place_editor(self, changing: Iterable[str] | None = None) -> None:
        """May the caller change premises (``changing``: the fields an edit changes; None: any)?"""
        if self.role in PLACE_EDITORS:
            return
        if self.role in PLACE_CLASSIFIERS:
            if changing is not None and set(changing) <= {"place_class"}:
                return
            raise Forbidden(f"role {self.role.value} may change a premises' class (place_class) but nothing else "
                            "of it")
        raise Forbidden(f"role {self.role.value} may view premises but not change them")

    def may_lower_class_from(self, tier: str) -> bool:
        """May the caller change a premises supervised by ``tier`` to a class a lower tier supervises? The
        body that supervises it (a premises it sees: its own town's, for a police station) or one above,
        and the county admin; never a grid worker or the town office, which would take a key unit out of
        the brigade's or the police's hands."""
        if self.role == Role.admin:
            return True
        own = ROLE_TIER.get(self.role)
        return own is not None and TIER_ORDER.index(own) >= TIER_ORDER.index(tier)

    def sees_grid(self, grid: OrgUnit) -> bool:
        if grid.kind != UnitKind.grid:
            return False
        if self.grid_ids is not None:
            return grid.id in self.grid_ids
        return self.town_ids is None or grid.town_id in self.town_ids

    # units -------------------------------------------------------------------------------
    def unit_clause(self) -> sa.ColumnElement[bool]:
        if self.everything:
            return sa.true()
        # county-level units (brigade, regulators) are everyone's to see; towns only one's own
        own_county = (OrgUnit.county_id == self.county_id) & OrgUnit.town_id.is_(None) & (OrgUnit.kind != UnitKind.town)
        if self.town_ids is not None:
            return own_county | OrgUnit.town_id.in_(self.town_ids) | OrgUnit.id.in_(self.town_ids) | (OrgUnit.id == self.county_id)
        return own_county | (OrgUnit.id == self.county_id)

    def sees_unit(self, unit: OrgUnit) -> bool:
        if self.everything:
            return True
        if unit.id == self.county_id or (
            unit.county_id == self.county_id and unit.town_id is None and unit.kind != UnitKind.town
        ):
            return True
        return self.town_ids is not None and (unit.town_id in self.town_ids or unit.id in self.town_ids)

    # staff ---------------------------------------------------------------------------------
    # Narrower than the units one sees: a town sees the county's units (the brigade, the regulators,
    # the county itself) as bodies to refer to, but their staff and phones are none of its business.
    def staff_clause(self) -> sa.ColumnElement[bool]:
        """Units whose users and devices the caller answers for."""
        if self.everything:
            return sa.true()
        own = OrgUnit.id == self.unit_id
        if self.grid_ids is not None:
            return own | OrgUnit.id.in_(self.grid_ids)
        if self.town_ids is None:
            return own
        return own | OrgUnit.town_id.in_(self.town_ids) | OrgUnit.id.in_(self.town_ids)

    def answers_for_staff_of(self, unit: OrgUnit) -> bool:
        if self.everything or unit.id == self.unit_id:
            return True
        if self.grid_ids is not None:
            return unit.id in self.grid_ids
        return self.town_ids is not None and (unit.town_id in self.town_ids or unit.id in self.town_ids)


def scope_for(session: Session, user: User, unit: OrgUnit | None = None) -> Scope:
    """The user's scope. ``unit``: the user's unit if the caller has it already (authentication loads it)."""
    if unit is None or unit.id != user.org_unit_id:
        unit = session.get(OrgUnit, user.org_unit_id)
    if unit is None:  # foreign key makes this impossible short of manual tampering
        raise Forbidden("user has no unit")
    base = dict(user_id=user.id, role=Role(user.role), unit_id=unit.id)
    if user.role == Role.admin:
        return Scope(**base, county_id=None, town_ids=None, grid_ids=None)
    if user.role == Role.brigade:
        towns = session.exec(
            select(OrgUnit.id).where(OrgUnit.county_id == unit.county_id, OrgUnit.kind == UnitKind.town)
        ).all()
        return Scope(**base, county_id=unit.county_id, town_ids=frozenset(towns), grid_ids=None)
    if user.role in (Role.town_office, Role.police_station):
        return Scope(**base, county_id=unit.county_id, town_ids=frozenset({unit.town_id}), grid_ids=None)
    # grid worker: their grid, or every grid of their community
    if unit.kind == UnitKind.grid:
        grids = frozenset({unit.id})
    else:
        grids = frozenset(
            session.exec(select(OrgUnit.id).where(OrgUnit.parent_id == unit.id, OrgUnit.kind == UnitKind.grid)).all()
        )
    return Scope(**base, county_id=unit.county_id, town_ids=frozenset({unit.town_id}), grid_ids=grids)


def visible_place(session: Session, scope: Scope, place_id: str) -> Place:
    place = session.get(Place, place_id)
    if place is None or not scope.sees_place(place):
        raise NotFound(f"place {place_id} not found")
    return place


def hazard_clause(scope: Scope) -> sa.ColumnElement[bool]:
    """Hazards the scope may see: by where they were found, plus (for a police station or anyone
    outside the town) what was referred or copied to the caller's unit."""
    from app.hazards.models import Hazard, HazardCC

    if scope.grid_ids is not None:
        return Hazard.grid_id.in_(scope.grid_ids)
    if scope.town_ids is None:
        return sa.true()
    referred = (Hazard.holder_unit_id == scope.unit_id) | Hazard.id.in_(
        select(HazardCC.hazard_id).where(HazardCC.unit_id == scope.unit_id)
    )
    return Hazard.town_id.in_(scope.town_ids) | referred


def sees_hazard(session: Session, scope: Scope, hazard) -> bool:
    from app.hazards.models import HazardCC

    if scope.grid_ids is not None:
        return hazard.grid_id in scope.grid_ids
    if scope.town_ids is None or hazard.town_id in scope.town_ids or hazard.holder_unit_id == scope.unit_id:
        return True
    return session.get(HazardCC, (hazard.id, scope.unit_id)) is not None
