"""Which unit of each tier a place's town routes to (tier_units / town_facts), read in one statement."""

from sqlmodel import select

from app.org.models import OrgUnit, UnitKind
from app.places.models import Place
from app.referrals.service import tier_units, town_facts


def add_unit(session, code: str, kind: UnitKind, parent: OrgUnit, **kw) -> OrgUnit:
    unit = OrgUnit(code=code, name=code, kind=kind, parent_id=parent.id, county_id=parent.county_id or parent.id,
                   town_id=parent.town_id or (parent.id if parent.kind == UnitKind.town else None), **kw)
    session.add(unit)
    session.flush()
    return unit


def test_each_tier_is_the_towns_own_first_by_code_and_the_brigade_is_the_countys(session, units):
    town_a = units["town-a"]
    second = add_unit(session, "police-0a", UnitKind.police_station, town_a)  # sorts before police-a
    other_county = add_unit(session, "county-2", UnitKind.county, units["county"])
    other_county.county_id, other_county.parent_id = None, None
    session.flush()
    add_unit(session, "a-brigade-elsewhere", UnitKind.brigade, other_county)  # sorts first, wrong county

    assert tier_units(session, town_a.id, units["community-a-1"].id) == {
        "town_office": units["office-a"].id, "police_station": second.id, "brigade": units["brigade"].id}
    assert tier_units(session, units["town-b"].id, None) == {
        "town_office": units["office-b"].id, "police_station": units["police-b"].id, "brigade": units["brigade"].id}


def test_a_community_goes_to_the_station_whose_beat_covers_it(session, units):
    town_a = units["town-a"]
    add_unit(session, "police-0a", UnitKind.police_station, town_a)
    community = units["community-a-2"]
    community.police_station_id = units["police-a"].id
    session.flush()
    assert tier_units(session, town_a.id, community.id)["police_station"] == units["police-a"].id
    assert tier_units(session, town_a.id, units["community-a-1"].id)["police_station"] != units["police-a"].id


def test_town_facts_carry_the_towns_enforcement_power(session, units):
    place_a = session.exec(select(Place).where(Place.town_id == units["town-a"].id)).first()
    place_b = session.exec(select(Place).where(Place.town_id == units["town-b"].id)).first()
    assert units["town-b"].enforcement_power and not units["town-a"].enforcement_power
    assert town_facts(session, place_b).enforcement_power is True
    assert town_facts(session, place_a).enforcement_power is False
    assert town_facts(session, place_a).units == tier_units(session, place_a.town_id, place_a.community_id)
