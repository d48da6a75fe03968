"""Premises, from a review of the fixes of 2026-12-01: a CSV import reports a row it cannot take and
imports the rest, and a phone re-sending its premises unmoved is neither refused for what it did not
send nor charged for a move it did not make."""

from sqlmodel import select

from app.places.models import Place
from app.places.service import import_places_csv
from app.org.service import create_unit
from app.org.models import UnitKind
from tests.conftest import login
from tests.hazards.test_desk_review import other_county  # noqa: F401  (fixture)
from tests.helpers import op, place_of, push, statements_on



def _import(session, tmp_path, text):
    path = tmp_path / "places.csv"
    path.write_text(text, encoding="utf-8")
    return import_places_csv(session, path)


# -- premises ------------------------------------------------------------------------------------


def test_a_csv_row_naming_another_countys_regulator_is_reported_and_the_rest_imported(
        session, tmp_path, units, other_county):  # noqa: F811
    """The import promises good rows in, bad rows reported: the regulator's county check must not
    escape create_place as an exception that aborts the whole file."""
    text = ("name,address,grid,place_class,sector_regulator\n"
            "外县托管班,青峰镇中心路8号,grid-a-1-1,nine_small,regulator-x\n"
            "本县托管班,青峰镇中心路9号,grid-a-1-1,nine_small,regulator-education\n")
    result = _import(session, tmp_path, text)
    assert {(e.row, e.column) for e in result.errors} == {(2, "sector_regulator")}, result.errors
    assert result.created == 1
    names = set(session.exec(select(Place.name).where(Place.name.in_(["外县托管班", "本县托管班"]))).all())
    assert names == {"本县托管班"}


def test_a_csv_import_moves_a_premises_to_another_county_with_its_new_regulator(
        session, tmp_path, units, other_county):  # noqa: F811
    community = create_unit(session, code="comm-x", name="邻村", kind=UnitKind.community, parent=other_county["town"])
    grid = create_unit(session, code="grid-x-1", name="邻网格", kind=UnitKind.grid, parent=community)
    session.commit()
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    place.sector_regulator_id = units["regulator-education"].id
    session.add(place)
    session.commit()
    text = (f"id,name,address,grid,place_class,sector_regulator\n"
            f"{place.id},{place.name},{place.address or ''},{grid.code},nine_small,regulator-x\n")
    result = _import(session, tmp_path, text)
    assert result.errors == [] and result.updated == 1
    session.refresh(place)
    assert place.grid_id == grid.id and place.sector_regulator_id == other_county["regulator"].id


def test_a_phone_re_sending_its_premises_unmoved_is_not_refused_for_a_regulator_it_did_not_send(
        client, session, units, other_county):  # noqa: F811
    """A premises put under another county's regulator before that was checked: the phone's upsert
    (which always names the grid, the same one) changes neither, so it is not the phone's to fix."""
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    place.sector_regulator_id = other_county["regulator"].id
    session.add(place)
    session.commit()
    worker = login(client, "worker-a1")
    [res] = push(client, worker, op("place.upsert", {"id": place.id, "name": "改名的书店", "address": "新地址1号",
                                                     "grid_id": place.grid_id, "place_class": place.place_class}))
    assert res["status"] == "applied", res


def test_a_premises_re_sent_unmoved_does_not_read_its_inspections(client, db, session, units):
    """A phone sends its premises again with every edit (place.upsert, grid included): only a move
    takes the inspections along, so an unmoved premises costs the push no statement for them."""
    worker = login(client, "worker-a1")
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    data = {"id": place.id, "name": place.name, "address": place.address, "grid_id": place.grid_id,
            "place_class": place.place_class}
    with statements_on(db.connection) as statements:
        [res] = push(client, worker, op("place.upsert", {**data, "owner_phone": "13900000077"}))
    assert res["status"] == "applied", res
    assert not [s for s in statements if "FROM inspections" in s], statements
